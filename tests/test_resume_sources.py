"""Where a resumed trial starts: Tune's checkpoint, or a newer complete one its saved state did not know of."""

from __future__ import annotations

import torch
from ray import tune

from trainables.checkpointing import STATE_FILE, checkpoint_index, newest_saved
from trainables.tune_trial import latest_checkpoint


def _saved(folder, index: int, good: bool = True):
    d = folder / f"checkpoint_{index:06d}"
    d.mkdir(parents=True)
    if good:
        torch.save({"trainer": {"step": index}, "best": {}}, d / STATE_FILE)
    else:
        (d / STATE_FILE).write_bytes(b"PK\x03\x04 cut short")
    return d


def test_newest_saved_ignores_folders_without_a_state_file_and_other_names(tmp_path):
    assert newest_saved(tmp_path / "missing") is None
    _saved(tmp_path, 2)
    (tmp_path / "checkpoint_000009").mkdir()  # Tune had not copied the state in yet
    (tmp_path / "checkpoint_tmp").mkdir()
    assert newest_saved(tmp_path).name == "checkpoint_000002"
    assert checkpoint_index("checkpoint_000011") == 11 and checkpoint_index("params.json") == -1


def test_a_newer_checkpoint_on_the_storage_wins_over_tunes_stale_one(tmp_path, capsys):
    old = _saved(tmp_path, 3)
    _saved(tmp_path, 5)
    got = latest_checkpoint(tune.Checkpoint.from_directory(str(old)), tmp_path)
    assert checkpoint_index(got.path) == 5
    assert "Tune's saved state knew checkpoint_000003" in capsys.readouterr().err
    assert checkpoint_index(latest_checkpoint(None, tmp_path).path) == 5  # Tune knew none: not from step 0


def test_tunes_checkpoint_stays_when_it_is_the_newest_or_the_newer_one_is_torn(tmp_path):
    given = tune.Checkpoint.from_directory(str(_saved(tmp_path, 4)))
    assert latest_checkpoint(given, tmp_path) is given
    _saved(tmp_path, 6, good=False)
    assert latest_checkpoint(given, tmp_path) is given
    assert latest_checkpoint(given, None) is given  # remote storage: Tune's word only
