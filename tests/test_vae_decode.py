"""Latents to images: shards record their VAE, a latent task decodes through it and scores in image space.

The VAEs are small diffusers AutoencoderKLs with random weights, built here and saved under tmp_path.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from conftest import run_cli
from trainables.config import TrialConfig
from trainables.data import load_task
from trainables.data.build_latents import build
from trainables.data.latents import LatentShards, LatentWriter
from trainables.data.vae import STORED_LATENTS, VAEChanged, VAEUnavailable, weights_sha256
from trainables.evaluation import Evaluator
from trainables.loop import Trainer
from trainables.metrics.decoded import latent_metric_family, latent_task_scorer

diffusers = pytest.importorskip("diffusers")


def save_vae(folder, channels: int = 1, seed: int = 0):
    """A two-block AutoencoderKL (f = 2, 4 latent channels) with seeded random weights, saved to folder."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = diffusers.AutoencoderKL(
            in_channels=channels, out_channels=channels, latent_channels=4, block_out_channels=(4, 8),
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            layers_per_block=1, norm_num_groups=2, mid_block_add_attention=False)
    vae.save_pretrained(folder)
    return folder


def load_vae(folder):
    """The saved VAE, as the decoder loads it."""
    return diffusers.AutoencoderKL.from_pretrained(folder, local_files_only=True).eval()


def digits_folder(tmp_path, channels: int = 1):
    """(vae folder, shard folder): the bundled 8x8 digits encoded by a fresh VAE (about a second)."""
    vae_dir = save_vae(tmp_path / f"vae{channels}", channels)
    out = tmp_path / f"digits{channels}"
    build("digits", str(vae_dir), str(out), shard_size=1000, batch=1500, log=lambda *_: None)
    return vae_dir, out


@pytest.fixture(scope="module")
def mnist_folder(tmp_path_factory):
    """(vae folder, shard folder): the bundled MNIST pool encoded through the command line, as a user would."""
    root = tmp_path_factory.mktemp("vae")
    vae_dir, out = save_vae(root / "vae"), root / "mnist"
    proc = run_cli(["-m", "trainables.data.build_latents", "--images", "mnist", "--encoder", str(vae_dir),
                    "--out", str(out), "--shard-size", "2000", "--batch", "1500"], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return vae_dir, out


def test_shards_record_the_vae_that_made_them(mnist_folder, tmp_path):
    vae_dir, out = mnist_folder
    shards = LatentShards(out)
    sha = weights_sha256(load_vae(vae_dir))
    assert shards.shape == (4, 14, 14)
    assert shards.vae == {"source": str(vae_dir.resolve()), "scaling_factor": 0.18215, "weights_sha256": sha,
                          "image_shape": [1, 28, 28], "latents": STORED_LATENTS}
    assert sha[:12] in shards.meta["encoder"]
    # Folders without a VAE record (identity, tiny, or built before it existed) open and have no decoder.
    old = tmp_path / "old"
    writer = LatentWriter(old, (1, 8, 8), "float32", 20, info={"num_classes": None})
    writer.add(torch.randn(40, 1, 8, 8), torch.zeros(40, dtype=torch.long))
    writer.close()
    assert "vae" not in LatentShards(old).meta and load_task(f"latents:{old}").decoder() is None
    tiny = tmp_path / "tiny"
    build("digits", "tiny", str(tiny), shard_size=2000, log=lambda *_: None)
    assert LatentShards(tiny).vae is None and latent_metric_family(tiny) == "fld"
    assert latent_metric_family(tmp_path / "nope") == "fld"  # unreadable: the preflight refuses it, saying why


def test_the_weights_hash_follows_the_weights(tmp_path):
    folder = save_vae(tmp_path / "vae")
    first = weights_sha256(load_vae(folder))
    assert weights_sha256(load_vae(folder)) == first  # a reload hashes the same
    vae = load_vae(folder)
    with torch.no_grad():
        vae.decoder.conv_out.bias[0] += 1e-3  # one number of one tensor
    vae.save_pretrained(folder)
    assert weights_sha256(load_vae(folder)) != first
    assert weights_sha256(load_vae(folder).half()) != weights_sha256(load_vae(folder))  # dtype is hashed too


def test_decode_undoes_the_normalisation_and_matches_the_vae(mnist_folder):
    vae_dir, out = mnist_folder
    task = load_task(f"latents:{out}")
    raw, _ = task.shards.read_all()
    raw = raw[:16]
    images = task.decoder().decode(task.shards.normalize(raw))
    with torch.no_grad():
        expected = load_vae(vae_dir).decode(raw).sample.clamp(-1, 1)
        undone_wrongly = load_vae(vae_dir).decode(task.shards.normalize(raw)).sample.clamp(-1, 1)
    assert images.shape == (16, 1, 28, 28) and images.dtype == torch.float32
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    assert torch.allclose(images, expected, atol=1e-5)
    assert not torch.allclose(images, undone_wrongly, atol=1e-3)  # the check can tell a skipped un-normalisation


def test_a_trained_latent_task_is_scored_in_image_space(mnist_folder):
    vae_dir, out = mnist_folder
    cfg = TrialConfig(task=f"latents:{out}", model="DiT-T/2", batch_size=8, steps=3, eval_samples=64, nfe=(1, 2))
    trainer = Trainer(cfg)
    losses = [trainer.train_step() for _ in range(cfg.steps)]
    assert all(math.isfinite(v) for v in losses)
    evaluator = Evaluator(cfg, trainer.task, trainer.device)
    sha = LatentShards(out).vae["weights_sha256"]
    assert evaluator.family == "fd" == latent_metric_family(out)
    assert f"image space, decoded through VAE {vae_dir.resolve()} sha256 {sha[:12]}" in evaluator.description
    assert "VAE reconstructions" in evaluator.description and "digit classifier" in evaluator.description
    result = evaluator.evaluate(trainer.model, cfg.steps)
    assert set(result.metrics) == {"fd_1nfe", "fd_2nfe"}
    assert all(math.isfinite(v) and v > 0 for v in result.metrics.values())
    assert math.isfinite(evaluator.noise_level) and evaluator.noise_level > 0
    # The reference latents decode to the reference images themselves: distance zero, so the scorer decodes.
    assert abs(evaluator.score(evaluator.reference)) < 1e-6


def test_grey_digits_through_an_rgb_vae_decode_to_grey_and_score_fd(tmp_path):
    _, out = digits_folder(tmp_path, channels=3)
    task = load_task(f"latents:{out}")
    assert task.shards.vae["image_shape"] == [1, 8, 8] and task.shape == (4, 4, 4)
    reference, _ = task.reference(64, torch.Generator().manual_seed(0))
    assert task.decoder().decode(reference[:4]).shape == (4, 1, 8, 8)
    score, description, family = latent_task_scorer(task, reference)
    assert family == "fd" and "image space, decoded through VAE" in description
    assert score(reference) == pytest.approx(0, abs=1e-6) and score(torch.randn(64, 4, 4, 4)) > 0


def test_a_folder_whose_vae_changed_is_refused_in_one_line(tmp_path):
    vae_dir, out = digits_folder(tmp_path)
    built = LatentShards(out).vae["weights_sha256"]
    vae = load_vae(vae_dir)
    with torch.no_grad():
        vae.encoder.conv_in.weight[0, 0, 0, 0] += 1e-3
    vae.save_pretrained(vae_dir)
    now = weights_sha256(load_vae(vae_dir))
    assert now != built
    task = load_task(f"latents:{out}")
    with pytest.raises(VAEChanged) as err:
        task.decoder()
    message = str(err.value)
    assert "\n" not in message and str(out) in message and built[:12] in message and now[:12] in message
    assert "rebuild the folder" in message
    # A refusal, not a silent fall back to latent space.
    with pytest.raises(VAEChanged):
        latent_task_scorer(task, task.reference(16)[0])
    # And by every entry point before any compute: exit 2, one line (trainables.preflight).
    proc = run_cli(["-m", "trainables.run", "--local", "--no-track", "--task", f"latents:{out}",
                    "--steps", "1"], timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "rebuild the folder" in proc.stderr and "step=" not in proc.stdout


def test_missing_vae_weights_fall_back_to_latent_space_with_the_reason(tmp_path):
    vae_dir, out = digits_folder(tmp_path)
    shutil.rmtree(vae_dir)
    assert latent_metric_family(out) == "fld"
    task = load_task(f"latents:{out}")
    with pytest.raises(VAEUnavailable, match="is missing"):
        task.decoder()
    reference, _ = task.reference(64)
    score, description, family = latent_task_scorer(task, reference)
    assert family == "fld" and "NOT FID" in description
    assert f"latent space, not decoded: the VAE folder {vae_dir.resolve()}" in description
    assert math.isfinite(score(reference))
