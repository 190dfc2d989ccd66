"""Evaluation: the SA-Co cgF1 family (cgF1, pmF1, IL_MCC) and COCO AP, equal to the reference implementations."""

from .api import Evaluation, evaluate, write_evaluation

__all__ = ["Evaluation", "evaluate", "write_evaluation"]
