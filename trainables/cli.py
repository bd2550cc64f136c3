"""Command-line flags for every TrialConfig field, shared by the one-trial CLI and the sweeps."""

from __future__ import annotations

import argparse
import dataclasses

from trainables.config import TrialConfig
from trainables.rcgm.errors import ConfigError

HELP = {
    "task": "dataset: moons, 8gaussians, checkerboard, swissroll (points); mnist, digits, mnist-full, cifar10 (images); latents:<folder> (latent shards from trainables.data.build_latents)",
    "model": "'auto' (mlp for points, DiT-T/4 for images, DiT-T/2 for latents), mlp, or DiT-XS/4 ... DiT-XL/2",
    "objective": "rcgm (the N-th order recursive objective) or meanflow (JVP baseline)",
    "order": "RCGM order N >= 0 (0 = flow matching, 1 = consistency/MeanFlow-like, >= 2 higher order)",
    "kappa": "target-model EMA decay in [0, 1]: 0 = the online model, 1 = frozen initial copy",
    "delta_t": "length of the Euler first segment, in (0, 1)",
    "clip": "clip of the consistency residual xi, > 0",
    "placement": "intermediate points: equal (reference code) or random (hierarchical)",
    "time_schedule": "(t, r) sampling: uniform, beta, logit_normal",
    "time_params": "schedule parameters as k=v pairs, e.g. a=0.8,b=1,scale=1",
    "flow_fraction": "fraction of each batch with r = t (flow-matching samples), in [0, 1]",
    "guidance": "training-time guidance strength (class-conditional image and latent tasks), >= 0",
    "label_dropout": "fraction of labels dropped to the null class, in [0, 1)",
    "lr": "Adam learning rate",
    "lr_schedule": "constant, or cosine (from lr down to 0 at the last step)",
    "batch_size": "global batch size (split over workers)",
    "steps": "optimizer steps",
    "grad_clip": "gradient-norm clip (0 = off)",
    "seed": "training seed (init, batches, noise)",
    "data_seed": "seed of the dataset pools and the evaluation set",
    "eval_every": "evaluate (samples, metrics, picture) every this many steps",
    "eval_samples": "samples per NFE for the metric (0 = 2000 for points, 500 for images and latents)",
    "nfe": "comma-separated numbers of function evaluations to sample with, e.g. 1,2,4",
    "sample_style": "multi-step sampling: few (re-noise), any (jump to next time), mul (Euler)",
    "image_metric": "image metric: fd (offline digit-classifier features) or fid (Inception weights)",
    "checkpoint_every": "checkpoint every this many steps (0 = with every evaluation)",
    "collapse_after": "fraction of steps after which no-better-than-noise samples end the trial as collapsed",
    "workers": "Ray Train workers per trial (DDP)",
    "gpus_per_worker": "GPUs per worker (0 = CPU)",
    "cpus_per_worker": "CPUs per worker",
}


def parse_nfe(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4), refusing anything else with a message naming --nfe."""
    try:
        return tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise ConfigError("nfe", text, "comma-separated integers >= 1, e.g. 1,2,4") from None


def parse_time_params(text: str) -> dict[str, float]:
    """'a=0.8,b=1' -> {'a': 0.8, 'b': 1.0}."""
    out = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        key, sep, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError("time_params", text, "k=v pairs with numeric values, e.g. a=0.8,b=1")
    return out


def add_trial_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), defaults: TrialConfig | None = None,
                        unset: bool = False) -> None:
    """Add a --flag per TrialConfig field (except skip), defaulting to defaults' values.

    With unset=True every flag defaults to None, so a caller can layer a named size under the flags.
    """
    defaults = defaults or TrialConfig()
    group = parser.add_argument_group("trial settings")
    for f in dataclasses.fields(TrialConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        shown = "" if unset else " (default %(default)s)"
        if f.name == "nfe":
            default = ",".join(map(str, value))
            kind = str
        elif f.name == "time_params":
            default = ",".join(f"{k}={v}" for k, v in value.items())
            kind = str
        else:
            default, kind = value, type(value)
        group.add_argument(flag, type=kind, default=None if unset else default, help=HELP[f.name] + shown)


def trial_values_from_args(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict:
    """The TrialConfig fields set by add_trial_arguments, parsed into config values."""
    values = {}
    for f in dataclasses.fields(TrialConfig):
        if f.name in skip or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if f.name == "nfe":
            value = parse_nfe(value)
        elif f.name == "time_params":
            value = parse_time_params(value)
        values[f.name] = value
    return values
