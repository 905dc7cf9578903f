"""Trainer configuration: typed dataclasses, a TOML file, and CLI flags generated from the fields.

Precedence: dataclass defaults < ``--config FILE.toml`` < command-line flags. Top-level fields are
flags of their own (``--data``, ``--batch-size``, ``--pipeline/--no-pipeline``); a group's fields are
``--<group>.<field>`` (``--optim.dense_lr 3e-4``, ``--model.embedding_dim 32``). In TOML the same
names: top-level keys and one table per group; the model name is ``model = "store"`` or
``[model] name = "store"``. Every field's docstring is its ``--help``. `TrainConfig.validate`
raises `ConfigError` naming the flag, the value and the rule.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from store.models.config import ModelConfig

SPARSE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "adam", "sgd")
DENSE_OPTIMIZERS = ("adam", "adamw", "sgd")
DECAYS = ("none", "linear", "cosine")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A bad flag or config-file value. The message names the flag, the value and the rule."""


@dataclass
class OptimConfig:
    """Optimizers and the learning-rate schedule."""

    sparse: str = "rowwise_adagrad"
    """Embedding optimizer, fused into the backward by TorchRec: rowwise_adagrad, adagrad, adam or sgd."""
    sparse_lr: float = 0.05
    """Learning rate of the embedding tables."""
    dense: str = "adam"
    """Optimizer of the dense (non-embedding) parameters: adam, adamw or sgd."""
    dense_lr: float = 1e-3
    """Learning rate of the dense parameters."""
    weight_decay: float = 0.0
    """Weight decay of the dense optimizer."""
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
class TrainConfig:
    """One training run."""

    data: str = ""
    """Dataset folder (spec.json, train/, valid/, test/)."""
    model: str = "dnn"
    """Model of the zoo: store, id, dnn, deepfm, dcn, autoint, rankmixer or onetrans."""
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
    checkpoint_every: int = 0
    """Shortcut for --checkpoint.every."""
    resume: bool = False
    """Continue from the newest complete checkpoint in --out."""
    config: str = ""
    """TOML config file; flags override it."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    model_config: ModelConfig = field(default_factory=ModelConfig)

    def validate(self) -> None:
        """ConfigError naming the flag, value and rule (model hyper-parameters: ModelConfig.validate)."""
        from store.models.zoo import MODEL_NAMES, NEEDS_SIDS
        from trainer.distributed import SHARDING_TYPES

        def bad(flag: str, value: Any, rule: str) -> ConfigError:
            return ConfigError(f"{flag} {rule}, got {value!r}")

        if not self.data:
            raise bad("--data", self.data, "is required (a dataset folder)")
        if not Path(self.data).is_dir():
            raise bad("--data", self.data, "must be an existing dataset folder")
        if self.model not in MODEL_NAMES:
            raise bad("--model", self.model, f"must be one of {', '.join(MODEL_NAMES)}")
        if self.model in NEEDS_SIDS and not self.sids:
            raise ConfigError(
                f"--model {self.model} needs --sids DIR (a SID table folder from the tokenizer)"
            )
        if self.sids and not Path(self.sids).is_dir():
            raise bad("--sids", self.sids, "must be an existing SID folder")
        if not self.out:
            raise bad("--out", self.out, "must be a folder path")
        positive = {"--epochs": self.epochs, "--batch-size": self.batch_size}
        non_negative = {
            "--max-steps": self.max_steps,
            "--num-workers": self.num_workers,
            "--checkpoint-every": self.checkpoint_every,
            "--checkpoint.every": self.checkpoint.every,
            "--eval.every_steps": self.eval.every_steps,
            "--eval.batch_size": self.eval.batch_size,
            "--eval.max_batches": self.eval.max_batches,
            "--optim.warmup_steps": self.optim.warmup_steps,
            "--optim.weight_decay": self.optim.weight_decay,
            "--sharding.replicate_max_rows": self.sharding.replicate_max_rows,
        }
        positive |= {
            "--checkpoint.keep": self.checkpoint.keep,
            "--logging.every_steps": self.logging.every_steps,
            "--optim.sparse_lr": self.optim.sparse_lr,
            "--optim.dense_lr": self.optim.dense_lr,
            "--optim.rotation_lr": self.optim.rotation_lr,
            "--optim.rotation_every": self.optim.rotation_every,
            "--eval.popularity_buckets": self.eval.popularity_buckets,
        }
        for flag, v in positive.items():
            if not v > 0:
                raise bad(flag, v, "must be > 0")
        for flag, v in non_negative.items():
            if not v >= 0:
                raise bad(flag, v, "must be >= 0")
        choices = {
            "--device": (self.device, DEVICES),
            "--optim.sparse": (self.optim.sparse, SPARSE_OPTIMIZERS),
            "--optim.dense": (self.optim.dense, DENSE_OPTIMIZERS),
            "--optim.decay": (self.optim.decay, DECAYS),
            "--sharding.default": (self.sharding.default, ("auto", *SHARDING_TYPES)),
        }
        for flag, (v, allowed) in choices.items():
            if v not in allowed:
                raise bad(flag, v, f"must be one of {', '.join(allowed)}")
        if not 0 <= self.optim.min_lr_ratio <= 1:
            raise bad("--optim.min_lr_ratio", self.optim.min_lr_ratio, "must be in [0, 1]")
        if not 0 <= self.eval.tail_buckets <= self.eval.popularity_buckets:
            raise bad(
                "--eval.tail_buckets", self.eval.tail_buckets, "must be in [0, --eval.popularity_buckets]"
            )
        self.table_overrides()  # parses --sharding.tables
        try:
            self.model_config.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def table_overrides(self) -> dict[str, str]:
        """--sharding.tables 't_item=row_wise,t_user=column_wise' -> {table: type}."""
        from trainer.distributed import SHARDING_TYPES

        out: dict[str, str] = {}
        for part in (p.strip() for p in self.sharding.tables.split(",")):
            if not part:
                continue
            table, sep, kind = (s.strip() for s in part.partition("="))
            if not sep or not table or kind not in SHARDING_TYPES:
                raise ConfigError(
                    f"--sharding.tables expects 'table=type,...' with type in {', '.join(SHARDING_TYPES)}, "
                    f"got part {part!r}"
                )
            out[table] = kind
        return out

    @property
    def checkpoint_interval(self) -> int:
        return self.checkpoint_every or self.checkpoint.every

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- groups: (attribute, flag prefix, TOML table) ------------------------------------------------
GROUPS = {
    "optim": ("optim", OptimConfig),
    "eval": ("eval", EvalConfig),
    "checkpoint": ("checkpoint", CheckpointConfig),
    "logging": ("logging", LoggingConfig),
    "sharding": ("sharding", ShardingConfig),
    "model": ("model_config", ModelConfig),
}
"""Flag prefix / TOML table -> (TrainConfig attribute, dataclass)."""


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings (the string literal right after each field) of a dataclass."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs, body = {}, tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _scalar_fields(cls: type) -> list[tuple[str, Any, Any]]:
    """(name, type, default) of the non-group fields of a dataclass."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, hints[f.name], default))
    return out


def _convert(flag: str, value: Any, default: Any) -> Any:
    """A flag's text or a TOML value -> the field's type (bool / int / float / str / tuple of ints)."""
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            low = str(value).strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            items = value if isinstance(value, list | tuple) else str(value).replace(" ", "").split(",")
            return tuple(int(x) for x in items if x != "")
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        kind = "a comma-separated list of ints" if isinstance(default, tuple) else type(default).__name__
        raise ConfigError(f"{flag} must be {kind}, got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """argparse generated from the dataclasses; every default is SUPPRESS so only given flags appear."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Train a model of the zoo on a parquet dataset (one process, or many under torchrun).",
        argument_default=argparse.SUPPRESS,
    )
    docs = field_docs(TrainConfig)
    for name, _, default in _scalar_fields(TrainConfig):
        flag = "--" + name.replace("_", "-")
        help_text = f"{docs.get(name, '')} (default: {default!r})"
        if isinstance(default, bool):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, dest=name, metavar=type(default).__name__.upper(), help=help_text)
    for prefix, (_, cls) in GROUPS.items():
        group = parser.add_argument_group(f"--{prefix}.*", (cls.__doc__ or "").strip())
        group_docs = field_docs(cls)
        for name, _, default in _scalar_fields(cls):
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            group.add_argument(
                f"--{prefix}.{name}",
                dest=f"{prefix}.{name}",
                metavar="V",
                help=f"{group_docs.get(name, '')} (default: {shown!r})",
            )
    return parser


def load_toml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: file does not exist")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML ({e})") from None


def _flatten_toml(data: dict[str, Any], where: str) -> dict[str, Any]:
    """TOML document -> {"name": v, "group.field": v} with unknown keys rejected."""
    top = {name for name, _, _ in _scalar_fields(TrainConfig)}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in GROUPS and isinstance(value, dict):
            allowed = {name for name, _, _ in _scalar_fields(GROUPS[key][1])}
            for sub, v in value.items():
                if key == "model" and sub == "name":
                    flat["model"] = v
                elif sub not in allowed:
                    raise ConfigError(f"{where}: unknown key [{key}] {sub}; known: {sorted(allowed)}")
                else:
                    flat[f"{key}.{sub}"] = v
        elif key in top and key != "config":
            flat[key] = value
        else:
            raise ConfigError(f"{where}: unknown key {key!r}")
    return flat


def make_config(values: dict[str, Any]) -> TrainConfig:
    """{"batch_size": v, "optim.dense_lr": v, ...} -> TrainConfig (converted, not yet validated)."""
    cfg = TrainConfig()
    top = {name: default for name, _, default in _scalar_fields(TrainConfig)}
    for key, value in values.items():
        if "." in key:
            prefix, name = key.split(".", 1)
            attr, cls = GROUPS[prefix]
            defaults = {n: d for n, _, d in _scalar_fields(cls)}
            setattr(getattr(cfg, attr), name, _convert(f"--{key}", value, defaults[name]))
        else:
            setattr(cfg, key, _convert("--" + key.replace("_", "-"), value, top[key]))
    return cfg


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Flags (and --config TOML) -> validated TrainConfig. ConfigError for bad values.

    argparse itself exits with code 2 for unknown flags and missing values.
    """
    flags = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    if flags.get("config"):
        values.update(_flatten_toml(load_toml(flags["config"]), f"--config {flags['config']}"))
    values.update(flags)
    cfg = make_config(values)
    cfg.validate()
    return cfg
