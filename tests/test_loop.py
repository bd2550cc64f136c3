"""The shared training step: learning-rate schedules and bit-for-bit resumption."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from trainables.config import TrialConfig
from trainables.loop import Trainer, learning_rate


def _cfg(**changes) -> TrialConfig:
    return TrialConfig(task="moons", order=2, kappa=0.99, batch_size=64, steps=8, **changes)


def _lrs(trainer: Trainer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        trainer.train_step()
        out.append(trainer.optimizer.param_groups[0]["lr"])
    return out


def test_constant_schedule_keeps_the_learning_rate():
    assert _lrs(Trainer(_cfg(lr=3e-3)), 4) == [3e-3] * 4


def test_cosine_schedule_falls_from_lr_to_zero_over_the_trial():
    cfg = _cfg(lr=2e-3, lr_schedule="cosine")
    got = _lrs(Trainer(cfg), 8)
    want = [2e-3 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[0] == pytest.approx(2e-3) and got[-1] < 0.04 * 2e-3
    assert learning_rate(cfg, 8) == pytest.approx(0.0, abs=1e-18)
    assert "lr_schedule" in cfg.tracking_params() and "lr_schedule" not in _cfg().tracking_params()


def test_a_resumed_cosine_trial_continues_on_the_same_curve():
    cfg = _cfg(lr_schedule="cosine")
    straight = Trainer(cfg)
    _lrs(straight, 8)
    first = Trainer(cfg)
    _lrs(first, 3)
    state = copy.deepcopy(first.state_dict())
    resumed = Trainer(cfg)
    resumed.load_state_dict(state)
    assert _lrs(resumed, 5) == pytest.approx([learning_rate(cfg, k) for k in range(3, 8)], rel=1e-12)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_a_checkpoint_write_that_fails_half_way_leaves_no_state_file(tmp_path, monkeypatch):
    """Written under a temporary name and renamed: a torn write never looks like a checkpoint."""
    from trainables import checkpointing

    state = {"step": 3, "weights": torch.arange(10.0)}
    (tmp_path / "ok").mkdir()
    checkpointing.save_state(tmp_path / "ok", state, {}, {})

    def torn(obj, path):
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpointing, "write", torn)
    (tmp_path / "torn").mkdir()
    with pytest.raises(OSError):
        checkpointing.save_state(tmp_path / "torn", state, {}, {})
    assert not (tmp_path / "torn" / checkpointing.STATE_FILE).exists()
    assert torch.equal(checkpointing.load_state(tmp_path / "ok")["trainer"]["weights"], state["weights"])
