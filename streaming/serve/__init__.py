"""Serving what was learned: ``POST /v1/score`` from the LIVE model (see :mod:`.score`)."""

from streaming.serve.score import ScoreLimits, Scorer, attach_scorer

__all__ = ["ScoreLimits", "Scorer", "attach_scorer"]
