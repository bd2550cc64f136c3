"""What every method setting accepts, in one torch-free place.

The method objects check their arguments with these (RCGMObjective, TargetModel, GuidedLabels,
sample, the time schedules' flow fraction), and trainables.config declares its fields with the
same objects, so a value accepted before Ray starts is accepted inside a worker too.
"""

from trainables.rcgm.checks import Choice, IntRange, RealRange

INF = float("inf")

OBJECTIVE = Choice(("rcgm", "meanflow", "shortcut", "consistency"))
ORDER = IntRange(0)
KAPPA = RealRange(0.0, 1.0)
DELTA_T = RealRange(0.0, 1.0, low_open=True, high_open=True)
# clip = inf switches clipping off (docs/method.md; the JVP-equivalence test needs the raw residual).
CLIP = RealRange(0.0, INF, low_open=True, allow_inf=True)
PLACEMENT = Choice(("equal", "random"))
FLOW_FRACTION = RealRange(0.0, 1.0)
# w beyond 1e3 only amplifies the network's noise: refused rather than trained.
GUIDANCE = RealRange(0.0, 1e3)
LABEL_DROPOUT = RealRange(0.0, 1.0, high_open=True)
NFE = IntRange(1)
SAMPLE_STYLE = Choice(("few", "any", "mul"))
