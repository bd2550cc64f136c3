"""A task's reference statistics, computed once per (reference set, extractor, resolution) and cached.

The reference set is the one trials score against: `task.reference(n, generator)` with the
generator seeded 10_007 + data_seed, as trainables/evaluation.py draws it, so this command fills
the very cache entry a trial's first evaluation would otherwise fill. The cache itself (key,
file, atomic write) is `trainables.metrics.feature_stats.cached_stats`:
`<cache>/fid_stats/<key>.pt`, key = sha256(images' sha256, extractor's weights sha256, resolution).

    python -m trainables.metrics.reference_stats --task mnist [--extractor inception|fd] [--samples N]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from trainables.metrics.feature_stats import CacheEntry, FeatureStats, cached_stats
from trainables.rcgm.errors import ConfigError

EVAL_SEED = 10_007  # the Evaluator's reference generator seed, plus data_seed
EXTRACTORS = ("inception", "fd")


def task_reference(task_name: str, samples: int | None = None, data_seed: int = 0) -> tuple[torch.Tensor, str]:
    """(images, name) of a task's held-out reference set as a trial draws it (all of it when samples is None)."""
    from trainables.data import load_task

    task = load_task(task_name, seed=data_seed)
    if getattr(task, "kind", None) not in ("images",):
        raise ConfigError("task", task_name, "an image task (mnist, digits, mnist-full, cifar10): reference "
                          "statistics are for image metrics", flag="--task")
    n = task.reference_size if samples is None else samples
    generator = torch.Generator().manual_seed(EVAL_SEED + data_seed)
    images, _ = task.reference(n, generator)
    return images, f"{task_name} held-out, {n} images (generator seed {EVAL_SEED} + data_seed {data_seed})"


def build_extractor(name: str, shape: tuple, weights: str | None = None):
    """The feature network a metric uses: `inception` (fid) or `fd` (the digit classifier)."""
    from trainables.metrics.frechet import ClassifierFeatures, load_inception

    if name == "inception":
        return load_inception(weights)
    if name == "fd":
        return ClassifierFeatures(shape)
    raise ConfigError("extractor", name, " or ".join(EXTRACTORS), flag="--extractor")


def task_reference_stats(task_name: str, extractor_name: str = "inception", samples: int | None = None,
                         data_seed: int = 0, weights: str | None = None) -> tuple[FeatureStats, CacheEntry, object, str]:
    """(statistics, cache entry, extractor, reference name) for a task's reference set."""
    images, name = task_reference(task_name, samples, data_seed)
    extractor = build_extractor(extractor_name, tuple(images.shape[1:]), weights)
    stats, entry = cached_stats(images, extractor)
    return stats, entry, extractor, name


def main(argv: list[str] | None = None) -> int:
    """Compute (or find) the reference statistics of a task's held-out images; print where they are."""
    parser = argparse.ArgumentParser(prog="python -m trainables.metrics.reference_stats", description=main.__doc__)
    parser.add_argument("--task", required=True, help="image task: mnist, digits (bundled), mnist-full, cifar10")
    parser.add_argument("--extractor", default="inception", choices=EXTRACTORS,
                        help="inception (fid: the bundled port, or $RCGM_FID_WEIGHTS) or fd (digit classifier)")
    parser.add_argument("--samples", type=int, default=None,
                        help="reference images (default: the whole held-out split; a trial uses eval_samples)")
    parser.add_argument("--data-seed", type=int, default=0, help="the trial's data_seed (default 0)")
    parser.add_argument("--weights", default=None, help="torch-fidelity's Inception weights file (else $RCGM_FID_WEIGHTS, "
                        "else the bundled port)")
    args = parser.parse_args(argv)
    from trainables.data.catalog import DatasetUnavailable
    from trainables.metrics.inception import FIDUnavailable

    start = time.monotonic()
    try:
        stats, entry, extractor, name = task_reference_stats(args.task, args.extractor, args.samples, args.data_seed,
                                                             args.weights)
    except ConfigError as err:
        # The task's own refusal names the trial knob (eval_samples); here the knob is --samples.
        err = err.with_flag("--samples", "samples") if err.field == "eval_samples" else err.with_flag(err.flag or "--task")
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (DatasetUnavailable, FIDUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds = time.monotonic() - start
    print(f"{'hit' if entry.hit else 'miss (computed and written)'}: {entry.path}")
    print(f"key {entry.key}")
    print(f"{stats.count} reference images ({name}), {stats.dim}-d features of {extractor.name} "
          f"(sha256 {extractor.sha256[:12]}, resolution {extractor.resolution}); {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
