"""Bad input at every entry point: exit 2, one line naming what to change, before Ray or MLflow start (issue 13).

Each case runs the entry point's main() in this process with a fresh, empty RCGM_RUNS_DIR: after
the refusal Ray must not be running and the folder must still be empty (nothing logged,
nothing checkpointed). argparse's own refusals (a wrong type, an unknown choice) print the usage
first; their last line names the flag.
"""

from __future__ import annotations

import importlib

import pytest

ARGPARSE = "argparse"  # usage lines, then "prog: error: argument --flag: ..."
OURS = "ours"  # exactly one line: "error: <field>=<value> is invalid: expected ... (change --flag)"

# Entry points whose --dry-run runs every check before Ray (and starts nothing when one is missed).
DRY_RUN = ("sweeps.kappa_by_order", "sweeps.schedule_search", "trainables.run")

CASES = [
    # The main job.
    ("sweeps.kappa_by_order", ["--seeds", "0"], "--seeds", OURS),
    ("sweeps.kappa_by_order", ["--seeds", "abc"], "--seeds", OURS),
    ("sweeps.kappa_by_order", ["--steps", "0"], "--steps", OURS),
    ("sweeps.kappa_by_order", ["--steps", "ten"], "--steps", ARGPARSE),
    ("sweeps.kappa_by_order", ["--lr", "-1"], "--lr", OURS),
    ("sweeps.kappa_by_order", ["--nfe", "0"], "--nfe", OURS),
    ("sweeps.kappa_by_order", ["--clip", "0"], "--clip", OURS),
    ("sweeps.kappa_by_order", ["--guidance", "1"], "--guidance", OURS),
    ("sweeps.kappa_by_order", ["--task", "imagenet"], "--task", OURS),
    ("sweeps.kappa_by_order", ["--task", "latents:/nonexistent"], "build_latents", OURS),
    ("sweeps.kappa_by_order", ["--model", "DiT-XS/4"], "--model", OURS),
    ("sweeps.kappa_by_order", ["--time-params", "a=x"], "--time-params", OURS),
    ("sweeps.kappa_by_order", ["--time-schedule", "cosine"], "--time-schedule", OURS),
    ("sweeps.kappa_by_order", ["--kappas", ""], "--kappas", OURS),
    ("sweeps.kappa_by_order", ["--kappas", "0.9,1.5"], "--kappas", OURS),
    ("sweeps.kappa_by_order", ["--orders", "-1"], "--orders", OURS),
    ("sweeps.kappa_by_order", ["--objectives", "meanflow,bogus"], "--objectives", OURS),
    ("sweeps.kappa_by_order", ["--objectives", "meanflow", "--orders", "2"], "--orders", OURS),
    ("sweeps.kappa_by_order", ["--objectives", "meanflow", "--workers", "2"], "--workers", OURS),
    ("sweeps.kappa_by_order", ["--max-concurrent", "-1"], "--max-concurrent", OURS),
    ("sweeps.kappa_by_order", ["--max-concurrent", "0"], "--max-concurrent", OURS),
    ("sweeps.kappa_by_order", ["--trial-runner", "bogus"], "--trial-runner", OURS),
    ("sweeps.kappa_by_order", ["--storage-path", "/proc/nope"], "--storage-path", OURS),
    ("sweeps.kappa_by_order", ["--tracking-uri", "http://127.0.0.1:9"], "--tracking-uri", OURS),
    ("sweeps.kappa_by_order", ["--size", "huge"], "--size", ARGPARSE),
    # The Optuna searches.
    ("sweeps.schedule_search", ["--samples", "0"], "--samples", OURS),
    ("sweeps.schedule_search", ["--space", "nope"], "--space", ARGPARSE),
    ("sweeps.schedule_search", ["--space", "order_kappa", "--order", "3"], "--order", OURS),
    ("sweeps.schedule_search", ["--space", "order_kappa", "--kappa", "0.9"], "--kappa", OURS),
    ("sweeps.schedule_search", ["--space", "order_kappa", "--objective", "meanflow"], "--objective", OURS),
    ("sweeps.schedule_search", ["--optuna-storage", "sqlite:////proc/nope/x.db"], "--optuna-storage", OURS),
    # One trial by hand.
    ("trainables.run", ["--kappa", "2"], "--kappa", OURS),
    ("trainables.run", ["--objective", "shortcut", "--order", "3"], "--order", OURS),
    ("trainables.run", ["--objective", "sCM"], "--objective", OURS),
    ("trainables.run", ["--task", "mnist", "--model", "mlp"], "--model", OURS),
    ("trainables.run", ["--task", "mnist", "--model", "DiT-XS/4", "--guidance", "2000"], "--guidance", OURS),
    ("trainables.run", ["--tracking-uri", "http://127.0.0.1:9"], "--tracking-uri", OURS),
    ("trainables.run", ["--compile", "--objective", "meanflow"], "--compile", OURS),
    # Reports.
    ("dashboards.report", ["--tracking-uri", "sqlite:////nonexistent/x.db"], "--tracking-uri", OURS),
    ("dashboards.markdown", ["--sweep", "x", "--tracking-uri", "sqlite:////nonexistent/x.db"], "--tracking-uri", OURS),
    # Latent shards.
    ("trainables.data.build_latents", ["--images", "nope", "--out", "{tmp}/lat"], "mnist, digits", OURS),
    ("trainables.data.build_latents", ["--images", "digits", "--shard-size", "0", "--out", "{tmp}/lat"], "shard_size", OURS),
    ("trainables.data.build_latents", ["--images", "digits", "--batch", "0", "--out", "{tmp}/lat"], "batch", OURS),
    ("trainables.data.build_latents", ["--images", "digits", "--dtype", "int8", "--out", "{tmp}/lat"], "--dtype", ARGPARSE),
    # Submitting to a cluster.
    ("sweeps.submit", ["--address", "http://127.0.0.1:9", "--", "sweeps/kappa_by_order.py"], "--address", OURS),
    # Benchmarks.
    ("bench.objective", ["--precision", "fp8"], "--precision", ARGPARSE),
]


def _id(case) -> str:
    module, argv, _, _ = case
    return f"{module.rsplit('.', 1)[-1]}:{' '.join(argv)[:60]}"


@pytest.mark.parametrize("module,argv,needle,kind", CASES, ids=[_id(c) for c in CASES])
def test_refused_with_one_line_before_anything_starts(module, argv, needle, kind, tmp_path, monkeypatch, capsys):
    import ray

    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("RCGM_RUNS_DIR", str(runs))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if module in DRY_RUN:
        # A regression then exits 0 with a plan instead of starting a sweep inside the test.
        argv.append("--dry-run")
    main = importlib.import_module(module).main
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, err
    assert err and needle in err[-1], err
    if kind == OURS:
        assert len(err) == 1, err
        assert "Traceback" not in err[0]
    assert not ray.is_initialized()
    assert list(runs.iterdir()) == []  # no store, checkpoint or report was created


def test_every_entry_point_is_covered():
    """A new entry point gets bad-input cases here."""
    covered = {module for module, *_ in CASES}
    assert covered >= {"sweeps.kappa_by_order", "sweeps.schedule_search", "trainables.run", "dashboards.report",
                       "dashboards.markdown", "trainables.data.build_latents", "sweeps.submit", "bench.objective"}
