"""The metric of a latent task: in image space through the folder's VAE when it has one, else fld in latent space.

A folder built with a diffusers AutoencoderKL is scored like an image task: samples are decoded
to images and compared with the held-out latents decoded the same way (VAE reconstructions of
the held-out images, not the images themselves: the number measures the generator, not the VAE).
The family is `fd` when the decoded images are ones the fd classifier knows ((1, 28, 28) or
(1, 8, 8)), else `fid`. Without a decoder (identity / tiny folders; diffusers or the weights
missing here) it stays `fld`, and the description says why.
"""

from __future__ import annotations

from pyarrow import ArrowException

from trainables.data.catalog import DatasetUnavailable
from trainables.data.latents import read_metadata
from trainables.data.vae import VAEUnavailable, missing_reason
from trainables.metrics.frechet import FD_TASKS, FrechetScorer, latent_frechet_scorer


def image_family(image_shape: tuple) -> str:
    """'fd' for the digit shapes the fd classifier was trained on, 'fid' for any other image."""
    return "fd" if tuple(image_shape) in FD_TASKS else "fid"


def latent_metric_family(folder) -> str:
    """fd / fid when the folder's VAE can be loaded here, fld otherwise; reads only the folder's metadata.

    A folder that cannot be read is fld too: the preflight refuses it, saying why. The evaluator
    reaches the same verdict by loading the VAE; the two differ only for weights present but
    unreadable, and then the evaluator's family (fld) is the one its numbers carry.
    """
    try:
        record = read_metadata(folder).get("vae")
    except (DatasetUnavailable, OSError, ValueError, KeyError, TypeError, ArrowException):
        return "fld"
    if record is None or missing_reason(record["source"]):
        return "fld"
    return image_family(record["image_shape"])


def latent_task_scorer(task, reference, device="cpu") -> tuple:
    """(score(latents) -> float, description, family) for a LatentTask and its normalised held-out latents.

    A folder whose VAE weights changed since it was built raises VAEChanged (the task is refused).
    """
    held_out = f"{task.name} held-out tail"
    try:
        decoder = task.decoder(device)
    except VAEUnavailable as err:
        score, description = latent_frechet_scorer(reference, held_out)
        return score, f"{description}; latent space, not decoded: {err}", "fld"
    if decoder is None:
        score, description = latent_frechet_scorer(reference, held_out)
        return score, description, "fld"
    family = image_family(decoder.image_shape)
    scorer = FrechetScorer(family, decoder.decode(reference),
                           reference_name=f"VAE reconstructions of the {held_out}: the held-out latents decoded")

    def score(latents):
        """The Frechet distance of the decoded latents to the decoded reference."""
        return scorer.score(decoder.decode(latents))

    return score, f"{scorer.description}; {decoder.provenance}", family
