"""Pictures of samples: scatter plots for point clouds, image grids for images."""

from __future__ import annotations

import math

import torch


def _figure(ncols: int, size: float):
    """A headless matplotlib figure with ncols square panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(size * ncols, size), squeeze=False)
    return plt, fig, axes[0]


def _image_grid(images: torch.Tensor, max_images: int = 64) -> torch.Tensor:
    """Tile (B, C, H, W) images in [-1, 1] into one (H', W', C) array in [0, 1]."""
    images = images[:max_images].clamp(-1, 1).add(1).div(2)
    b, c, h, w = images.shape
    cols = int(math.ceil(math.sqrt(b)))
    rows = int(math.ceil(b / cols))
    grid = torch.ones(c, rows * (h + 1) + 1, cols * (w + 1) + 1)
    for i in range(b):
        r, q = divmod(i, cols)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = images[i]
    return grid.permute(1, 2, 0)


def render_samples(samples: dict[int, torch.Tensor], reference: torch.Tensor, path, title: str, metrics: dict) -> None:
    """Write one PNG: the reference data, then the samples at each NFE with their metric."""
    plt, fig, axes = _figure(len(samples) + 1, 3.2)
    panels = [("data", reference, None)] + [(f"{k} NFE", x, k) for k, x in sorted(samples.items())]
    for ax, (label, x, k) in zip(axes, panels):
        score = next((v for name, v in metrics.items() if k is not None and name.endswith(f"_{k}nfe")), None)
        ax.set_title(label if score is None else f"{label}: {score:.4g}", fontsize=9)
        if x.dim() == 2:
            x = x[:, :2].float()
            ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.5, color="tab:blue" if k is None else "tab:red")
            ax.set_xlim(-3, 3)
            ax.set_ylim(-3, 3)
            ax.set_aspect("equal")
        else:
            grid = _image_grid(x.float())
            ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
