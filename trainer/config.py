"""Trainer configuration: typed dataclasses, a TOML file, and CLI flags built from them by tyro.

Precedence: dataclass defaults < ``--config FILE.toml`` < command-line flags. Top-level fields are
flags of their own (``--data``, ``--batch-size``, ``--pipeline/--no-pipeline``); a group's fields are
``--<group>.<field>`` (``--optim.dense_lr 3e-4``, ``--model.embedding_dim 32``, ``--logging.progress
false``; see ``data_pipeline.cli`` for the spellings). In TOML the same names: top-level keys and one
table per group; the model name is ``model = "store"`` or ``[model] name = "store"``. Every field's
docstring is its ``--help``. `TrainConfig.validate` raises `ConfigError` naming the flag, the value
and the rule.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import tyro

from data_pipeline import cli, fs
from data_pipeline.cli import ConfigError
from store.metrics import METRICS
from store.models import registry
from store.models.config import ModelConfig

DESCRIPTION = "Train a model of the zoo on a parquet dataset (one process, or many under torchrun)."
SPARSE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "adam", "sgd")
DENSE_OPTIMIZERS = ("adam", "adamw", "sgd")
DECAYS = ("none", "linear", "cosine")
DEVICES = ("auto", "cpu", "cuda")

BoolValues = tyro.conf.FlagConversionOff
"""A group's booleans take a value (``--logging.progress false``); top-level ones are flags."""


@dataclass
class OptimConfig:
    """Optimizers and the learning-rate schedule."""

    sparse: str = "rowwise_adagrad"
    """Embedding optimizer, fused into the backward by TorchRec: rowwise_adagrad, adagrad, adam or sgd."""
    sparse_lr: float | None = None
    """Learning rate of the embedding tables (default: the model's, 0.05; FM and DeepFM 0.02: each
    model's ModelSpec.sparse_lr)."""
    dense: str = "adam"
    """Optimizer of the dense (non-embedding) parameters: adam, adamw or sgd."""
    dense_lr: float = 1e-3
    """Learning rate of the dense parameters."""
    weight_decay: float = 0.0
    """Weight decay of the dense optimizer."""
    embedding_weight_decay: float = 1e-4
    """L2 penalty of the embedding tables (raw-ID tables and SID codebooks alike), on the rows each batch
    touches: FBGEMM's fused optimizer (its L2 mode) for sharded tables, the same rule before each
    step of the replicated tables' optimizer (docs/recipe.md: how the default was chosen)."""
    rotation_lr: float = 1e-3
    """Learning rate of STORE's rotation matrices R (their own optimizer, same type as --optim.dense)."""
    rotation_every: int = 1
    """Alternating optimisation: R moves on every N-th step only (1: every step, jointly with the network)."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up from 0 over this many steps (all optimizers)."""
    decay: str = "none"
    """Decay after warm-up until the last step: none, linear or cosine."""
    min_lr_ratio: float = 0.0
    """Decay ends at this fraction of each base learning rate."""


@dataclass
class EvalConfig:
    """Evaluation on the validation split during training and on the test split at the end."""

    every_steps: int = 0
    """Evaluate on the validation split every N steps (0: only at the end of each epoch)."""
    batch_size: int = 0
    """Evaluation batch size (0: the training batch size)."""
    max_batches: int = 0
    """Evaluate on at most this many batches per rank (0: the whole split)."""
    popularity_buckets: int = 10
    """Items are bucketed by train impressions into this many equal parts of the catalog."""
    tail_buckets: int = 5
    """tail_auc is the AUC on items of the least popular tail_buckets buckets."""
    metric: str = "auc"
    """Validation metric that picks the best weights and stops early: a metric of store.metrics.METRICS
    (auc, gauc, logloss, tail_auc), in its direction (higher or lower is better)."""
    patience: int = 0
    """Stop training after this many validations in a row without a better --eval.metric (0: never stop
    early)."""
    restore_best: bool = True
    """Score the test split with the weights of the best validation (kept under OUT/best/); the last
    weights' test metrics are reported too, as test_last. False: the last weights only."""


@dataclass
class CheckpointConfig:
    """Sharded checkpoints under OUT/checkpoints/step_<N>/."""

    every: int = 0
    """Write a checkpoint every N steps (0: only at the end)."""
    keep: int = 3
    """Keep the newest N complete checkpoints; older ones are deleted."""


@dataclass
class LoggingConfig:
    """Console, progress bar and TensorBoard."""

    every_steps: int = 20
    """Log training scalars every N steps."""
    tensorboard: bool = True
    """Write TensorBoard event files (to --logging.tensorboard_dir)."""
    tensorboard_dir: str = ""
    """TensorBoard event folder; empty: OUT/tensorboard (a shared log dir lets runs show side by side)."""
    progress: bool = True
    """Show a progress bar on rank 0."""


@dataclass
class ShardingConfig:
    """How the embedding tables are distributed."""

    default: str = "auto"
    """Sharding type of every table: auto, table_wise, row_wise, column_wise or data_parallel."""
    tables: str = ""
    """Per-table overrides 'table=type,table2=type' (e.g. 't_item=row_wise')."""
    replicate_max_rows: int = 4096
    """auto: tables with at most this many rows are replicated (data_parallel), bigger ones sharded."""


@dataclass
class TrainOptions:
    """How a model is trained, apart from what makes one run: the data, the model, its SIDs, the
    budget, the seed and the output folder (`TrainConfig` adds those). ``python -m trainer`` shows these
    options as its own flags (``--device``, ``--optim.dense_lr``, ``--model.num_layers``) and
    ``launch.compare`` embeds the same dataclass as its ``--trainer.*`` section, for both of its runs
    (``--trainer.optim.dense-lr``, ``--trainer.model.num-layers``), so each default is written here once."""

    device: str = "auto"
    """auto (cuda if available), cpu or cuda."""
    pipeline: bool = True
    """Use TorchRec's TrainPipelineSparseDist (input distribution overlaps compute)."""
    bf16: bool = True
    """bf16 autocast of the forward on GPU (ignored on CPU)."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms(True) (bit-identical resume on CPU holds without it too)."""
    num_workers: int = 0
    """Reader worker processes per rank (0: decode in the training process)."""
    optim: Annotated[OptimConfig, BoolValues] = field(default_factory=OptimConfig)
    eval: Annotated[EvalConfig, BoolValues] = field(default_factory=EvalConfig)
    checkpoint: Annotated[CheckpointConfig, BoolValues] = field(default_factory=CheckpointConfig)
    logging: Annotated[LoggingConfig, BoolValues] = field(default_factory=LoggingConfig)
    sharding: Annotated[ShardingConfig, BoolValues] = field(default_factory=ShardingConfig)
    model_config: Annotated[ModelConfig, BoolValues, tyro.conf.arg(name="model")] = field(
        default_factory=ModelConfig
    )
    """Hyper-parameters of the model that --model names: shared ones, and each model's own group
    (--model.<name>.<field>)."""

    def validate(self, prefix: str = "--") -> None:
        """ConfigError naming the flag (``prefix`` + its name: ``--optim.dense_lr`` on the trainer's command
        line, ``--trainer.optim.dense-lr`` on launch.compare's), the value and the rule; the model's
        hyper-parameters: ModelConfig.validate. --optim.sparse_lr unset (None) is not checked here (the
        run's model sets it)."""
        from trainer.distributed import SHARDING_TYPES

        def bad(flag: str, value: Any, rule: str) -> ConfigError:
            return ConfigError(f"{prefix}{flag} {rule}, got {value!r}")

        non_negative = {
            "num-workers": self.num_workers,
            "checkpoint.every": self.checkpoint.every,
            "eval.every_steps": self.eval.every_steps,
            "eval.batch_size": self.eval.batch_size,
            "eval.max_batches": self.eval.max_batches,
            "optim.warmup_steps": self.optim.warmup_steps,
            "optim.weight_decay": self.optim.weight_decay,
            "optim.embedding_weight_decay": self.optim.embedding_weight_decay,
            "eval.patience": self.eval.patience,
            "sharding.replicate_max_rows": self.sharding.replicate_max_rows,
        }
        positive = {
            "checkpoint.keep": self.checkpoint.keep,
            "logging.every_steps": self.logging.every_steps,
            "optim.dense_lr": self.optim.dense_lr,
            "optim.rotation_lr": self.optim.rotation_lr,
            "optim.rotation_every": self.optim.rotation_every,
            "eval.popularity_buckets": self.eval.popularity_buckets,
        }
        if self.optim.sparse_lr is not None:
            positive["optim.sparse_lr"] = self.optim.sparse_lr
        for flag, v in positive.items():
            if not v > 0:
                raise bad(flag, v, "must be > 0")
        for flag, v in non_negative.items():
            if not v >= 0:
                raise bad(flag, v, "must be >= 0")
        choices = {
            "device": (self.device, DEVICES),
            "optim.sparse": (self.optim.sparse, SPARSE_OPTIMIZERS),
            "optim.dense": (self.optim.dense, DENSE_OPTIMIZERS),
            "optim.decay": (self.optim.decay, DECAYS),
            "eval.metric": (self.eval.metric, tuple(METRICS)),
            "sharding.default": (self.sharding.default, ("auto", *SHARDING_TYPES)),
        }
        for flag, (v, allowed) in choices.items():
            if v not in allowed:
                raise bad(flag, v, f"must be one of {', '.join(allowed)}")
        if not 0 <= self.optim.min_lr_ratio <= 1:
            raise bad("optim.min_lr_ratio", self.optim.min_lr_ratio, "must be in [0, 1]")
        if not 0 <= self.eval.tail_buckets <= self.eval.popularity_buckets:
            raise bad(
                "eval.tail_buckets",
                self.eval.tail_buckets,
                f"must be in [0, {prefix}eval.popularity_buckets]",
            )
        self.table_overrides(prefix)  # parses --sharding.tables
        try:
            self.model_config.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def table_overrides(self, prefix: str = "--") -> dict[str, str]:
        """--sharding.tables 't_item=row_wise,t_user=column_wise' -> {table: type}."""
        from trainer.distributed import SHARDING_TYPES

        out: dict[str, str] = {}
        for part in (p.strip() for p in self.sharding.tables.split(",")):
            if not part:
                continue
            table, sep, kind = (s.strip() for s in part.partition("="))
            if not sep or not table or kind not in SHARDING_TYPES:
                raise ConfigError(
                    f"{prefix}sharding.tables expects 'table=type,...' with type in "
                    f"{', '.join(SHARDING_TYPES)}, got part {part!r}"
                )
            out[table] = kind
        return out


@dataclass
class TrainRun:
    """What makes one run, apart from how it is trained: the data, the model, its SIDs, the budget, the
    seed and the output folder."""

    data: str = ""
    """Dataset folder (spec.json, train/, valid/, test/)."""
    model: Annotated[str, tyro.conf.arg(help=f"Model of the zoo: {', '.join(registry.names())}.")] = "dnn"
    sids: str = ""
    """SID table folder (sid_table.parquet + meta.json); required by --model store."""
    drop: str = ""
    """Sparse features 'f1,f2' the model leaves out (an ablation: 'item_id' is a model without the item;
    dropping the item drops its history lists too)."""
    high_card: str = ""
    """High-cardinality features 'f1,f2' overriding the spec's ('none': only the item), which STORE
    tokenizes and the ID twin keeps as raw-ID tables projected to K tokens (empty: the spec's)."""
    out: str = "runs/default"
    """Output folder: checkpoints/, tensorboard/, metrics.json, summary.json."""
    epochs: int = 1
    """Passes over the training split."""
    max_steps: int = 0
    """Stop after this many steps in total (0: run all epochs)."""
    batch_size: int = 512
    """Rows per batch per rank."""
    seed: int = 0
    """Seed of initialisation, shuffling and dropout."""


@dataclass
class TrainConfig(TrainOptions, TrainRun):
    """One training run: `TrainRun`'s fields, then `TrainOptions`' (its flags are listed in that order),
    then how the run folder is treated and the config file."""

    resume: bool = False
    """Continue the run in --out from its newest complete checkpoint (refused, exit 4, when the data, SID
    table or model changed since)."""
    overwrite: bool = False
    """Replace the run an earlier trainer wrote in --out (only its files; others are kept). Without it
    (or --resume) an --out holding a run is refused."""
    config: str = ""
    """TOML config file; flags override it."""

    def validate(self) -> None:  # type: ignore[override]
        """ConfigError naming the flag, value and rule: this run's fields here, the options'
        (`TrainOptions.validate`) after the model's --optim.sparse_lr default is filled in."""

        def bad(flag: str, value: Any, rule: str) -> ConfigError:
            return ConfigError(f"{flag} {rule}, got {value!r}")

        if not self.data:
            raise bad("--data", self.data, "is required (a dataset folder)")
        if not fs.is_dir(self.data):  # a path or an object-store URI (data_pipeline/fs.py)
            raise bad("--data", self.data, "must be an existing dataset folder")
        if self.model not in registry.names():
            raise bad("--model", self.model, f"must be one of {', '.join(registry.names())}")
        model = registry.get(self.model)
        if self.optim.sparse_lr is None:  # unset: the model's own default, recorded as such in summary.json
            self.optim.sparse_lr = model.sparse_lr
        if model.needs_sids and not self.sids:
            raise ConfigError(
                f"--model {self.model} needs --sids DIR (a SID table folder from the tokenizer)"
            )
        if self.sids and not fs.is_dir(self.sids):
            raise bad("--sids", self.sids, "must be an existing SID folder")
        if not self.out:
            raise bad("--out", self.out, "must be a folder path")
        for flag, v in {"--epochs": self.epochs, "--batch-size": self.batch_size}.items():
            if not v > 0:
                raise bad(flag, v, "must be > 0")
        if not self.max_steps >= 0:
            raise bad("--max-steps", self.max_steps, "must be >= 0")
        super().validate("--")

    @property
    def checkpoint_interval(self) -> int:
        """Steps between checkpoints (--checkpoint.every; 0: only at the end)."""
        return self.checkpoint.every

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def inputs(self) -> dict:
        """What this run's result is made from, recorded in its output folder (`data_pipeline.outdir`):
        ``checkpoint``, what a checkpoint must match to be resumed (the data's and SID table's
        fingerprints, the model and what shapes its parameters); ``flags``, every flag that changes
        the result (not --out, --resume, --overwrite, logging, checkpoint cadence or the paths, which
        the fingerprints replace); ``paths``, the data and SID folders (for messages only)."""
        from data_pipeline import outdir
        from data_pipeline.spec import DatasetSpec

        d = self.to_dict()
        data = DatasetSpec.load(self.data).fingerprint
        sids = outdir.folder_fingerprint(self.sids, SID_RECORD_FILES) if self.sids else ""
        shape = ("model", "high_card", "drop", "model_config")
        volatile = ("data", "sids", "out", "resume", "overwrite", "config", "logging", "checkpoint")
        return {
            "checkpoint": {"data": data, "sids": sids} | {k: d[k] for k in shape},
            "flags": {k: v for k, v in d.items() if k not in volatile},
            "paths": {"data": self.data, "sids": self.sids},
        }


SID_RECORD_FILES = ("meta.json",)
"""The files of an SID table folder that identify it (with the sizes of the others)."""
RUN_ENTRIES = ("checkpoints", "best", "tensorboard", "metrics.json", "summary.json", "predictions")
"""What the trainer writes in --out (a run folder written before output records is known by these)."""


# -- TOML and flags --------------------------------------------------------------------------------
GROUPS = {"optim": "optim", "eval": "eval", "checkpoint": "checkpoint", "logging": "logging"}
GROUPS |= {"sharding": "sharding", "model": "model_config"}
"""Flag prefix / TOML table -> TrainConfig attribute."""


def load_toml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: file does not exist")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML ({e})") from None


def _typed(where: str, value: Any, default: Any) -> Any:
    """A TOML value checked against the type of the field's default (a list becomes a tuple of ints)."""
    if isinstance(default, tuple) and isinstance(value, list) and all(type(v) is int for v in value):
        return tuple(value)
    if (default is None or isinstance(default, float)) and type(value) in (int, float):
        return float(value)  # None: a float left unset by default (--optim.sparse_lr)
    if type(value) is not type(default):
        kind = (
            "a list of ints"
            if isinstance(default, tuple)
            else "a number"
            if default is None
            else type(default).__name__
        )
        raise ConfigError(f"{where} must be {kind}, got {value!r}")
    return value


def _set_group(group: Any, values: dict[str, Any], table: str, where: str) -> None:
    """Set the fields of dataclass ``group`` from TOML table ``[table]``; a nested table (``[model.ssr]``)
    sets a nested group."""
    known = [f.name for f in dataclasses.fields(group)]
    for sub, v in values.items():
        if sub not in known:
            raise ConfigError(f"{where}: unknown key [{table}] {sub}; known: {sorted(known)}")
        current = getattr(group, sub)
        if dataclasses.is_dataclass(current) and isinstance(v, dict):
            _set_group(current, v, f"{table}.{sub}", where)
        else:
            setattr(group, sub, _typed(f"{where}: [{table}] {sub}", v, current))


def from_toml(data: dict[str, Any], where: str) -> TrainConfig:
    """A TOML document -> TrainConfig: top-level keys are fields, one table per group (a model's own
    group: ``[model.<name>]``), the model name ``model = "store"`` or ``[model] name = "store"``;
    unknown keys are rejected."""
    cfg = TrainConfig()
    top = {f.name for f in dataclasses.fields(cfg)} - set(GROUPS.values()) - {"config"}
    for key, value in data.items():
        if key == "model" and isinstance(value, dict) and "name" in value:
            value = dict(value)
            cfg.model = _typed(f"{where}: [model] name", value.pop("name"), cfg.model)
        if key in GROUPS and isinstance(value, dict):
            _set_group(getattr(cfg, GROUPS[key]), value, key, where)
        elif key in top:
            setattr(cfg, key, _typed(f"{where}: {key}", value, getattr(cfg, key)))
        else:
            raise ConfigError(f"{where}: unknown key {key!r}")
    return cfg


def to_toml(cfg: TrainConfig) -> str:
    """``cfg`` as a TOML document that `from_toml` reads back into an equal TrainConfig (``--config
    FILE``): top-level keys, one table per group, the model name as ``[model] name``; unset values (None)
    and ``config`` are left out."""
    d = cfg.to_dict()
    d.pop("config")
    tables = {table: d.pop(attr) for table, attr in GROUPS.items()}
    tables["model"] = {"name": d.pop("model"), **tables["model"]}
    return "\n".join(_toml_lines(d, "") + [line for t, v in tables.items() for line in _toml_lines(v, t)])


def _toml_lines(values: dict[str, Any], table: str) -> list[str]:
    """TOML lines of ``values`` under ``[table]`` (its nested dicts as ``[table.key]`` after it)."""
    lines = [f"[{table}]"] if table else []
    nested = []
    for key, v in values.items():
        if isinstance(v, dict):
            nested += _toml_lines(v, f"{table}.{key}" if table else key)
        elif v is not None:
            lines.append(f"{key} = {_toml_value(v)}")
    return lines + [""] + nested


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)  # inf and nan are TOML's spellings too
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML spelling for {v!r}")


def write_toml(cfg: TrainConfig, path: str | Path) -> Path:
    """``cfg`` as the TOML file ``python -m trainer --config FILE`` reads (`to_toml`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(cfg))
    return path


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Flags (and --config TOML) -> validated TrainConfig. ConfigError for bad values; tyro exits
    with code 2 for unknown flags, missing values and values of the wrong type."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default="")
    path = pre.parse_known_args(argv)[0].config
    base = from_toml(load_toml(path), f"--config {path}") if path else TrainConfig()
    cfg = cli.parse(TrainConfig, argv, prog="python -m trainer", description=DESCRIPTION, default=base)
    cfg.validate()
    return cfg
