"""Serving what was learned: ``POST /v1/score`` from the LIVE model.

:mod:`.score` is the one scoring path (the trainer's resident baseline, or a follower's loaded
version); :mod:`.follower` is ``feedstep serve``, which serves the model store's LIVE version.
"""

from streaming.serve.follower import Follower, FollowSettings
from streaming.serve.score import LiveModel, ScoreLimits, Scorer, attach_scorer, score_limits

__all__ = [
    "FollowSettings",
    "Follower",
    "LiveModel",
    "ScoreLimits",
    "Scorer",
    "attach_scorer",
    "score_limits",
]
