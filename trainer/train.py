"""The training loop: (resume,) train with periodic evaluation and checkpoints, test, summarise.

The run's readers, sharded model, optimizer and pipeline are built by `trainer.build`; the model's
step is `trainer.step`, the best validation `trainer.best`, the run folder and resuming
`trainer.run_state`; evaluation lives in `trainer.evaluate`, timings / memory / summary.json in
`trainer.summary`, every collective in `trainer.distributed`. This module steps the run.

Steps run in *segments*: a segment ends where an evaluation, a checkpoint, the end of an epoch or
`--max-steps` falls. TorchRec's pipeline drains at the end of each segment, so at every such
boundary exactly `step` batches have been trained and the reader position saved in a checkpoint is
exact (nothing prefetched is lost or repeated on resume).
"""

from __future__ import annotations

import itertools
import logging
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from data_pipeline.batch import Batch
from data_pipeline.spec import DataError
from trainer import distributed as D
from trainer.best import BestTracker
from trainer.build import build
from trainer.checkpoint import BEST_DIR, CheckpointManager, rng_state, set_rng_state
from trainer.config import ConfigError, TrainConfig
from trainer.evaluate import EvalHistory, evaluate_split, write_predictions
from trainer.logging import RunLogger
from trainer.metrics import tail_rows
from trainer.optim import init_dense_state, load_scheduler_state, scheduler_state, scheduler_state_at
from trainer.run_state import claim_run, load_run_state
from trainer.step import NonFiniteLossError, StepOutput, seed_everything
from trainer.summary import (
    Throughput,
    Timer,
    build_summary,
    embedding_footprint_per_rank,
    peak_memory_per_rank,
    timed,
    write_summary,
    zch_summary,
)

log = logging.getLogger("trainer")


class Trainer:
    """Holds what one run builds. `run()` does everything; see the module docstring."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.env = env = D.init_distributed(cfg.device)
        self.out = Path(cfg.out)
        self.output = claim_run(cfg, env.is_main)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_everything(cfg.seed)  # same initial dense weights on every rank
        self.timer = Timer()
        b = build(cfg, env, self.timer)
        self.spec, self.train_reader, self.eval_readers = b.spec, b.train_reader, b.eval_readers
        self.positive_rate, self.buckets, self.item_counts = b.positive_rate, b.buckets, b.item_counts
        self.dmp, self.tables, self.plan_rows, self.total_steps = b.dmp, b.tables, b.plan_rows, b.total_steps
        self.optimizer, self.scheduler, self.lr_groups = b.optimizer, b.scheduler, b.lr_groups
        self.pipeline, self.pipeline_blocker = b.pipeline, b.pipeline_blocker
        self.ckpt = CheckpointManager(self.out, keep=cfg.checkpoint.keep, rank=env.rank)
        self.best_ckpt = CheckpointManager(self.out, keep=1, rank=env.rank, subdir=BEST_DIR)
        self.best = BestTracker(cfg.eval.metric, cfg.eval.patience)
        self.logger = RunLogger(
            self.out,
            enabled=env.is_main,
            tensorboard=cfg.logging.tensorboard,
            tensorboard_dir=cfg.logging.tensorboard_dir,
        )
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
        same_ranks = load_run_state(self.ckpt, path, state, self.env)
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
            item_counts=self.item_counts,
        )  # fmt: skip
        if self.pipeline:
            self.pipeline.attach(model)
        if predictions and self.env.is_main:
            path = self.out / "predictions" / predictions
            tail = tail_rows(preds.items, self.buckets, self.cfg.eval.tail_buckets)
            write_predictions(
                path, preds, with_users=bool(self.spec.user_id), with_items=bool(self.spec.item_id), tail=tail,
                item_counts=self.item_counts,
            )  # fmt: skip
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
        zch = zch_summary(self.dmp, env)  # the last weights' tables: test() may load the best ones
        test, test_last = self.test(epoch)
        wall_s = time.perf_counter() - t_start
        summary = build_summary(
            test=test, test_last=test_last, best=self.best.record(), train_positive_rate=self.positive_rate,
            valid=self.evals.split("valid"), steps=self.step, throughput=self.throughput, env=env,
            pipeline=self.pipeline is not None, pipeline_blocker=self.pipeline_blocker,
            peak_memory=peak_memory_per_rank(env.device), footprint=footprint,
            sharding_plan=self.plan_rows, wall_s=wall_s, config=cfg.to_dict(), dataset=self.spec.record(),
            zch=zch,
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
