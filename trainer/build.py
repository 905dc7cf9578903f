"""What one run trains and reads, built from its config: the dataset's readers, the sharded model
(DMP), the optimizer and LR schedule, TorchRec's train pipeline when it applies, and the train-split
statistics the model and the metrics start from."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from data_pipeline.reader import ParquetBatchReader
from data_pipeline.spec import DatasetSpec, apply_high_card, feature_list
from trainer import distributed as D
from trainer.best import check_metric
from trainer.config import ConfigError, TrainConfig
from trainer.evaluate import item_train_counts
from trainer.metrics import popularity_buckets, train_split_stats
from trainer.optim import build_optimizer
from trainer.preflight import check_splits
from trainer.step import TrainModule
from trainer.summary import TimedOptimizer, Timer

if TYPE_CHECKING:
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
    from torchrec.optim.keyed import CombinedOptimizer

log = logging.getLogger("trainer")


@dataclass
class Built:
    """What `build` returns."""

    spec: DatasetSpec
    """The dataset's spec, with --high-card and --drop applied."""
    train_reader: ParquetBatchReader
    eval_readers: dict[str, ParquetBatchReader]
    """The valid and test splits' readers."""
    positive_rate: float
    """The train split's click rate (the output bias starts there)."""
    buckets: torch.Tensor | None
    """Popularity bucket per item (None without an item column)."""
    item_counts: torch.Tensor | None
    """Train rows per item (None without an item column): the frequency slices."""
    dmp: nn.Module
    """The `TrainModule`, sharded by TorchRec's DistributedModelParallel."""
    tables: list[D.TableInfo]
    plan_rows: list[dict]
    """The sharding plan, one row per table (`distributed.describe_plan`)."""
    total_steps: int
    """Steps of the whole run: --epochs passes over the train split, at most --max-steps."""
    optimizer: CombinedOptimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    lr_groups: dict[str, int]
    """{label: index of its param group}, the learning rates logged."""
    pipeline: TrainPipelineSparseDist | None
    """TorchRec's TrainPipelineSparseDist, or None (--no-pipeline, or the model cannot be traced)."""
    pipeline_blocker: str | None
    """Why --pipeline could not be used, or None."""


def build(cfg: TrainConfig, env: D.DistEnv, timer: Timer) -> Built:
    """Readers, sharded model, optimizer and pipeline of the run `cfg`, on this rank of `env`.

    The dataset is checked before any model is built (ConfigError / DataError). The optimizer's time
    inside the pipeline is counted in `timer`. The dense weights are initialised here, from the
    process's RNG as the caller seeded it. Every rank calls this (it shards the model and broadcasts
    rank 0's train-split statistics)."""
    from store.models.layers import init_output_bias
    from store.models.zoo import batch_transform, build_model, rotation_parameters
    from store.sid import SidTable

    spec = apply_high_card(DatasetSpec.load(cfg.data), cfg.high_card)
    if feature_list(cfg.drop):
        spec = spec.without(feature_list(cfg.drop))
    sids = SidTable.load(cfg.sids, spec) if cfg.sids else None
    if sids is not None and sids.num_folds:
        missing = [k for k in sids.fold_keys if k not in spec.sparse_names]
        if missing:
            raise ConfigError(
                f"--sids {cfg.sids}: its out-of-fold codes are assigned by features {missing}, which this run "
                "drops (--drop); tokenize without them, or train without --drop"
            )
    check_metric(cfg.eval.metric, spec, cfg.data)
    transform = batch_transform(cfg.model, spec, sids, cfg.model_config)  # e.g. STORE's SID lookup
    # train rows take their out-of-fold SIDs where the table has them (store.sid.row_folds)
    train_transform = batch_transform(cfg.model, spec, sids, cfg.model_config, train=True)
    reader_args = dict(rank=env.rank, world_size=env.world_size, seed=cfg.seed, num_workers=cfg.num_workers)
    train_reader = ParquetBatchReader(
        cfg.data, "train", cfg.batch_size, spec=spec, shuffle=True, drop_remainder=True,
        transform=train_transform, **reader_args,
    )  # fmt: skip
    eval_bs = cfg.eval.batch_size or cfg.batch_size
    eval_readers = {
        split: ParquetBatchReader(
            cfg.data,
            split,
            eval_bs,
            spec=spec,
            shuffle=False,
            drop_remainder=False,
            transform=transform,
            **reader_args,
        )
        for split in ("valid", "test")
    }
    if len(train_reader) == 0:
        raise ConfigError(
            f"--batch-size {cfg.batch_size}: the train split has {train_reader.index.num_rows} rows, "
            f"fewer than one batch per rank ({env.world_size} ranks)"
        )
    check_splits(spec, {"train": train_reader, **eval_readers})  # before any step

    # Model on the meta device for the tables: DMP materialises only this rank's shards.
    model = build_model(cfg.model, spec, cfg.model_config, sids, device=torch.device("meta"))
    # one pass over the train split on rank 0: its click rate now, its item popularity below
    train_stats = train_split_stats(cfg.data, spec) if env.is_main else None
    rate = torch.tensor([train_stats.positive_rate if train_stats is not None else 0.0], dtype=torch.float64)
    positive_rate = float(D.broadcast_from_main(rate, env.device)[0])
    init_output_bias(model, positive_rate)  # start at the train click rate, not at p = 0.5
    rotation_params = rotation_parameters(model)
    autocast = cfg.bf16 and env.device.type == "cuda"
    module = TrainModule(model, autocast, env.device.type)
    tables = D.embedding_tables(module)
    kinds = D.choose_sharding_types(
        tables, cfg.sharding.default, cfg.table_overrides(), env.world_size, env.device,
        cfg.sharding.replicate_max_rows,
    )  # fmt: skip
    dmp, plan = D.shard_model(
        module, env, kinds, cfg.optim.sparse, cfg.optim.sparse_lr, cfg.optim.embedding_weight_decay
    )
    plan_rows = D.describe_plan(plan)
    total_steps = len(train_reader) * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    optimizer, scheduler, lr_groups = build_optimizer(
        dmp, rotation_params, cfg.optim, total_steps, {t.name for t in tables}
    )
    pipeline = None
    blocker = D.pipeline_blocker(dmp) if cfg.pipeline else None
    if blocker and env.is_main:
        log.warning(
            "--pipeline: model %r cannot be fx-traced down to its embedding collections (%s); "
            "training without TorchRec's pipeline",
            cfg.model, blocker,
        )  # fmt: skip
    if cfg.pipeline and not blocker:
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

        pipeline = TrainPipelineSparseDist(dmp, TimedOptimizer(optimizer, timer), env.device)
    counts = item_train_counts(train_stats.item_counts if train_stats is not None else None, spec, env)
    buckets = popularity_buckets(counts, cfg.eval.popularity_buckets) if counts is not None else None
    if not spec.user_id and env.is_main:
        log.info("the dataset has no user column: no GAUC")
    return Built(
        spec=spec, train_reader=train_reader, eval_readers=eval_readers, positive_rate=positive_rate,
        buckets=buckets, item_counts=counts, dmp=dmp, tables=tables, plan_rows=plan_rows, total_steps=total_steps,
        optimizer=optimizer, scheduler=scheduler, lr_groups=lr_groups, pipeline=pipeline,
        pipeline_blocker=blocker,
    )  # fmt: skip
