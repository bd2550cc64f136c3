"""A trial's closing FID over many samples (`--fid-samples`, e.g. 50000), generated across all its workers.

The cheap metric (fd, mmd2) runs every `eval_every` steps on the held-out size; this runs once, at
the end, with the Inception network: each Ray Train worker generates its own chunks of the sample
plan (disjoint, fixed by global sample index: trainables.metrics.sharded) and featurises them;
rank 0 turns each chunk's features into float64 sufficient statistics and merges them in chunk
order. The value is therefore the same for any number of workers, and FID-50k on 8 GPUs costs
about an eighth of the time of one.
"""

from __future__ import annotations

import math

import torch

from trainables.config import TrialConfig
from trainables.metric_names import nfe_metric
from trainables.metrics.feature_stats import cached_stats
from trainables.metrics.inception import load_inception
from trainables.metrics.reference_stats import EVAL_SEED
from trainables.metrics.sharded import SamplePlan, chunk_seed, chunks_for_rank, reduce
from trainables.rcgm.sampling import sample

PLAN_SEED = 30_011  # plus the trial's seed: the samples' noise and labels, apart from the evaluation noise


def family(cfg: TrialConfig) -> str:
    """The metric family of a trial's closing FID: `fid50000` for 50000 samples (`fid50000_1nfe`)."""
    return f"fid{cfg.fid_samples}"


class FinalFID:
    """The network, the sample plan and (on rank 0) the reference statistics of a trial's closing FID."""

    def __init__(self, cfg: TrialConfig, task, device, rank: int, world_size: int):
        self.cfg, self.device, self.rank, self.world_size = cfg, torch.device(device), rank, world_size
        self.extractor = load_inception().to(self.device)
        self.plan = SamplePlan(cfg.fid_samples, PLAN_SEED + cfg.seed, task.shape, task.num_classes, labels="balanced")
        self.reference = self.entry = None
        self.reference_count = task.reference_size
        if rank == 0:
            # The whole held-out split, the same set for every seed; its statistics are computed once and cached.
            gen = torch.Generator().manual_seed(EVAL_SEED + cfg.data_seed)
            images, _ = task.reference(task.reference_size, gen)
            self.reference, self.entry = cached_stats(images, self.extractor)

    def _chunk_features(self, model, nfe: int) -> dict[int, torch.Tensor | None]:
        """This rank's chunks' (n_c, 2048) features at one NFE; None for a chunk whose samples are not finite.

        Features, not statistics, cross the process group: 2 MB per chunk instead of a 32 MB matrix.
        """
        out = {}
        for chunk in chunks_for_rank(self.plan.n, self.rank, self.world_size):
            z, y = self.plan.inputs(chunk)
            # The re-noising stream of the few-step sampler, per chunk too: no dependence on the rank.
            gen = torch.Generator().manual_seed(chunk_seed(self.plan.seed + 7919 * nfe, chunk))
            x = sample(model, z.to(self.device), nfe, style=self.cfg.sample_style,
                       y=None if y is None else y.to(self.device), generator=gen)
            out[chunk] = self.extractor(x).cpu() if torch.isfinite(x).all() else None
        return out

    def _gather(self, mine: dict) -> list[dict] | None:
        """Every rank's chunk statistics, on rank 0 (None elsewhere)."""
        if self.world_size == 1:
            return [mine]
        import torch.distributed as dist

        parts = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(mine, parts, dst=0)
        return parts

    @torch.no_grad()
    def score(self, model: torch.nn.Module, prefix: str = "") -> dict[str, float]:
        """FID at every NFE of the trial (on rank 0; {} elsewhere). Every rank must call this."""
        was_training = model.training
        model.eval()
        out = {}
        for nfe in self.cfg.nfe:
            parts = self._gather(self._chunk_features(model, nfe))
            if parts is None:
                continue
            name = nfe_metric(prefix + family(self.cfg), nfe)
            if any(s is None for part in parts for s in part.values()):
                out[name] = math.inf
            else:
                out[name] = reduce(parts, self.plan.n).frechet(self.reference)
        model.train(was_training)
        return out

    def description(self) -> str:
        """What the number is, logged as the family's metric_definition tag."""
        ex = self.extractor
        return (f"FID (Inception pool3, 2048-d) of {self.plan.n} samples per NFE vs the {self.reference_count} "
                f"held-out images; network {ex.name} sha256 {ex.sha256[:12]}; reference statistics "
                f"{self.entry.key[:12] if self.entry else 'n/a'}; labels {self.plan.label_sampling}; sampler "
                f"{self.cfg.sample_style} on the uniform time grid; generated over {self.world_size} worker(s) "
                f"in chunks by global sample index (the same value for any worker count)")
