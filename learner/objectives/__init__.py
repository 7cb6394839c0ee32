"""Objectives: one interface (:class:`learner.base.Objective`), one implementation per file."""

from learner.objectives.reward import RewardObjective

__all__ = ["RewardObjective"]
