"""Encode an image set into latent parquet shards: python -m trainables.data.build_latents --help."""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainables.data.catalog import DatasetUnavailable
from trainables.data.latents import LatentWriter
from trainables.data.vae import VAEUnavailable, load_autoencoder, resolve_source, vae_record, weights_sha256
from trainables.rcgm.errors import ConfigError

BUNDLED_IMAGES = ("mnist", "digits")


class EncoderUnavailable(RuntimeError):
    """The requested encoder cannot be loaded here; the message says what is missing."""


class TinyEncoder(nn.Module):
    """A fixed, seeded random conv (stride 2, 4 channels): an offline stand-in for a VAE encoder."""

    def __init__(self, in_channels: int, latent_channels: int = 4, seed: int = 0):
        super().__init__()
        # fork_rng: the weights depend on seed only, never on the caller's RNG state.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conv = nn.Conv2d(in_channels, latent_channels, 4, stride=2, padding=1)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x))


class DiffusersEncoder(nn.Module):
    """diffusers AutoencoderKL: latents = posterior mean (deterministic), unscaled; .record(shape) is the folder's `vae`."""

    def __init__(self, name_or_path: str):
        super().__init__()
        self.source = resolve_source(name_or_path)
        try:
            # Only a local folder is loaded without the Hub, so an offline run fails fast, not on retries.
            self.vae = load_autoencoder(self.source, local_files_only=Path(self.source).is_absolute())
        except VAEUnavailable as err:
            raise EncoderUnavailable(
                f"encoder {name_or_path!r}: {err}. Give a local folder with config.json and weights (e.g. a saved "
                "stabilityai/sd-vae-ft-ema) or run where the Hugging Face Hub is reachable; offline, use "
                "--encoder identity or --encoder tiny") from None
        self.in_channels = int(self.vae.config.in_channels)
        self.sha256 = weights_sha256(self.vae)

    def check_channels(self, channels: int) -> None:
        """Refuse images this VAE cannot take: grey goes to an RGB VAE as RGB, nothing else is converted."""
        if channels != self.in_channels and not (channels == 1 and self.in_channels == 3):
            raise ConfigError("encoder", self.source, f"an AutoencoderKL taking {channels}-channel images "
                                                      f"(this one takes {self.in_channels})")

    def record(self, image_shape: tuple) -> dict:
        """The `vae` entry of the folder's metadata (trainables.data.vae reads it to decode)."""
        return vae_record(self.vae, self.source, self.sha256, image_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.repeat(1, 3, 1, 1)  # an RGB VAE sees a grey digit as three equal channels
        return self.vae.encode(x).latent_dist.mean


def build_encoder(name: str, in_channels: int) -> tuple[nn.Module, str]:
    """Return (encoder, description) for identity, tiny, or a diffusers AutoencoderKL id/path."""
    if name == "identity":
        return nn.Identity(), "identity (pixels in [-1, 1])"
    if name == "tiny":
        return TinyEncoder(in_channels), "tiny (fixed random conv 4x4 stride 2 -> 4 channels, tanh, seed 0)"
    enc = DiffusersEncoder(name)
    return enc, f"diffusers AutoencoderKL {enc.source} (posterior mean, unscaled; weights sha256 {enc.sha256[:12]})"


def load_images(source: str, size: int | None) -> tuple[torch.Tensor, torch.Tensor, int | None, str]:
    """uint8 images, labels, number of classes and a description for a bundled task or a folder."""
    from trainables.data.images import load_image_folder, load_image_task

    if source in BUNDLED_IMAGES:
        task = load_image_task(source)
        # Training pool only: the held-out split stays unseen for metrics.
        return task.train_x, task.train_y, task.num_classes, f"{source} training pool ({task.description})"
    if not Path(source).is_dir():
        raise ConfigError("images", source, f"one of {', '.join(BUNDLED_IMAGES)} or a folder of class sub-folders")
    x, y, classes = load_image_folder(source, size)
    return x, y, len(classes), f"image folder {source} ({len(classes)} classes: {', '.join(classes[:5])}...)"


def build(images: str, encoder: str, out: str, shard_size: int, dtype: str = "float16", batch: int = 256,
          seed: int = 0, size: int | None = None, overwrite: bool = False, log=print) -> dict:
    """Encode images into shards under out; return the dataset metadata."""
    if batch < 1:
        raise ConfigError("batch", batch, "images per encoder call, an integer >= 1")
    if size is not None and size < 1:
        raise ConfigError("size", size, "a side in pixels >= 1 (or unset: keep the images' size)")
    # A heavy encoder is checked before the images load: a missing one fails in a second, not a minute.
    heavy = None if encoder in ("identity", "tiny") else build_encoder(encoder, 3)
    x, y, num_classes, source = load_images(images, size)
    enc, enc_text = heavy or build_encoder(encoder, x.shape[1])
    vae = None
    if isinstance(enc, DiffusersEncoder):
        enc.check_channels(x.shape[1])
        vae = enc.record(tuple(x.shape[1:]))
    # Shuffle before sharding so every shard is a fair sample: readers stream shard by shard.
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    with torch.no_grad():
        shape = tuple(enc(x[:1].float() / 127.5 - 1).shape[1:])
    writer = LatentWriter(out, shape, dtype, shard_size, overwrite=overwrite,
                          info={"encoder": enc_text, "vae": vae, "source": source, "num_classes": num_classes, "shuffle_seed": seed})
    start = time.monotonic()
    for i, idx in enumerate(order.split(batch)):
        with torch.no_grad():
            writer.add(enc(x[idx].float() / 127.5 - 1), y[idx])
        if i % 20 == 0:
            log(f"encoded {min((i + 1) * batch, len(x))}/{len(x)} ({time.monotonic() - start:.1f}s)")
    meta = writer.close()
    log(f"wrote {meta['rows']} latents of shape {tuple(meta['shape'])} ({dtype}) in {meta['shards']} shards to {out}")
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split(":")[0])
    parser.add_argument("--images", required=True, help="mnist, digits, or a folder with one sub-folder per class")
    parser.add_argument("--encoder", default="identity",
                        help="identity, tiny, or a diffusers AutoencoderKL id/path (e.g. stabilityai/sd-vae-ft-ema)")
    parser.add_argument("--out", required=True, help="output directory for shard-*.parquet and _common_metadata")
    parser.add_argument("--shard-size", type=int, default=10000, help="rows per parquet shard (>= 1)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--batch", type=int, default=256, help="images per encoder call")
    parser.add_argument("--size", type=int, default=None, help="resize folder images to size x size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pre-sharding shuffle")
    parser.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    args = parser.parse_args(argv)
    try:
        build(args.images, args.encoder, args.out, args.shard_size, args.dtype, args.batch, args.seed, args.size,
              args.overwrite)
    except (ConfigError, EncoderUnavailable, DatasetUnavailable) as err:
        print(f"build_latents: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
