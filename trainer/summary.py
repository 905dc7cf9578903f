"""What a run reports about itself: step timings, throughput per logging interval, embedding and peak
memory per rank, and the closing OUT/summary.json.

Throughput and the step split (data wait / forward+backward / optimizer) are steady-state figures:
the first logging interval, which holds start-up (pipeline fill, tracing, first allocations), is left
out when there are more than two intervals.
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from data_pipeline.batch import Batch
from store.metrics import METRICS
from store.records import BestRecord, DatasetRef, EvalEntry, PlanEntry, RunConfig, RunSummary
from trainer import distributed as D
from trainer.logging import RunLogger, write_json

log = logging.getLogger(__name__)


# -- timing --------------------------------------------------------------------------------------
@dataclass
class Timer:
    """Seconds spent waiting for data and in the optimizer step since the last reset."""

    data: float = 0.0
    optimizer: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def reset(self) -> None:
        self.data = self.optimizer = 0.0
        self.start = time.perf_counter()


class TimedOptimizer:
    """The optimizer as the pipeline sees it: zero_grad / step, with the step timed."""

    def __init__(self, optimizer: torch.optim.Optimizer, timer: Timer) -> None:
        self.optimizer, self.timer = optimizer, timer

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None) -> None:
        t0 = time.perf_counter()
        self.optimizer.step()
        self.timer.optimizer += time.perf_counter() - t0


def timed(batches: Iterable[Batch], timer: Timer) -> Iterator[Batch]:
    """`batches`, with the time spent waiting for each added to `timer.data`."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        timer.data += time.perf_counter() - t0
        yield batch


class Throughput:
    """Samples/s and the step split, one entry per logging interval."""

    def __init__(self) -> None:
        self.intervals: list[tuple[int, float]] = []  # (samples over all ranks, seconds)
        self.split_ms: list[tuple[int, float, float, float]] = []  # (steps, data, fwd+bwd, optimizer ms)

    def end_interval(
        self, timer: Timer, elapsed: float, steps: int, samples: int, env: D.DistEnv
    ) -> dict[str, float]:
        """Record an interval of `steps` steps and `samples` samples per rank in `elapsed` seconds;
        -> its perf/ and time/ scalars (samples/s gathered from every rank)."""
        per_rank = D.all_gather_floats([samples / max(elapsed, 1e-9)], env.device)
        metrics: dict[str, float] = {"perf/samples_per_s": float(sum(r[0] for r in per_rank))}
        for r, v in enumerate(per_rank):
            metrics[f"perf/samples_per_s/rank{r}"] = v[0]
        data_ms, opt_ms = 1000 * timer.data / steps, 1000 * timer.optimizer / steps
        metrics["time/step_ms"] = 1000 * elapsed / steps
        metrics["time/data_wait_ms"] = data_ms
        metrics["time/optimizer_ms"] = opt_ms
        metrics["time/forward_backward_ms"] = max(0.0, 1000 * elapsed / steps - data_ms - opt_ms)
        self.intervals.append((samples * env.world_size, elapsed))
        self.split_ms.append((steps, data_ms, metrics["time/forward_backward_ms"], opt_ms))
        return metrics

    def samples_per_s(self) -> float:
        """Steady-state samples/s over all ranks (NaN before any interval)."""
        steady = self.intervals[1:] if len(self.intervals) > 2 else self.intervals
        samples, seconds = sum(s for s, _ in steady), sum(t for _, t in steady)
        return samples / seconds if seconds else math.nan

    def step_ms(self) -> dict[str, float]:
        """Steady-state milliseconds per step on this rank: data_wait, forward_backward, optimizer."""
        split = self.split_ms[1:] if len(self.split_ms) > 2 else self.split_ms
        n = sum(k for k, *_ in split) or 1
        return {
            name: sum(k * v[i] for k, *v in split) / n
            for i, name in enumerate(("data_wait", "forward_backward", "optimizer"))
        }


# -- memory --------------------------------------------------------------------------------------
def embedding_footprint(
    dmp: nn.Module, optimizer: torch.optim.Optimizer, tables: list[str]
) -> dict[str, int]:
    """This rank's embedding parameters and bytes (local shards + replicated tables), and optimizer bytes."""
    params = nbytes = opt_bytes = 0

    def local(t) -> list[torch.Tensor]:
        if hasattr(t, "local_shards"):
            return [s.tensor for s in t.local_shards()]
        if hasattr(t, "to_local"):
            return [t.to_local()]
        return [t]

    for key, value in dmp.state_dict().items():
        if any(key.endswith(f".{name}.weight") for name in tables):
            for t in local(value):
                params += t.numel()
                nbytes += t.numel() * t.element_size()
    for key, state in optimizer.state_dict()["state"].items():
        if any(key.endswith(f".{name}.weight") for name in tables):
            for value in state.values():
                for t in local(value):
                    opt_bytes += t.numel() * t.element_size()
    return {"embedding_params": params, "embedding_bytes": nbytes, "embedding_optimizer_bytes": opt_bytes}


def embedding_footprint_per_rank(
    dmp: nn.Module, optimizer: torch.optim.Optimizer, tables: list[str], device: torch.device
) -> dict[str, list[int]]:
    """`embedding_footprint` of every rank: {"<name>_per_rank": [rank 0, rank 1, ...]}."""
    mine = embedding_footprint(dmp, optimizer, tables)
    per_rank = D.all_gather_floats([float(v) for v in mine.values()], device)
    return {f"{name}_per_rank": [int(r[i]) for r in per_rank] for i, name in enumerate(mine)}


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated on `device`, or this process's peak resident memory on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return int(kb) * (1 if sys.platform == "darwin" else 1024)


def peak_memory_per_rank(device: torch.device) -> list[int]:
    return [int(p[0]) for p in D.all_gather_floats([float(peak_memory_bytes(device))], device)]


# -- managed-collision tables ----------------------------------------------------------------------
def zch_summary(dmp: nn.Module, env: D.DistEnv) -> dict[str, dict] | None:
    """{table: its ``store.models.zch.ZchCounts`` as a dict, summed over ranks (row-wise shards)} of
    the model's managed-collision tables (ID-ZCH), or None without any. Every rank calls it."""
    from store.models.zch import zch_counts

    counts = zch_counts(dmp)
    if not counts:
        return None
    fields = ("rows", "admitted", "admissions", "evicted", "occupied", "buffer_bytes")
    local = [float(-1 if getattr(c, f) is None else getattr(c, f)) for c in counts.values() for f in fields]
    ranks = D.all_gather_floats(local, env.device)
    out = {}
    for i, table in enumerate(counts):
        values = [[r[i * len(fields) + j] for r in ranks] for j in range(len(fields))]
        out[table] = {f: None if min(v) < 0 else int(sum(v)) for f, v in zip(fields, values)}
    return out


# -- the summary ---------------------------------------------------------------------------------


def build_summary(
    *,
    test: dict,
    test_last: dict,
    best: dict,
    train_positive_rate: float,
    valid: list[dict],
    steps: int,
    throughput: Throughput,
    env: D.DistEnv,
    pipeline: bool,
    pipeline_blocker: str | None,
    peak_memory: list[int],
    footprint: dict[str, list[int]],
    sharding_plan: list[dict],
    wall_s: float,
    config: dict,
    dataset: dict,
    zch: dict[str, dict] | None = None,
) -> dict:
    """The content of OUT/summary.json (`RunSummary.to_dict`), with every registered metric's test score
    (store.metrics.METRICS; gauc / tail_auc absent without a user / item column) lifted to its top
    level. test: the reported weights' test metrics (the best validation's with
    --eval.restore_best), test_last: the last weights'; best: `BestTracker.record`;
    footprint: `embedding_footprint_per_rank`; dataset: the spec's record (what a tokenizer reading
    this run's tables checks); zch: `zch_summary`."""
    import torchrec

    samples_per_s = throughput.samples_per_s()
    test_entry = EvalEntry.from_dict(test)
    return RunSummary(
        scores=test_entry.scores(),
        test=test_entry,
        test_last=EvalEntry.from_dict(test_last),
        best=BestRecord.from_dict(best),
        best_epoch=best["epoch"],
        train_positive_rate=train_positive_rate,
        valid=[EvalEntry.from_dict(e) for e in valid],
        steps=steps,
        samples_per_s=samples_per_s,
        samples_per_s_per_rank=samples_per_s / env.world_size,
        step_time_ms_rank0=throughput.step_ms(),
        world_size=env.world_size,
        pipeline=pipeline,
        pipeline_blocker=pipeline_blocker,
        device=env.device.type,
        peak_memory_bytes_per_rank=peak_memory,
        embedding_params_per_rank=footprint["embedding_params_per_rank"],
        embedding_bytes_per_rank=footprint["embedding_bytes_per_rank"],
        embedding_optimizer_bytes_per_rank=footprint["embedding_optimizer_bytes_per_rank"],
        sharding_plan=[PlanEntry.from_dict(p) for p in sharding_plan],
        wall_s=wall_s,
        versions={"torch": torch.__version__, "torchrec": torchrec.__version__},
        config=RunConfig.from_dict(config),
        dataset=DatasetRef.from_dict(dataset),
        zch=zch,
    ).to_dict()


def write_summary(summary: dict, out: Path, logger: RunLogger) -> None:
    """On rank 0: OUT/summary.json, the TensorBoard hparams entry and the closing console line."""
    write_json(out / "summary.json", summary)
    logger.hparams(
        {k: v for k, v in summary["config"].items() if k not in ("data", "out", "config")},
        {k: summary[k] for k in (*METRICS, "samples_per_s") if k in summary},
    )
    shown = " ".join(f"{k}={summary[k]:.4f}" for k in METRICS if k in summary)
    log.info("test %s | %.0f samples/s -> %s", shown, summary["samples_per_s"], out / "summary.json")
