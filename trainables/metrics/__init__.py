"""Sample-quality metrics: MMD^2 for point clouds, Frechet distances (fd, fid, fld) for images and latents."""

from trainables.metrics.mmd import MMD_DESCRIPTION, mmd2

__all__ = ["MMD_DESCRIPTION", "mmd2"]
