"""Frechet distances for image samples: `fd` (offline digit-classifier features) and `fid` (Inception).

`fd` is NOT FID: its features come from a small CNN trained here on the bundled digits, so its
numbers are comparable only with other `fd` numbers from the same classifier (the description,
logged with every score, names it). `fid` uses torch-fidelity's Inception through torchmetrics and
needs its weights file, which cannot be downloaded offline.
"""

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainables.locations import cache_dir
from trainables.rcgm.errors import ConfigError

CLASSIFIER_VERSION = 2  # bump when the classifier or its training recipe changes: old caches are ignored
FD_TASKS = {(1, 28, 28): "mnist", (1, 8, 8): "digits"}  # image shape -> bundled task the classifier learns
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"  # torch-fidelity's file name for the weights


class FIDUnavailable(RuntimeError):
    """FID cannot be computed here (weights or torch-fidelity missing); the message says how to fix it."""


def feature_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of (N, D) features, in float64."""
    f = features.detach().cpu().double().numpy()
    if len(f) < 2:
        raise ConfigError("samples", len(f), "at least 2 images to estimate a covariance")
    return f.mean(0), np.cov(f, rowvar=False)


def sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix (eigenvalues clipped at 0)."""
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), in float64.

    tr((S1 S2)^1/2) equals tr((A S2 A)^1/2) with A = S1^1/2; the latter is symmetric PSD, so a
    symmetric eigendecomposition gives it without the complex round-off scipy's sqrtm can leave.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    a = sqrt_psd(s1)
    vals = np.linalg.eigvalsh((a @ s2 @ a + (a @ s2 @ a).T) / 2)
    tr_cross = np.sqrt(np.clip(vals, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_cross)


class DigitClassifier(nn.Module):
    """Small CNN digit classifier; `features` is its 64-d penultimate layer."""

    def __init__(self, feature_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            # Fixed 7x7 grid: the same network serves 28x28 mnist (7x7 already) and 8x8 digits (2x2).
            nn.AdaptiveAvgPool2d(7), nn.Flatten(),
            nn.Linear(64 * 49, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(task_name: str, seed: int = 0, epochs: int = 4, batch: int = 64) -> tuple[DigitClassifier, dict]:
    """Train the classifier on the task's training pool; report accuracy on its held-out split."""
    from trainables.data.images import load_image_task, to_unit_range

    task = load_image_task(task_name)
    x, y = to_unit_range(task.train_x), task.train_y
    # fork_rng: seed the weight init without disturbing the caller's global RNG stream.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitClassifier()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    # One-cycle schedule: a few epochs reach ~96% on 4500 digits (constant lr stalls near 93%).
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * -(-len(x) // batch))
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(b).argmax(1) for b in to_unit_range(task.ref_x).split(500)])
    info = {
        "task": task_name, "seed": seed, "epochs": epochs, "version": CLASSIFIER_VERSION,
        "train_size": len(x), "test_size": len(task.ref_x),
        "accuracy": float((pred == task.ref_y).float().mean()),
    }
    return model, info


def load_classifier(task_name: str, seed: int = 0, epochs: int = 4, root: Path | None = None) -> tuple[DigitClassifier, dict]:
    """Return the cached classifier for task_name, training and caching it on first use."""
    path = (root or cache_dir()) / "fd_classifier" / f"{task_name}-v{CLASSIFIER_VERSION}-seed{seed}-ep{epochs}.pt"
    if path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = DigitClassifier()
        model.load_state_dict(blob["state_dict"])
        info = dict(blob["info"], path=str(path), trained_now=False)
        return model.eval(), info
    model, info = train_classifier(task_name, seed, epochs)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: concurrent trials never read a half-written file.
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"state_dict": model.state_dict(), "info": info}, tmp)
    os.replace(tmp, path)
    return model, dict(info, path=str(path), trained_now=True)


def images_to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] (N, C, H, W) -> uint8 (N, 3, H, W), grey repeated to RGB, for Inception."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def resolve_fid_weights(weights: str | None) -> Path:
    """Find the Inception weights before any compute, or raise FIDUnavailable saying how to get them."""
    tried = []
    for origin, value in (("weights argument", weights), ("$RCGM_FID_WEIGHTS", os.environ.get("RCGM_FID_WEIGHTS"))):
        if not value:
            tried.append(f"{origin}: not set")
            continue
        if Path(value).is_file():
            path = Path(value)
            break
        tried.append(f"{origin}: {value} is not a file")
    else:
        raise FIDUnavailable(
            "fid needs torch-fidelity's Inception weights and cannot download them offline. Tried: "
            + "; ".join(tried)
            + f". Fix: where you are online, download {FID_WEIGHTS_NAME} (torch-fidelity's release on "
            "github.com/toshas/torch-fidelity), copy it here and set RCGM_FID_WEIGHTS=/path/to/it "
            "(and `pip install torch-fidelity`); or use metric 'fd' for digit tasks."
        )
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise FIDUnavailable(
            f"fid weights found at {path}, but torch-fidelity is not installed: `pip install torch-fidelity` "
            "(torchmetrics builds its Inception from it)."
        ) from None
    return path


class FrechetScorer:
    """Score generated images against fixed reference images; .description says exactly how."""

    def __init__(
        self,
        metric: str,
        reference_images: torch.Tensor,
        reference_name: str = "held-out split",
        weights: str | None = None,
        extractor: nn.Module | None = None,
        classifier_seed: int = 0,
        batch_size: int = 250,
    ):
        self.metric = metric
        self.batch_size = batch_size
        self.reference_name = reference_name
        self.reference_size = len(reference_images)
        self.last_sample_size = None
        shape = tuple(reference_images.shape[1:])
        if metric == "fd":
            self._init_fd(shape, classifier_seed)
        elif metric == "fid":
            self._init_fid(weights, extractor)
        else:
            raise ConfigError("metric", metric, "'fd' (offline digit-classifier features) or 'fid' (Inception)")
        self.reference_stats = feature_stats(self.features(reference_images))

    def _init_fd(self, shape: tuple, seed: int) -> None:
        """Pick the classifier for this image shape; refuse images it was never trained on."""
        if shape not in FD_TASKS:
            raise ConfigError(
                "metric", "fd",
                f"'fid' for images of shape {shape}: the fd classifier only knows 1-channel digits "
                f"({', '.join(f'{t} {s}' for s, t in FD_TASKS.items())})",
            )
        self.model, self.classifier = load_classifier(FD_TASKS[shape], seed)
        info = self.classifier
        self.extractor_text = (
            f"64-d penultimate features of a CNN digit classifier (v{info['version']}, seed {info['seed']}, "
            f"{info['epochs']} epochs on {info['train_size']} {info['task']} training images, held-out accuracy "
            f"{info['accuracy']:.4f} on {info['test_size']}; cached at {info['path']}); not Inception, not FID"
        )

    def _init_fid(self, weights: str | None, extractor: nn.Module | None) -> None:
        """Build torchmetrics' FID on torch-fidelity's Inception (or a given stand-in extractor)."""
        # Check the weights before importing torchmetrics' FID: a refusal should cost nothing.
        path = resolve_fid_weights(weights) if extractor is None else None
        from torchmetrics.image.fid import FrechetInceptionDistance

        if extractor is None:
            metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path))
            self.extractor_text = f"2048-d pool3 features of torch-fidelity's Inception-v3 ({path}), via torchmetrics"
        else:
            metric = FrechetInceptionDistance(feature=extractor)
            self.extractor_text = f"custom extractor {type(extractor).__name__} (NOT Inception: not comparable to published FID)"
        self.model = metric.inception.eval()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features of [-1, 1] images, computed in batches on the CPU."""
        out = []
        for chunk in images.split(self.batch_size):
            if self.metric == "fd":
                out.append(self.model.features(chunk.detach().float().cpu().clamp(-1, 1)))
            else:
                out.append(self.model(images_to_uint8_rgb(chunk.cpu())).reshape(len(chunk), -1))
        return torch.cat(out)

    def score(self, images: torch.Tensor) -> float:
        """Frechet distance between the images' features and the reference features."""
        self.last_sample_size = len(images)
        return frechet_distance(*feature_stats(self.features(images)), *self.reference_stats)

    @property
    def description(self) -> str:
        """What the number means: implementation, extractor, sample counts, reference set."""
        if self.last_sample_size is None:
            samples = "as many samples as passed to score()"
        else:
            samples = f"{self.last_sample_size} samples"
        return (
            f"{self.metric}: Frechet distance (float64, eigh-based matrix square root, trainables.metrics.frechet) "
            f"between {self.extractor_text}; {samples} vs {self.reference_size} reference images "
            f"({self.reference_name})"
        )


FLD_MAX_DIM = 1024  # Gaussian-fit dimension cap: eigh cost and covariance noise both grow with it


def latent_pool_factor(shape: tuple, max_dim: int = FLD_MAX_DIM) -> int:
    """Smallest spatial average-pool factor k that brings C * ceil(H/k) * ceil(W/k) to max_dim or below."""
    c, h, w = shape
    k = 1
    while c * -(-h // k) * -(-w // k) > max_dim and k < max(h, w):
        k += 1
    return k


def latent_frechet_scorer(reference: torch.Tensor, reference_name: str = "held-out latents",
                          max_dim: int = FLD_MAX_DIM) -> tuple:
    """(score(samples) -> fld, description): Frechet distance of Gaussian fits to (pooled) flattened latents.

    No feature network is involved, so fld is NOT FID: it is comparable only with fld values on
    the same latent folder, pooling and sample count.
    """
    shape = tuple(reference.shape[1:])
    k = latent_pool_factor(shape, max_dim)

    def features(x: torch.Tensor) -> torch.Tensor:
        """(N, D) vectors: the latents flattened, after k x k average pooling when k > 1."""
        x = x.detach().float().cpu()
        if k > 1:
            x = nn.functional.avg_pool2d(x, k, ceil_mode=True)
        return x.reshape(len(x), -1)

    ref_stats = feature_stats(features(reference))
    dim = features(reference[:1]).shape[1]
    pooled = f"{k}x{k} average-pooled and flattened ({dim}-d)" if k > 1 else f"flattened ({dim}-d)"
    description = (
        f"fld: Frechet latent distance, NOT FID (no image features): ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) "
        f"between Gaussian fits (float64, eigh-based matrix square root, trainables.metrics.frechet) to the "
        f"normalised latents of shape {shape}, {pooled}; samples vs {len(reference)} reference latents "
        f"({reference_name}); biased upwards when samples are few next to {dim} dimensions, so compare only "
        "at the same latent folder, pooling and eval_samples")
    return (lambda samples: frechet_distance(*feature_stats(features(samples)), *ref_stats)), description
