"""Latent shards as a trial task: shapes and normalisation, disjoint ranks, held-out tail, a Ray trial, refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import run_cli
from trainables.config import TrialConfig
from trainables.data import DatasetUnavailable, load_task
from trainables.data.build_latents import build
from trainables.data.latents import LatentShards, LatentWriter
from trainables.preflight import check_trial_inputs
from trainables.rcgm.errors import ConfigError
from trainables.tracking import TrialTracking, ensure_experiment
from trainables.trial import build_torch_trainer


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """The bundled MNIST training pool (4500 digits) as identity latents in 5 shards."""
    out = tmp_path_factory.mktemp("latents") / "mnist"
    build("mnist", "identity", str(out), shard_size=1000, log=lambda *_: None)
    return out


def row_keys(x: torch.Tensor) -> list[bytes]:
    """One hashable key per row: its exact float32 bytes."""
    return [row.tobytes() for row in x.reshape(len(x), -1).numpy()]


def test_load_task_shapes_labels_and_normalisation(shard_dir):
    task = load_task(f"latents:{shard_dir}")
    assert (task.kind, task.shape, task.num_classes) == ("latents", (1, 28, 28), 10)
    assert (task.train_rows, task.reference_size) == (4500 - 562, 562)
    x, y = task.sample(4000, torch.Generator().manual_seed(0))
    assert x.shape == (4000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    assert set(y.tolist()) == set(range(10))
    # Stored mean/std normalise to ~zero mean, unit std (they are over all rows, held-out included).
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    shards = LatentShards(shard_dir)
    raw, _ = shards.read_all()
    pixels = x * shards.std + shards.mean
    assert float(pixels.min()) >= -1 - 1e-3 and float(pixels.max()) <= 1 + 1e-3  # identity latents are pixels
    assert float(raw.min()) >= -1 and float(raw.max()) <= 1


def test_two_ranks_are_disjoint_and_cover_the_training_rows(shard_dir):
    ranks = [load_task(f"latents:{shard_dir}", seed=3, rank=r, world_size=2) for r in (0, 1)]
    a, b = (set(t.indices.tolist()) for t in ranks)
    assert not a & b and a | b == set(range(ranks[0].train_rows)) and abs(len(a) - len(b)) <= 1
    # sample() draws only this rank's rows: map sampled latents back to row ids by their exact values.
    shards = LatentShards(shard_dir)
    raw, _ = shards.read_all()
    ids_of: dict[bytes, set] = {}
    for i, key in enumerate(row_keys(shards.normalize(raw))):
        ids_of.setdefault(key, set()).add(i)
    # Rows with a byte-identical twin cannot be told apart, so they may look "drawn" by both ranks.
    twins = {i for ids in ids_of.values() if len(ids) > 1 for i in ids}
    gen = torch.Generator().manual_seed(0)
    drawn_by = []
    for task, mine in zip(ranks, (a, b)):
        drawn = set()
        for _ in range(16):  # 40000 draws over ~1969 rows: ~20 per row, so all are drawn (and the seed is fixed)
            x, _ = task.sample(2500, gen)
            for key in row_keys(x):
                drawn |= ids_of[key]
        assert not (drawn - mine) - twins  # nothing from the other rank or the held-out tail
        drawn_by.append(drawn & mine)
    assert drawn_by[0] | drawn_by[1] == a | b  # together the two ranks' draws cover every training row


def test_reference_is_a_held_out_tail_disjoint_from_training(shard_dir):
    tasks = [load_task(f"latents:{shard_dir}", seed=s, rank=r, world_size=w) for s, r, w in ((0, 0, 1), (5, 1, 3))]
    for task in tasks:
        assert not set(task.reference_indices.tolist()) & set(task.indices.tolist())
        assert task.reference_indices.min() == task.train_rows
    # The same held-out rows on every rank and seed: both draw the same latents from the same generator.
    r0, y0 = tasks[0].reference(562, torch.Generator().manual_seed(1))
    r1, y1 = tasks[1].reference(562, torch.Generator().manual_seed(1))
    assert torch.equal(r0, r1) and torch.equal(y0, y1)
    assert len(set(row_keys(r0))) >= 560  # distinct rows (no replacement), bar duplicate digits
    with pytest.raises(Exception, match="eval_samples"):
        tasks[0].reference(563)


def test_malformed_folder_and_unfitting_patch_are_refused_before_compute(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "shard-00000.parquet").write_bytes(b"not parquet")
    (broken / "_common_metadata").write_bytes(b"not parquet either")
    with pytest.raises(DatasetUnavailable, match=f"{broken}.*malformed.*build_latents"):
        load_task(f"latents:{broken}")
    # The tiny encoder's 14x14 grid: patch 4 cannot tile it, patch 2 can.
    tiny = tmp_path / "tiny"
    build("mnist", "tiny", str(tiny), shard_size=2000, log=lambda *_: None)
    with pytest.raises(ConfigError, match="patch divides the 14x14"):
        check_trial_inputs(TrialConfig(task=f"latents:{tiny}", model="DiT-XS/4", eval_samples=100))
    check_trial_inputs(TrialConfig(task=f"latents:{tiny}", model="DiT-T/2", eval_samples=100))
    # Two channels: the sample pictures could not draw them, so preflight says so up front.
    two = tmp_path / "two"
    writer = LatentWriter(two, (2, 8, 8), "float32", 20, info={"num_classes": None})
    writer.add(torch.randn(40, 2, 8, 8), torch.zeros(40, dtype=torch.long))
    writer.close()
    assert load_task(f"latents:{two}").num_classes is None
    with pytest.raises(ConfigError, match="1, 3 or 4 channels"):
        check_trial_inputs(TrialConfig(task=f"latents:{two}", model="DiT-XS/4", eval_samples=5))


@pytest.mark.slow
def test_two_worker_ray_trial_on_latents_logs_fld(local_ray, shard_dir, sqlite_uri, tmp_path):
    cfg = TrialConfig(task=f"latents:{shard_dir}", model="DiT-XS/4", order=2, kappa=0.99, batch_size=16, steps=60,
                      eval_every=30, eval_samples=100, nfe=(1,), lr=2e-3, workers=2, cpus_per_worker=0.9)
    assert (cfg.kind, cfg.metric_names()) == ("latents", ["fld_1nfe"])
    check_trial_inputs(cfg)
    tracking = TrialTracking(sqlite_uri, "t", trial_key="latents", run_name="latents")
    result = build_torch_trainer(cfg, tracking, name="train-latents", storage_path=str(tmp_path / "ray")).fit()
    assert result.metrics["status"] == "finished" and result.metrics["step"] == 60
    client = MlflowClient(sqlite_uri)
    (run,) = client.search_runs([ensure_experiment(sqlite_uri, "t")], filter_string="tags.`rcgm.trial_key` = 'latents'")
    assert run.data.tags["status"] == "finished" and run.data.params["task"] == cfg.task
    assert "NOT FID" in run.data.tags["metric_definition.fld"]
    hist = client.get_metric_history(run.info.run_id, "fld_1nfe")
    assert [m.step for m in hist] == [30, 60] and all(np.isfinite(m.value) and m.value > 0 for m in hist)
    assert run.data.metrics["noise_fld"] > 0 and run.data.metrics["final_step"] == 60


def test_missing_folder_is_refused_by_the_cli_with_the_build_command():
    proc = run_cli(["-m", "trainables.run", "--task", "latents:/nope", "--model", "DiT-XS/4", "--no-track", "--local"], timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "latents:/nope: no such folder" in proc.stderr
    assert "python -m trainables.data.build_latents --images mnist --encoder identity --out /nope" in proc.stderr
    assert "step=" not in proc.stdout
