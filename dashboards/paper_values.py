"""The RCGM paper's reported EMA-paradox numbers, as data (no plotting here)."""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = ("RCGM, Sun & Lin, ICLR 2026, as reported by third-party paper notes (the paper PDF "
          "was not available to us); see docs/research/rcgm-method.md sections 3.1 and 4")
MMD_CAVEAT = ("The paper does not state its MMD definition (kernel, bandwidths, sample count, "
              "biased or unbiased, MMD or MMD^2): compare the ordering, not the magnitudes.")


@dataclass(frozen=True)
class PaperValue:
    """One reported cell: a number, a qualitative verdict, or both."""

    order: int
    kappa: float | None  # None: the paper's low kappa, whose value the notes do not give
    value: float | None
    text: str


# 2-D Moons, first order degrading as kappa -> 0.999 while second order stays stable.
MOONS_MMD = (
    PaperValue(1, None, 0.0066, "0.0066"),
    PaperValue(1, 0.999, 0.2131, "0.2131"),
    PaperValue(2, 0.999, 0.0035, "\u22480.0035 (stable)"),
)

# ImageNet 256x256, 675M DiT, 1-NFE FID; qualitative cells carry no number in the notes.
IMAGENET_KAPPAS = (0.0, 0.9, 0.99, 0.999)
IMAGENET_FID_1NFE = (
    PaperValue(1, 0.0, None, "diverges"),
    PaperValue(1, 0.9, 31.70, "31.70"),
    PaperValue(1, 0.99, None, "stable but poor"),
    PaperValue(1, 0.999, 294.18, "294.18 (collapse)"),
    PaperValue(2, 0.0, None, "unstable"),
    PaperValue(2, 0.9, 14.94, "14.94"),
    PaperValue(2, 0.99, 29.13, "29.13"),
    PaperValue(2, 0.999, None, "stable & superior"),
)
IMAGENET_NOTE = ("At kappa=0.999 the FID improves from N=1 to N=4 and regresses beyond N=4; "
                 "the paper's defaults are N=2, kappa=0.999. The 14.94 < 29.13 ordering of N=2 "
                 "is low confidence (perhaps early-training numbers).")

# The ordering the paper reports, which ordering.check_ordering tests our sweep against.
CLAIMS = ("N=1 worsens as kappa -> 0.999", "at kappa=0.999, N=2 beats N=1")
HIGH_KAPPA = 0.999


def imagenet_cell(order: int, kappa: float) -> PaperValue | None:
    """The ImageNet table's entry at (order, kappa), if reported."""
    return next((v for v in IMAGENET_FID_1NFE if v.order == order and v.kappa == kappa), None)
