"""The training loop: build, (resume,) train with periodic evaluation and checkpoints, test, summarise.

Evaluation lives in `trainer.evaluate`, timings / memory / summary.json in `trainer.summary`, every
collective in `trainer.distributed`; this module builds the run and steps it.

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
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from data_pipeline import outdir
from data_pipeline.batch import Batch
from data_pipeline.reader import ParquetBatchReader
from data_pipeline.spec import DataError, DatasetSpec, apply_high_card, feature_list
from store import metrics
from trainer import distributed as D
from trainer.checkpoint import (
    BEST_DIR,
    CHECKPOINT_DIR,
    CheckpointError,
    CheckpointManager,
    rng_state,
    set_rng_state,
)
from trainer.config import RUN_ENTRIES, ConfigError, TrainConfig
from trainer.evaluate import EvalHistory, evaluate_split, item_popularity_buckets, write_predictions
from trainer.logging import RunLogger
from trainer.metrics import tail_rows, train_split_stats
from trainer.optim import (
    build_optimizer,
    init_dense_state,
    load_scheduler_state,
    scheduler_state,
    scheduler_state_at,
)
from trainer.preflight import check_splits
from trainer.summary import (
    Throughput,
    TimedOptimizer,
    Timer,
    build_summary,
    embedding_footprint_per_rank,
    peak_memory_per_rank,
    timed,
    write_summary,
)

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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_metric(name: str, spec: DatasetSpec, data: str) -> None:
    """ConfigError naming --eval.metric when the metric reads a column the dataset lacks (GAUC without
    a user column, tail AUC without an item column): it would never be defined, so never improve."""
    columns = {"users": ("user", spec.user_id), "tail": ("item", spec.item_id)}
    lacking = [columns[need][0] for need in metrics.get(name).needs if not columns[need][1]]
    if lacking:
        raise ConfigError(
            f"--eval.metric {name} needs a {' and '.join(lacking)} column; dataset {data} has none"
        )


class BestTracker:
    """The best validation so far on --eval.metric and the early-stopping count, saved in checkpoints.

    ``update(result, step, epoch)`` -> True when `result` is better than every earlier validation
    (strictly: ties keep the earlier, shorter-trained weights). ``stopped`` turns True once
    ``patience`` (> 0) validations in a row brought no improvement.
    """

    def __init__(self, metric: str, patience: int) -> None:
        self.metric, self.patience = metric, patience
        self.higher_is_better = metrics.get(metric).higher_is_better
        self.value, self.step, self.epoch, self.bad, self.stopped = math.nan, -1, -1, 0, False

    def update(self, result: dict, step: int, epoch: int) -> bool:
        value = float(result.get(self.metric, math.nan))
        if math.isnan(value):
            return False  # e.g. AUC of a split with one class: says nothing
        better = self.step < 0 or (value > self.value if self.higher_is_better else value < self.value)
        if better:
            self.value, self.step, self.epoch, self.bad = value, step, epoch, 0
            return True
        self.bad += 1
        self.stopped = self.patience > 0 and self.bad >= self.patience
        return False

    def record(self) -> dict:
        """For summary.json: the best validation's metric, value, epoch (as in metrics.json) and step."""
        return {
            "metric": self.metric,
            "value": None if self.step < 0 else self.value,
            "epoch": None if self.step < 0 else self.epoch,
            "step": None if self.step < 0 else self.step,
            "early_stopped": self.stopped,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "best_value": torch.tensor(self.value, dtype=torch.float64),
            "best_step": torch.tensor(self.step, dtype=torch.int64),
            "best_epoch": torch.tensor(self.epoch, dtype=torch.int64),
            "best_bad": torch.tensor(self.bad, dtype=torch.int64),
            "best_stopped": torch.tensor(int(self.stopped), dtype=torch.int64),
        }

    def load_state_dict(self, state: dict) -> None:
        if "best_step" not in state:
            return
        self.value, self.step = float(state["best_value"]), int(state["best_step"])
        self.epoch, self.bad = int(state["best_epoch"]), int(state["best_bad"])
        self.stopped = bool(int(state["best_stopped"]))


def claim_run(cfg: TrainConfig, is_main: bool) -> outdir.Output:
    """Take --out for this run (`data_pipeline.outdir.claim`): a folder holding an earlier run is refused
    (exit 2) unless --resume (continued: exit 4 when its data, SID table or model changed since) or
    --overwrite (its files removed, the user's kept); the run's inputs are recorded there."""
    kw = dict(
        overwrite=cfg.overwrite, resume=cfg.resume, local=True, legacy=("summary.json", CHECKPOINT_DIR),
        owned=RUN_ENTRIES, label="trainer run", hint="--resume to continue it",
    )  # fmt: skip
    if not is_main:  # every rank decides on the folder as it is before the main rank changes it
        outdir.claim(cfg.out, "train", write=False, clear=False, **kw)
    D.barrier()
    output = outdir.claim(cfg.out, "train", write=is_main, **kw)
    inputs = cfg.inputs()
    before = (output.previous or {}).get("inputs", {})
    if cfg.resume and before.get("checkpoint"):
        changed = outdir.differences(before["checkpoint"], inputs["checkpoint"])
        if changed:
            was = before.get("paths", {})
            raise CheckpointError(
                f"--resume: the run in {cfg.out} was trained on other inputs ({'; '.join(changed)}; it used "
                f"--data {was.get('data')!r}, --sids {was.get('sids')!r}); resume with those, or pass "
                "--overwrite to start a new run there"
            )
    output.set_inputs(inputs)
    output.add(*RUN_ENTRIES)
    D.barrier()  # the earlier run's files are gone before any rank writes
    return output


# -------------------------------------------------------------------------------------------------
class Trainer:
    """Holds what one run builds. `run()` does everything; see the module docstring."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.env = D.init_distributed(cfg.device)
        env = self.env
        self.out = Path(cfg.out)
        self.output = claim_run(cfg, env.is_main)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_everything(cfg.seed)  # same initial dense weights on every rank

        from store.models.layers import init_output_bias
        from store.models.zoo import batch_transform, build_model, rotation_parameters
        from store.sid import SidTable

        self.spec = apply_high_card(DatasetSpec.load(cfg.data), cfg.high_card)
        if feature_list(cfg.drop):
            self.spec = self.spec.without(feature_list(cfg.drop))
        self.sids = SidTable.load(cfg.sids, self.spec) if cfg.sids else None
        check_metric(cfg.eval.metric, self.spec, cfg.data)
        transform = batch_transform(cfg.model, self.spec, self.sids)  # STORE's data-time SID lookup
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
        check_splits(self.spec, {"train": self.train_reader, **self.eval_readers})  # before any step

        # Model on the meta device for the tables: DMP materialises only this rank's shards.
        model = build_model(cfg.model, self.spec, cfg.model_config, self.sids, device=torch.device("meta"))
        # one pass over the train split on rank 0: its click rate now, its item popularity below
        train_stats = train_split_stats(cfg.data, self.spec) if env.is_main else None
        rate = torch.tensor(
            [train_stats.positive_rate if train_stats is not None else 0.0], dtype=torch.float64
        )
        self.positive_rate = float(D.broadcast_from_main(rate, env.device)[0])
        init_output_bias(model, self.positive_rate)  # start at the train click rate, not at p = 0.5
        rotation_params = rotation_parameters(model)
        autocast = cfg.bf16 and env.device.type == "cuda"
        module = TrainModule(model, autocast, env.device.type)
        self.tables = D.embedding_tables(module)
        kinds = D.choose_sharding_types(
            self.tables, cfg.sharding.default, cfg.table_overrides(), env.world_size, env.device,
            cfg.sharding.replicate_max_rows,
        )  # fmt: skip
        self.dmp, plan = D.shard_model(
            module, env, kinds, cfg.optim.sparse, cfg.optim.sparse_lr, cfg.optim.embedding_weight_decay
        )
        self.plan_rows = D.describe_plan(plan)
        steps_per_epoch = len(self.train_reader)
        self.total_steps = steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.optimizer, self.scheduler, self.lr_groups = build_optimizer(
            self.dmp, rotation_params, cfg.optim, self.total_steps, {t.name for t in self.tables}
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
                self.dmp, TimedOptimizer(self.optimizer, self.timer), env.device
            )
        self.ckpt = CheckpointManager(self.out, keep=cfg.checkpoint.keep, rank=env.rank)
        self.best_ckpt = CheckpointManager(self.out, keep=1, rank=env.rank, subdir=BEST_DIR)
        self.best = BestTracker(cfg.eval.metric, cfg.eval.patience)
        self.logger = RunLogger(
            self.out,
            enabled=env.is_main,
            tensorboard=cfg.logging.tensorboard,
            tensorboard_dir=cfg.logging.tensorboard_dir,
        )
        counts = train_stats.item_counts if train_stats is not None else None
        self.buckets = item_popularity_buckets(counts, self.spec, cfg.eval.popularity_buckets, env)
        if not self.spec.user_id and env.is_main:
            log.info("the dataset has no user column: no GAUC")
        self.evals = EvalHistory(self.logger, self.out / "metrics.json", write=env.is_main)
        self.throughput = Throughput()
        self.step = 0

    # -- checkpoints -------------------------------------------------------------------------------
    def _state(self, batches_done: int) -> dict:
        """Everything a checkpoint holds, as tensors (model/optimizer shards stay sharded)."""
        reader = self.train_reader.state_dict(batches_done)
        return {
            "model": self.dmp.state_dict(),
            "optim": self.optimizer.state_dict(),
            "train": {"step": torch.tensor(self.step, dtype=torch.int64), **self.best.state_dict()},
            "scheduler": scheduler_state(self.scheduler),
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
        if "scheduler.last_epoch" not in saved:
            del state["scheduler"]  # written before the scheduler was saved: its position is the step
        if "train.best_step" not in saved:  # written before early stopping: no best weights kept
            state["train"] = {"step": state["train"]["step"]}
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
        self.best.load_state_dict(state["train"])
        self.evals.restore(self.step)
        self.train_reader.load_state_dict(state["reader"])
        load_scheduler_state(self.scheduler, state.get("scheduler", scheduler_state_at(self.step)))
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
        source = timed(itertools.islice(batches, n), self.timer)
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
        bad = D.all_reduce(first_bad.clone(), "min")
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
        vec = D.all_reduce(vec) / self.env.world_size
        metrics: dict[str, float] = {f"train/{k}": float(v) for k, v in zip(names, vec)}
        for label, idx in self.lr_groups.items():
            metrics[f"lr/{label}"] = float(self.optimizer.param_groups[idx]["lr"])
        samples = steps * self.cfg.batch_size
        metrics.update(self.throughput.end_interval(self.timer, elapsed, steps, samples, self.env))
        self.logger.log(metrics, self.step, console=not self.cfg.logging.progress)
        for k in acc:
            acc[k] = torch.zeros((), dtype=torch.float64, device=self.env.device) if k != "steps" else 0
        self.timer.reset()

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, split: str, epoch: int, record_as: str = "", predictions: str = "") -> dict:
        """Metrics of `split` over all ranks, recorded in the history (as `record_as`, default the
        split's name); with `predictions`, rank 0 also writes them to OUT/predictions/<predictions>.
        The model is taken out of the pipeline (drained at a segment's end) for it; the time is not
        counted as training time."""
        t0 = time.perf_counter()
        model = self.pipeline.detach() if self.pipeline else self.dmp
        result, preds = evaluate_split(
            model, self.eval_readers[split], self.env.device, max_batches=self.cfg.eval.max_batches,
            with_users=bool(self.spec.user_id), buckets=self.buckets, tail_buckets=self.cfg.eval.tail_buckets,
        )  # fmt: skip
        if self.pipeline:
            self.pipeline.attach(model)
        if predictions and self.env.is_main:
            path = self.out / "predictions" / predictions
            tail = tail_rows(preds.items, self.buckets, self.cfg.eval.tail_buckets)
            write_predictions(
                path, preds, with_users=bool(self.spec.user_id), with_items=bool(self.spec.item_id), tail=tail
            )
        self.timer.start += time.perf_counter() - t0
        self.evals.record(record_as or split, self.step, epoch, result)
        return result

    def validate(self, epoch: int) -> None:
        """Evaluate the validation split; keep the weights in OUT/best/ when --eval.metric improved, and
        stop the run (`self.best.stopped`) after --eval.patience validations without improvement."""
        result = self.evaluate("valid", epoch)
        if self.best.update(result, self.step, epoch):
            t0 = time.perf_counter()
            self.best_ckpt.save(self.step, {"model": self.dmp.state_dict()})
            self.timer.start += time.perf_counter() - t0  # not training time
        elif self.best.stopped and self.env.is_main:
            log.info(
                "early stop at step %d: no better valid %s in %d validations (best %.4f at epoch %d, step %d)",
                self.step, self.best.metric, self.best.bad, self.best.value, self.best.epoch, self.best.step,
            )  # fmt: skip

    def test(self, epoch: int) -> tuple[dict, dict]:
        """(metrics of the reported weights, metrics of the last weights) on the test split.

        The reported weights are the best validation's (--eval.restore_best, when a validation ran and
        a later step changed the weights), loaded back from OUT/best/; their predictions go to
        OUT/predictions/test.parquet."""
        restore = self.cfg.eval.restore_best and self.best.step >= 0 and self.best.step != self.step
        if not restore:
            test = self.evaluate("test", epoch, predictions="test.parquet")
            return test, test
        last = self.evaluate("test", epoch, record_as="test_last")
        path = self.best_ckpt.path(self.best.step)
        state = {"model": self.dmp.state_dict()}
        self.best_ckpt.load(path, state)
        if self.env.is_main:
            log.info("test with the best valid %s (epoch %d, step %d) from %s", self.best.metric,
                     self.best.epoch, self.best.step, path)  # fmt: skip
        return self.evaluate("test", epoch, predictions="test.parquet"), last

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
            if env.is_main and self.best_ckpt.root.exists():  # a previous run's best weights
                shutil.rmtree(self.best_ckpt.root)
        footprint = embedding_footprint_per_rank(
            self.dmp, self.optimizer, [t.name for t in self.tables], env.device
        )
        for r, nbytes in enumerate(footprint["embedding_bytes_per_rank"]):
            self.logger.log({f"memory/embedding_bytes/rank{r}": nbytes}, self.step, console=False)

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
        while epoch < cfg.epochs and self.step < self.total_steps and not self.best.stopped:
            if fresh_epoch:
                self.train_reader.set_epoch(epoch)
            fresh_epoch = True
            left = len(self.train_reader)
            batches = iter(self.train_reader)
            done = 0
            while done < left and self.step < self.total_steps and not self.best.stopped:
                n = min(left - done, self.total_steps - self.step)
                for every in (every_eval, every_ckpt):
                    if every:
                        n = min(n, every - self.step % every)
                self.train_segment(batches, n, bar, acc)
                done += n
                if every_eval and self.step % every_eval == 0 and done < left:
                    self.validate(epoch)
                if every_ckpt and self.step % every_ckpt == 0:
                    self.save_checkpoint(done)
                    last_saved = self.step
            if done >= left:
                if left > 0:  # (left == 0: resumed from a checkpoint taken at the end of this epoch)
                    self.validate(epoch)
                epoch += 1
        bar.close()
        self.log_train(acc)
        if last_saved != self.step:
            self.save_checkpoint(done)
        test, test_last = self.test(epoch)
        wall_s = time.perf_counter() - t_start
        summary = build_summary(
            test=test, test_last=test_last, best=self.best.record(), train_positive_rate=self.positive_rate,
            valid=self.evals.split("valid"), steps=self.step, throughput=self.throughput, env=env,
            pipeline=self.pipeline is not None, pipeline_blocker=self.pipeline_blocker,
            peak_memory=peak_memory_per_rank(env.device), footprint=footprint,
            sharding_plan=self.plan_rows, wall_s=wall_s, config=cfg.to_dict(), dataset=self.spec.record(),
        )  # fmt: skip
        if env.is_main:
            write_summary(summary, self.out, self.logger)
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
