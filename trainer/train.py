"""The training loop: build, (resume,) train with periodic evaluation and checkpoints, test, summarise.

Steps run in *segments*: a segment ends where an evaluation, a checkpoint, the end of an epoch or
`--max-steps` falls. TorchRec's pipeline drains at the end of each segment, so at every such
boundary exactly `step` batches have been trained and the reader position saved in a checkpoint is
exact (nothing prefetched is lost or repeated on resume).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import resource
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from data_pipeline.batch import Batch
from data_pipeline.reader import ParquetBatchReader
from data_pipeline.spec import DataError, DatasetSpec, apply_high_card
from trainer import distributed as D
from trainer.checkpoint import CheckpointError, CheckpointManager, rng_state, set_rng_state
from trainer.config import ConfigError, TrainConfig
from trainer.logging import RunLogger, write_json
from trainer.metrics import evaluate_predictions, item_counts, popularity_buckets
from trainer.optim import build_optimizer, init_dense_state, set_schedule_step

log = logging.getLogger("trainer")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class StepOutput:
    """What one forward returns next to the loss (all detached)."""

    loss: torch.Tensor
    """() total loss = bce + sum(aux)."""
    bce: torch.Tensor
    """() binary cross-entropy."""
    aux: dict[str, torch.Tensor]
    """Each regulariser (already weighted by the model)."""
    logits: torch.Tensor
    """(B,) logits."""


class TrainModule(nn.Module):
    """A zoo model plus the BCE loss: forward(batch) -> (loss, StepOutput), the shape
    `TrainPipelineSparseDist` expects. bf16 autocast wraps the model's forward on GPU."""

    def __init__(self, model: nn.Module, autocast: bool, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.autocast = autocast
        self.device_type = device_type

    def forward(self, batch: Batch) -> tuple[torch.Tensor, StepOutput]:
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(batch)
        logits = out.logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, batch.labels)
        aux = {name: value.float() for name, value in out.aux_losses.items()}
        loss = bce + sum(aux.values()) if aux else bce
        detached = StepOutput(
            loss.detach(), bce.detach(), {k: v.detach() for k, v in aux.items()}, logits.detach()
        )
        return loss, detached


@dataclass
class Timer:
    """Seconds spent waiting for data and in the optimizer step since the last reset."""

    data: float = 0.0
    optimizer: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def reset(self) -> None:
        self.data = self.optimizer = 0.0
        self.start = time.perf_counter()


class _TimedOptimizer:
    """The optimizer as the pipeline sees it: zero_grad / step, with the step timed."""

    def __init__(self, optimizer: torch.optim.Optimizer, timer: Timer) -> None:
        self.optimizer, self.timer = optimizer, timer

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None) -> None:
        t0 = time.perf_counter()
        self.optimizer.step()
        self.timer.optimizer += time.perf_counter() - t0


def _timed(batches: Iterable[Batch], timer: Timer) -> Iterator[Batch]:
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        timer.data += time.perf_counter() - t0
        yield batch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op)
    return t


def _all_gather_floats(values: list[float], device: torch.device) -> list[list[float]]:
    """[values of rank 0, values of rank 1, ...] (small float vectors)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [t.tolist()]
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [o.tolist() for o in out]


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


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return int(kb) * (1 if sys.platform == "darwin" else 1024)


# -------------------------------------------------------------------------------------------------
class Trainer:
    """Holds what one run builds. `run()` does everything; see the module docstring."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.env = D.init_distributed(cfg.device)
        env = self.env
        self.out = Path(cfg.out)
        if env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_everything(cfg.seed)  # same initial dense weights on every rank

        from store.models.zoo import build_model
        from store.sid import SidTable

        self.spec = apply_high_card(DatasetSpec.load(cfg.data), cfg.high_card)
        if cfg.drop.strip():
            self.spec = self.spec.without([f.strip() for f in cfg.drop.split(",") if f.strip()])
        self.sids = SidTable.load(cfg.sids, self.spec) if cfg.sids else None
        transform = None
        if cfg.model == "store":
            sids, spec = self.sids, self.spec
            transform = lambda batch: sids.transform(batch, spec)  # noqa: E731  (data-time SID lookup)
        reader_args = dict(
            rank=env.rank, world_size=env.world_size, seed=cfg.seed, num_workers=cfg.num_workers
        )
        self.train_reader = ParquetBatchReader(
            cfg.data, "train", cfg.batch_size, spec=self.spec, shuffle=True, drop_remainder=True,
            transform=transform, **reader_args,
        )  # fmt: skip
        eval_bs = cfg.eval.batch_size or cfg.batch_size
        self.eval_readers = {
            split: ParquetBatchReader(
                cfg.data,
                split,
                eval_bs,
                spec=self.spec,
                shuffle=False,
                drop_remainder=False,
                transform=transform,
                **reader_args,
            )  # fmt: skip
            for split in ("valid", "test")
        }
        if len(self.train_reader) == 0:
            raise ConfigError(
                f"--batch-size {cfg.batch_size}: the train split has {self.train_reader.index.num_rows} rows, "
                f"fewer than one batch per rank ({env.world_size} ranks)"
            )

        # Model on the meta device for the tables: DMP materialises only this rank's shards.
        model = build_model(cfg.model, self.spec, cfg.model_config, self.sids, device=torch.device("meta"))
        rotation_params = list(model.rotation_parameters())
        autocast = cfg.bf16 and env.device.type == "cuda"
        module = TrainModule(model, autocast, env.device.type)
        self.tables = D.embedding_tables(module)
        kinds = D.choose_sharding_types(
            self.tables, cfg.sharding.default, cfg.table_overrides(), env.world_size, env.device,
            cfg.sharding.replicate_max_rows,
        )  # fmt: skip
        self.dmp, plan = D.shard_model(module, env, kinds, cfg.optim.sparse, cfg.optim.sparse_lr)
        self.plan_rows = D.describe_plan(plan)
        steps_per_epoch = len(self.train_reader)
        self.total_steps = steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.optimizer, self.scheduler, self.lr_groups = build_optimizer(
            self.dmp, rotation_params, cfg.optim, self.total_steps
        )
        self.timer = Timer()
        self.pipeline = None
        self.pipeline_blocker = D.pipeline_blocker(self.dmp) if cfg.pipeline else None
        if self.pipeline_blocker and env.is_main:
            log.warning(
                "--pipeline: model %r cannot be fx-traced down to its embedding collections (%s); "
                "training without TorchRec's pipeline",
                cfg.model, self.pipeline_blocker,
            )  # fmt: skip
        if cfg.pipeline and not self.pipeline_blocker:
            from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

            self.pipeline = TrainPipelineSparseDist(
                self.dmp, _TimedOptimizer(self.optimizer, self.timer), env.device
            )
        self.ckpt = CheckpointManager(self.out, keep=cfg.checkpoint.keep, rank=env.rank)
        self.logger = RunLogger(
            self.out,
            enabled=env.is_main,
            tensorboard=cfg.logging.tensorboard,
            tensorboard_dir=cfg.logging.tensorboard_dir,
        )
        self.buckets = self._popularity_buckets()
        self.step = 0
        self.history: list[dict] = []

    # -- setup helpers -----------------------------------------------------------------------------
    def _popularity_buckets(self) -> torch.Tensor | None:
        """Item popularity buckets from the train split: rank 0 counts, every rank receives them.
        None without an item column (no tail-item AUC)."""
        if not self.spec.item_id:
            if self.env.is_main:
                log.info("the dataset has no item column: no tail-item AUC or popularity buckets")
            return None
        num_items = self.spec.item_table.num_items if self.spec.item_table else None
        num_items = num_items or self.spec.feature(self.spec.item_id).vocab_size
        counts = torch.zeros(num_items, dtype=torch.int64)
        if self.env.is_main:
            counts = item_counts(self.cfg.data, self.spec)
        if self.env.world_size > 1:
            counts = counts.to(self.env.device)
            dist.broadcast(counts, src=0)
            counts = counts.cpu()
        return popularity_buckets(counts, self.cfg.eval.popularity_buckets)

    def _state(self, batches_done: int) -> dict:
        """Everything a checkpoint holds, as tensors (model/optimizer shards stay sharded)."""
        reader = self.train_reader.state_dict(batches_done)
        return {
            "model": self.dmp.state_dict(),
            "optim": self.optimizer.state_dict(),
            "train": {"step": torch.tensor(self.step, dtype=torch.int64)},
            "reader": {k: torch.as_tensor(v) for k, v in reader.items()},
            "rng": {f"rank{self.env.rank}": rng_state()},
        }

    def save_checkpoint(self, batches_done: int) -> None:
        t0 = time.perf_counter()
        path = self.ckpt.save(self.step, self._state(batches_done))
        self.timer.start += time.perf_counter() - t0  # not training time
        if self.env.is_main:
            log.info("checkpoint step %d -> %s", self.step, path)

    def maybe_resume(self) -> bool:
        """Load the newest complete checkpoint in OUT (when --resume). Returns True if resumed."""
        if not self.cfg.resume:
            return False
        path = self.ckpt.latest()
        if path is None:
            if self.env.is_main:
                log.warning("--resume: no complete checkpoint in %s; starting from scratch", self.ckpt.root)
            return False
        init_dense_state(self.optimizer)  # before the weights: the dummy step may apply weight decay
        state = self._state(0)
        saved = CheckpointManager.keys(path)
        rng_key = f"rng.rank{self.env.rank}.torch"
        same_ranks = rng_key in saved and not any(
            k.startswith(f"rng.rank{self.env.world_size}.") for k in saved
        )
        if not same_ranks:
            del state["rng"]  # saved by another number of ranks: re-seed below instead
        try:
            self.ckpt.load(path, state)
        except CheckpointError:
            raise
        except Exception as e:  # DCP reports missing keys / shape mismatches as generic errors
            hint = ""
            if "Missing key" in str(e) and "optim." in str(e):
                hint = (
                    " -- a table changed between sharded (fused optimizer) and data_parallel (dense "
                    "optimizer); resume with the same --sharding.* flags"
                )
            raise CheckpointError(
                f"{path}: does not fit this model/run ({type(e).__name__}: {e}){hint}"
            ) from None
        self.optimizer.load_state_dict(state["optim"])
        self.step = int(state["train"]["step"])
        self.train_reader.load_state_dict(state["reader"])
        set_schedule_step(self.optimizer, self.scheduler, self.step)
        if same_ranks:
            set_rng_state(state["rng"][f"rank{self.env.rank}"])
        else:
            seed_everything(self.cfg.seed + 1_000_003 * self.env.rank + self.step)
        if self.env.is_main:
            log.info("resumed from %s at step %d (epoch %d)", path, self.step, self.train_reader.epoch)
        return True

    # -- steps -------------------------------------------------------------------------------------
    def _plain_steps(self, batches: Iterator[Batch]) -> Iterator[StepOutput]:
        """One step per batch without the pipeline: copy, forward, backward, optimizer."""
        for batch in batches:
            batch = batch.to(self.env.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            loss, out = self.dmp(batch)
            loss.backward()
            t0 = time.perf_counter()
            self.optimizer.step()
            self.timer.optimizer += time.perf_counter() - t0
            yield out

    def _pipelined_steps(self, batches: Iterator[Batch]) -> Iterator[StepOutput]:
        assert self.pipeline is not None
        while True:
            try:
                yield self.pipeline.progress(batches)
            except StopIteration:
                return

    def train_segment(self, batches: Iterator[Batch], n: int, bar: tqdm, acc: dict) -> None:
        """Train on the next `n` batches of `batches`; the pipeline (if any) ends drained.

        A non-finite loss is noted per step without a sync (the first such step, as a tensor) and
        acted on at each logging interval and at the end of the segment, i.e. before any evaluation
        or checkpoint: one collective there instead of one per step, and every rank stops together.
        """
        source = _timed(itertools.islice(batches, n), self.timer)
        steps = self._pipelined_steps(source) if self.pipeline else self._plain_steps(source)
        no_step = torch.tensor(float("inf"), dtype=torch.float64, device=self.env.device)
        first_bad = no_step.clone()
        for out in steps:
            self.scheduler.step()
            self.step += 1
            first_bad = torch.minimum(
                first_bad, torch.where(torch.isfinite(out.loss.detach()), no_step, float(self.step))
            )
            acc["loss"] += out.loss.detach().double()
            acc["bce"] += out.bce.detach().double()
            for k, v in out.aux.items():
                acc.setdefault(f"aux/{k}", torch.zeros((), dtype=torch.float64, device=v.device))
                acc[f"aux/{k}"] += v.double()
            acc["steps"] += 1
            bar.update(1)
            if self.step % self.cfg.logging.every_steps == 0:
                self._check_finite(first_bad)
                self.log_train(acc)
        self._check_finite(first_bad)

    def _check_finite(self, first_bad: torch.Tensor) -> None:
        """Raise NonFiniteLossError on every rank if any rank saw a non-finite training loss."""
        bad = first_bad.clone()
        if self.env.world_size > 1:
            _all_reduce(bad, dist.ReduceOp.MIN)
        if math.isfinite(float(bad)):
            raise NonFiniteLossError(
                f"training loss is not finite at step {int(bad)} (first such step on any rank): "
                "lower the learning rates (--optim.*_lr) or check the data"
            )

    def log_train(self, acc: dict) -> None:
        """Reduce the accumulated losses over ranks and log them with throughput and timings."""
        steps = int(acc["steps"])
        if steps == 0:
            return
        elapsed = time.perf_counter() - self.timer.start
        names = [k for k in acc if k != "steps"]
        vec = torch.stack([acc[k].to(self.env.device).double() for k in names]) / steps
        vec = _all_reduce(vec) / self.env.world_size
        samples = steps * self.cfg.batch_size
        per_rank = _all_gather_floats([samples / max(elapsed, 1e-9)], self.env.device)
        metrics: dict[str, float] = {f"train/{k}": float(v) for k, v in zip(names, vec)}
        for label, idx in self.lr_groups.items():
            metrics[f"lr/{label}"] = float(self.optimizer.param_groups[idx]["lr"])
        metrics["perf/samples_per_s"] = float(sum(r[0] for r in per_rank))
        for r, v in enumerate(per_rank):
            metrics[f"perf/samples_per_s/rank{r}"] = v[0]
        data_ms, opt_ms = 1000 * self.timer.data / steps, 1000 * self.timer.optimizer / steps
        metrics["time/step_ms"] = 1000 * elapsed / steps
        metrics["time/data_wait_ms"] = data_ms
        metrics["time/optimizer_ms"] = opt_ms
        metrics["time/forward_backward_ms"] = max(0.0, 1000 * elapsed / steps - data_ms - opt_ms)
        self.throughput.append((samples * self.env.world_size, elapsed))
        self.split_ms.append((steps, data_ms, metrics["time/forward_backward_ms"], opt_ms))
        self.logger.log(metrics, self.step, console=not self.cfg.logging.progress)
        for k in acc:
            acc[k] = torch.zeros((), dtype=torch.float64, device=self.env.device) if k != "steps" else 0
        self.timer.reset()

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, split: str) -> dict:
        """Metrics of `split` over all ranks. Uses the model outside the pipeline (drained here)."""
        model = self.pipeline.detach() if self.pipeline else self.dmp
        reader = self.eval_readers[split]
        reader.set_epoch(0)
        limit = self.cfg.eval.max_batches or len(reader)
        valid = min(reader.valid_rows, limit * reader.layout.batch_size)
        logits, labels, users, items = [], [], [], []
        model.eval()
        with torch.no_grad():
            for batch in itertools.islice(reader, limit):
                batch = batch.to(self.env.device)
                _, out = model(batch)
                logits.append(out.logits.float().cpu())
                labels.append(batch.labels.cpu())
                users.append(batch.user_ids.cpu())
                items.append(batch.item_ids.cpu())
        if not self.spec.user_id and self.env.is_main and not getattr(self, "_noted_no_user", False):
            log.info("the dataset has no user column: no GAUC")
            self._noted_no_user = True
        model.train()
        if self.pipeline:
            self.pipeline.attach(model)

        def cat(ts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
            return torch.cat(ts)[:valid] if ts else torch.zeros(0, dtype=dtype)

        result = evaluate_predictions(
            cat(logits, torch.float32), cat(labels, torch.float32),
            cat(users, torch.int64) if self.spec.user_id else None,  # no user column: no GAUC
            cat(items, torch.int64), self.buckets, self.cfg.eval.tail_buckets,
        )  # fmt: skip
        return result

    def eval_and_log(self, split: str, epoch: int) -> dict:
        t0 = time.perf_counter()
        result = self.evaluate(split)
        self.timer.start += time.perf_counter() - t0  # not training time
        entry = {"split": split, "step": self.step, "epoch": epoch, **result}
        self.history.append(entry)
        scalars = {f"{split}/{k}": v for k, v in result.items() if isinstance(v, float)}
        self.logger.log(scalars, self.step)
        if self.env.is_main:
            write_json(self.out / "metrics.json", self.history)
        return result

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, env = self.cfg, self.env
        t_start = time.perf_counter()
        if env.is_main:
            log.info(
                "sharding plan (%d ranks, %s):\n%s",
                env.world_size,
                env.backend,
                D.format_plan(self.plan_rows),
            )
            self.logger.text("config", "```\n" + str(cfg.to_dict()) + "\n```")
            self.logger.text("plan", "```\n" + D.format_plan(self.plan_rows) + "\n```")
        resumed = self.maybe_resume()
        if not resumed:
            seed_everything(cfg.seed + 1_000_003 * env.rank)  # per-rank dropout streams
        footprint = embedding_footprint(self.dmp, self.optimizer, [t.name for t in self.tables])
        per_rank_fp = _all_gather_floats(list(map(float, footprint.values())), env.device)
        for r, values in enumerate(per_rank_fp):
            self.logger.log({f"memory/embedding_bytes/rank{r}": values[1]}, self.step, console=False)

        self.throughput: list[tuple[int, float]] = []  # (samples over all ranks, seconds) per log interval
        self.split_ms: list[tuple[int, float, float, float]] = []  # (steps, data, fwd+bwd, optimizer ms)
        zero = torch.zeros((), dtype=torch.float64, device=env.device)
        acc: dict = {"loss": zero.clone(), "bce": zero.clone(), "steps": 0}
        every_eval, every_ckpt = cfg.eval.every_steps, cfg.checkpoint_interval
        last_saved = self.step if resumed else -1
        bar = tqdm(
            total=self.total_steps, initial=self.step, disable=not (env.is_main and cfg.logging.progress),
            desc="train", unit="step", dynamic_ncols=True,
        )  # fmt: skip
        fresh_epoch = not resumed
        epoch = self.train_reader.epoch
        done = 0  # batches trained in this pass over the reader (what its state_dict needs)
        self.timer.reset()
        while epoch < cfg.epochs and self.step < self.total_steps:
            if fresh_epoch:
                self.train_reader.set_epoch(epoch)
            fresh_epoch = True
            left = len(self.train_reader)
            batches = iter(self.train_reader)
            done = 0
            while done < left and self.step < self.total_steps:
                n = min(left - done, self.total_steps - self.step)
                for every in (every_eval, every_ckpt):
                    if every:
                        n = min(n, every - self.step % every)
                self.train_segment(batches, n, bar, acc)
                done += n
                if every_eval and self.step % every_eval == 0 and done < left:
                    self.eval_and_log("valid", epoch)
                if every_ckpt and self.step % every_ckpt == 0:
                    self.save_checkpoint(done)
                    last_saved = self.step
            if done >= left:
                if left > 0:  # (left == 0: resumed from a checkpoint taken at the end of this epoch)
                    self.eval_and_log("valid", epoch)
                epoch += 1
        bar.close()
        self.log_train(acc)
        if last_saved != self.step:
            self.save_checkpoint(done)
        test = self.evaluate("test")
        self.history.append({"split": "test", "step": self.step, "epoch": epoch, **test})
        self.logger.log({f"test/{k}": v for k, v in test.items() if isinstance(v, float)}, self.step)
        return self.summarise(test, footprint, per_rank_fp, time.perf_counter() - t_start)

    def summarise(self, test: dict, footprint: dict, per_rank_fp: list[list[float]], wall: float) -> dict:
        env = self.env
        peak = _all_gather_floats([float(peak_memory_bytes(env.device))], env.device)
        # The first logging interval holds start-up (pipeline fill, tracing, first allocations).
        steady = self.throughput[1:] if len(self.throughput) > 2 else self.throughput
        samples = sum(s for s, _ in steady)
        seconds = sum(t for _, t in steady)
        split = self.split_ms[1:] if len(self.split_ms) > 2 else self.split_ms
        n = sum(k for k, *_ in split) or 1
        step_ms = {
            name: sum(k * v[i] for k, *v in split) / n
            for i, name in enumerate(("data_wait", "forward_backward", "optimizer"))
        }
        import torchrec

        summary = {
            **{k: test[k] for k in ("auc", "gauc", "logloss", "tail_auc") if k in test},
            "test": test,
            "valid": [h for h in self.history if h["split"] == "valid"],
            "steps": self.step,
            "samples_per_s": samples / seconds if seconds else math.nan,
            "samples_per_s_per_rank": samples / seconds / env.world_size if seconds else math.nan,
            "step_time_ms_rank0": step_ms,
            "world_size": env.world_size,
            "pipeline": self.pipeline is not None,
            "pipeline_blocker": self.pipeline_blocker,
            "device": env.device.type,
            "peak_memory_bytes_per_rank": [int(p[0]) for p in peak],
            "embedding_params_per_rank": [int(v[0]) for v in per_rank_fp],
            "embedding_bytes_per_rank": [int(v[1]) for v in per_rank_fp],
            "embedding_optimizer_bytes_per_rank": [int(v[2]) for v in per_rank_fp],
            "sharding_plan": self.plan_rows,
            "wall_s": wall,
            "versions": {"torch": torch.__version__, "torchrec": torchrec.__version__},
            "config": self.cfg.to_dict(),
            "dataset": self.spec.record(),  # what a tokenizer reading this run's tables checks
        }
        if env.is_main:
            write_json(self.out / "metrics.json", self.history)
            write_json(self.out / "summary.json", summary)
            self.logger.hparams(
                {k: v for k, v in self.cfg.to_dict().items() if k not in ("data", "out", "config")},
                {k: summary[k] for k in ("auc", "gauc", "logloss", "samples_per_s") if k in summary},
            )
            shown = " ".join(  # gauc / tail_auc are absent without a user / item column
                f"{k}={summary[k]:.4f}" for k in ("auc", "gauc", "logloss", "tail_auc") if k in summary
            )
            log.info(
                "test %s | %.0f samples/s -> %s", shown, summary["samples_per_s"], self.out / "summary.json"
            )
        return summary

    def close(self) -> None:
        self.logger.close()


def train(cfg: TrainConfig) -> dict:
    """Run one training job (this process's part of it). Returns the summary."""
    trainer = None
    try:
        trainer = Trainer(cfg)
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.close()
        D.close_distributed()


__all__ = ["ConfigError", "DataError", "NonFiniteLossError", "TrainConfig", "Trainer", "train"]
