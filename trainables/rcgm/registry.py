"""The objective registry: one name per objective, built with one set of keyword arguments."""

from trainables.rcgm import ranges
from trainables.rcgm.consistency import ConsistencyObjective
from trainables.rcgm.meanflow import MeanFlowObjective
from trainables.rcgm.objective import RCGMObjective
from trainables.rcgm.shortcut import ShortcutObjective

OBJECTIVES = ranges.OBJECTIVE.choices
CLASSES = {"rcgm": RCGMObjective, "meanflow": MeanFlowObjective, "shortcut": ShortcutObjective,
           "consistency": ConsistencyObjective}

GUIDANCE_KEYS = ("guidance", "num_classes", "label_dropout")
# One trial config names any objective, so every objective is offered the same keys and reads its own.
# The peers are first order and take no order (trainables.config refuses anything but 1 for them).
READS = {
    "rcgm": ("order", "delta_t", "clip", "placement", *GUIDANCE_KEYS),
    "meanflow": GUIDANCE_KEYS,
    "shortcut": GUIDANCE_KEYS,
    "consistency": ("delta_t", *GUIDANCE_KEYS),
}
KEYS = frozenset(k for keys in READS.values() for k in keys)


def build_objective(name: str, **kw):
    """Build the named objective from the keys it reads; keys only other objectives read are ignored."""
    ranges.OBJECTIVE.check("objective", name)
    unknown = sorted(set(kw) - KEYS)
    if unknown:
        raise TypeError(f"build_objective() got unknown settings {unknown}; known: {sorted(KEYS)}")
    return CLASSES[name](**{k: v for k, v in kw.items() if k in READS[name]})
