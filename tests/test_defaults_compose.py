"""Defaults compose: every task with every entry point's defaults is accepted, and a short real run of each works.

The tasks: the four 2-D toys, the bundled MNIST and digits, and a latents folder built at test time.
"""

from __future__ import annotations

import importlib

import pytest

from trainables.data.build_latents import build

DRY_RUN = ("sweeps.kappa_by_order", "sweeps.schedule_search", "trainables.run")
TASKS = ("moons", "8gaussians", "checkerboard", "swissroll", "mnist", "digits", "latents")


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> str:
    """The bundled digits as identity latents: a real latents folder, made here, not committed."""
    out = tmp_path_factory.mktemp("latents") / "digits"
    build("digits", "identity", str(out), shard_size=500, log=lambda *_: None)
    return f"latents:{out}"


def _task(name: str, latents: str) -> str:
    return latents if name == "latents" else name


def _main(module: str, argv: list[str]) -> int:
    try:
        code = importlib.import_module(module).main(argv)
    except SystemExit as stop:
        code = stop.code
    return 0 if code is None else code


@pytest.mark.parametrize("module", DRY_RUN)
@pytest.mark.parametrize("task", TASKS)
def test_every_task_is_accepted_with_each_entry_points_defaults(module, task, latents, tmp_path, monkeypatch, capsys):
    import ray

    monkeypatch.setenv("RCGM_RUNS_DIR", str(tmp_path / "runs"))
    code = _main(module, ["--task", _task(task, latents), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert not ray.is_initialized()


@pytest.mark.slow  # seven trials with an MLflow store, two of them DiTs
@pytest.mark.parametrize("task", TASKS)
def test_a_short_real_run_of_every_task_works(task, latents, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RCGM_RUNS_DIR", str(tmp_path / "runs"))
    argv = ["--local", "--task", _task(task, latents), "--steps", "6", "--eval-every", "6", "--nfe", "1",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    code = _main("trainables.run", argv)
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    assert "status: finished" in out
