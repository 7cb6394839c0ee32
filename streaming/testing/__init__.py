"""Fakes shipped in the package for fast tests (like bytewax's ``testing.py``).

In-memory source and sink, a null learner, the fuzz corpus and the simulated feedback stream.
"""

from streaming.testing.learner import NullCheckpoints, NullLearner, NullObjective
from streaming.testing.memory import MemorySink, MemorySource, SentMessage

__all__ = [
    "MemorySink",
    "MemorySource",
    "NullCheckpoints",
    "NullLearner",
    "NullObjective",
    "SentMessage",
]
