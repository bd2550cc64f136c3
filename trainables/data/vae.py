"""The VAE a latent folder was encoded with: its record, the weights check, and decoding latents back to images.

A folder built with a diffusers AutoencoderKL records it in `_common_metadata` under `vae`:
`source` (the hub id, or the local folder as an absolute path), `scaling_factor` (the VAE
config's), `weights_sha256` (weights_sha256 below), `image_shape` (the encoded images' C, H, W)
and `latents` (what was stored: the posterior mean, unscaled). Identity and tiny folders record
`vae: null`, folders built before the record existed have no key; neither has a decoder.

Decoding undoes what the task did on the way in: LatentTask hands out latents normalised per
channel with the folder's mean / std, so they are un-normalised first. The stored latents are
unscaled posterior means, so there is no scaling_factor to undo (the per-channel normalisation
already plays its part); they go to vae.decode as they are.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch

from trainables.data.catalog import DatasetUnavailable
from trainables.rcgm.errors import ConfigError

STORED_LATENTS = "posterior mean, unscaled"
DECODE_BATCH = 64  # latents per vae.decode call: bounds the decoder's activation memory


class VAEUnavailable(RuntimeError):
    """The folder's VAE cannot be loaded here (no diffusers, no weights); the message says what is missing."""


class VAEChanged(DatasetUnavailable):
    """The VAE's weights are not the ones that encoded the folder: its latents would decode to the wrong images."""


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over the state_dict: for each key in sorted order, its name, dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        # NUL separators: a name can never run into the dtype or shape that follows it.
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        # Viewed as bytes, so bfloat16 (which numpy lacks) hashes like any other dtype.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def resolve_source(name_or_path: str) -> str:
    """A local folder as an absolute path (Ray workers run elsewhere), else the hub id unchanged."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


def missing_reason(source: str | None = None) -> str | None:
    """Why the AutoencoderKL at source cannot be loaded offline here (checked without loading it); None when it can.

    With source None only diffusers itself is checked (a build may still download a hub id).
    """
    if importlib.util.find_spec("diffusers") is None:
        return "the diffusers package is not installed (`pip install diffusers`)"
    if source is None:
        return None
    if Path(source).is_absolute():
        if not (Path(source) / "config.json").is_file():
            return f"the VAE folder {source} (or its config.json) is missing"
        return None
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(source, "config.json"), str):
        return f"the VAE {source} is not in the Hugging Face cache (download it where you are online)"
    return None


def load_autoencoder(source: str, local_files_only: bool = True):
    """diffusers AutoencoderKL from a hub id or folder, in eval mode without grads; VAEUnavailable if it cannot be.

    local_files_only (the default) never touches the network, so an offline machine fails at once.
    """
    reason = missing_reason(source if local_files_only else None)
    if reason:
        raise VAEUnavailable(reason)
    from diffusers import AutoencoderKL

    try:
        # Without accelerate diffusers would warn and load fully anyway: ask for that up front, quietly.
        vae = AutoencoderKL.from_pretrained(source, local_files_only=local_files_only,
                                            low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)
    except Exception as err:  # diffusers raises several unrelated types for a missing or broken model
        raise VAEUnavailable(f"could not load AutoencoderKL {source!r} ({type(err).__name__}: {err})") from None
    return vae.eval().requires_grad_(False)


def vae_record(vae, source: str, sha256: str, image_shape: tuple) -> dict:
    """The folder's `vae` metadata: where the VAE lives, its scaling factor, weights hash and the images' shape."""
    return {"source": source, "scaling_factor": float(vae.config.scaling_factor), "weights_sha256": sha256,
            "image_shape": [int(s) for s in image_shape], "latents": STORED_LATENTS}


class LatentDecoder:
    """Normalised latents of one folder -> images in [-1, 1] shaped like the images that were encoded."""

    def __init__(self, vae, shards):
        self.vae, self.shards = vae, shards
        self.source, self.sha256 = shards.vae["source"], shards.vae["weights_sha256"]
        self.image_shape = tuple(shards.vae["image_shape"])
        self.device = torch.device("cpu")

    @property
    def provenance(self) -> str:
        """What a score on these images means: the phrase every decoded metric's description carries."""
        return f"image space, decoded through VAE {self.source} sha256 {self.sha256[:12]}"

    def to(self, device) -> LatentDecoder:
        """Run the VAE on device (the evaluator's); images still come back on the CPU."""
        self.device = torch.device(device)
        self.vae.to(self.device)
        return self

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) normalised latents -> (N, *image_shape) float32 images in [-1, 1], on the CPU."""
        out = []
        for chunk in latents.split(DECODE_BATCH):
            # Stored latents are unscaled posterior means: un-normalising is all there is to undo.
            raw = self.shards.denormalize(chunk.detach().float().to(self.device))
            images = self.vae.decode(raw).sample.float().clamp(-1, 1)
            if images.shape[1] == 3 and self.image_shape[0] == 1:
                images = images.mean(1, keepdim=True)  # the builder fed grey images as RGB: back to grey
            out.append(images.cpu())
        return torch.cat(out) if out else torch.empty((0, *self.image_shape))


def load_decoder(shards) -> LatentDecoder:
    """The decoder of a LatentShards folder that records a VAE, its weights checked against the record.

    VAEUnavailable when diffusers or the weights are missing here (callers fall back to latent
    space); VAEChanged, a refusal, when the weights differ from the ones that encoded the folder.
    """
    record = shards.vae
    if record is None:
        raise ConfigError("task", str(shards.path), "a latent folder built with a diffusers AutoencoderKL encoder")
    vae = load_autoencoder(record["source"])
    found = weights_sha256(vae)
    if found != record["weights_sha256"]:
        raise VAEChanged(
            f"{shards.path}: the VAE at {record['source']} has weights sha256 {found[:12]}, not the "
            f"{record['weights_sha256'][:12]} that encoded these latents; restore those weights or rebuild the folder "
            f"(python -m trainables.data.build_latents --encoder {record['source']} --out {shards.path} --overwrite ...)")
    return LatentDecoder(vae, shards)
