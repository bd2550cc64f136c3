"""The objective registry: one name per objective, built with one set of keyword arguments."""

from trainables.rcgm import ranges
from trainables.rcgm.meanflow import MeanFlowObjective
from trainables.rcgm.objective import RCGMObjective

OBJECTIVES = ranges.OBJECTIVE.choices
# Settings only the recursive objective reads: one config names every objective, so they are dropped for the others.
RCGM_ONLY = ("order", "delta_t", "clip", "placement")


def build_objective(name: str, **kw):
    """Build the named objective; RCGM-only keys are accepted and ignored for meanflow."""
    ranges.OBJECTIVE.check("objective", name)
    if name == "rcgm":
        return RCGMObjective(**kw)
    return MeanFlowObjective(**{k: v for k, v in kw.items() if k not in RCGM_ONLY})
