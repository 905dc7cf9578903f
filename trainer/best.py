"""Bookkeeping of the validation metric (--eval.metric): whether the dataset can define it
(`check_metric`), and the best validation so far with the early-stopping count (`BestTracker`)."""

from __future__ import annotations

import math

import torch

from data_pipeline.spec import DatasetSpec
from store import metrics
from trainer.config import ConfigError


def check_metric(name: str, spec: DatasetSpec, data: str) -> None:
    """ConfigError naming --eval.metric when the metric reads a column the dataset lacks (GAUC without
    a user column, tail or slice AUC without an item column): it would never be defined, so never improve."""
    columns = {
        "users": ("user", spec.user_id),
        "tail": ("item", spec.item_id),
        "item_slice": ("item", spec.item_id),
    }
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
        self.direction = metrics.get(metric)  # its Metric.better says which way is better
        self.value, self.step, self.epoch, self.bad, self.stopped = math.nan, -1, -1, 0, False

    def update(self, result: dict, step: int, epoch: int) -> bool:
        value = float(result.get(self.metric, math.nan))
        if math.isnan(value):
            return False  # e.g. AUC of a split with one class: says nothing
        better = self.step < 0 or self.direction.better(value, self.value)
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
