"""A checkpoint is data, never code: a planted pickle payload in state.pt is refused, not run (issue 13)."""

import os
import pickle

import pytest
import torch

from trainables.checkpointing import STATE_FILE, load_state, save_state


class Payload:
    """Unpickling this creates a marker file: what an attacker's code would do instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _plant(folder, marker):
    torch.save({"trainer": {"step": 1}, "config": {}, "best": {}, "payload": Payload(str(marker))}, folder / STATE_FILE)


def test_planted_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    _plant(tmp_path, marker)
    with pytest.raises(pickle.UnpicklingError):
        load_state(tmp_path)
    assert not marker.exists()
    # Teeth: the same file through a plain unpickler does run the payload.
    torch.load(tmp_path / STATE_FILE, weights_only=False)
    assert marker.exists()


def test_a_real_checkpoint_round_trips(tmp_path):
    save_state(tmp_path, {"step": 7, "weights": torch.ones(3)}, {"order": 2}, {"mmd2_1nfe": 0.01})
    state = load_state(tmp_path)
    assert state["trainer"]["step"] == 7 and torch.equal(state["trainer"]["weights"], torch.ones(3))
    assert state["config"] == {"order": 2} and state["best"] == {"mmd2_1nfe": 0.01}
    assert not (tmp_path / (STATE_FILE + ".partial")).exists()
