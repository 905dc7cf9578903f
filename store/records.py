"""The records the stages hand each other as JSON, typed: a run's OUT/summary.json (`RunSummary`),
its evaluations (`EvalEntry`: a row of OUT/metrics.json, a summary's ``valid`` entries and its
``test`` / ``test_last`` metrics) and a SID folder's meta.json (`SidTableMeta`).

Each record has ``from_dict(d)``, which reads the current files and older ones (a missing field gets
its default; a file without ``version`` is version 1), and ``to_dict()``, which writes the JSON keys
the trainer and the tokenizer write, plus ``version`` for the versioned records. Keys a record does
not know are kept in its ``extra`` and written back; a record read from a file writes back the keys
it had, in the file's order (`Record.to_dict`). Torch-free: the report and the benchmarks read these without the trainer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from store.metrics import METRICS

R = TypeVar("R", bound="Record")
_OWN = ("extra", "keys", "version")  # a record's bookkeeping fields, not JSON keys of their own


def nested(cls: type[Record], shape: str = "one", **kw) -> Any:
    """A field holding a record (``shape`` 'one'), a list of them ('list') or a {name: record} ('dict')."""
    return field(metadata={"record": cls, "shape": shape}, **kw)


@dataclass
class Record:
    """A JSON object with typed fields (named as its keys), the keys it does not know in ``extra``, and
    the order of the keys it was read with in ``keys`` (not compared)."""

    VERSION: ClassVar[int | None] = None
    """The version `to_dict` writes for a record built here (None: the record has no version key)."""

    @classmethod
    def from_dict(cls: type[R], d: Mapping[str, Any] | None) -> R:
        """The record of a JSON object (None or absent keys: the defaults)."""
        d = dict(d or {})
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in _OWN or f.name not in d:
                continue
            kw[f.name] = _read(f, d[f.name])
        known = {f.name for f in dataclasses.fields(cls) if f.name not in ("extra", "keys")}
        kw["extra"] = {k: v for k, v in d.items() if k not in known}
        if cls.VERSION is not None:
            kw["version"] = int(d.get("version", 1))
        return cls(**kw, keys=tuple(d))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: every field, then ``extra``. A record read from a file writes its keys in
        the file's order, and of the fields the file did not have only those that differ from their
        defaults; one built here writes every field."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("extra", "keys") or (f.name == "version" and self.VERSION is None):
                continue
            value = getattr(self, f.name)
            if self.keys and f.name not in self.keys and f.name != "version" and value == _default(f):
                continue
            out[f.name] = _write(f, value)
        out |= self.extra
        order = [k for k in self.keys if k in out]
        return {k: out[k] for k in [*order, *(k for k in out if k not in self.keys)]}


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _read(f: dataclasses.Field, value: Any) -> Any:
    cls, shape = f.metadata.get("record"), f.metadata.get("shape")
    if cls is None or value is None:
        return value
    if shape == "list":
        return [cls.from_dict(v) for v in value]
    if shape == "dict":
        return {k: cls.from_dict(v) for k, v in value.items()}
    return cls.from_dict(value)


def _write(f: dataclasses.Field, value: Any) -> Any:
    if f.metadata.get("record") is None or value is None:
        return value
    if f.metadata.get("shape") == "list":
        return [v.to_dict() for v in value]
    if f.metadata.get("shape") == "dict":
        return {k: v.to_dict() for k, v in value.items()}
    return value.to_dict()


# -- evaluations ---------------------------------------------------------------------------------
@dataclass
class EvalEntry:
    """One evaluation: a row of OUT/metrics.json or of a summary's ``valid`` list ({"split", "step",
    "epoch", **metrics}), or a summary's ``test`` / ``test_last`` metrics (no split, step or epoch).
    ``metrics``: every other key, the registered metrics (store.metrics.METRICS) and the figures
    beside them (rows, positive_rate, bucket_auc, bucket_rows, ...)."""

    split: str | None = None
    step: int | None = None
    epoch: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> EvalEntry:
        d = dict(d or {})
        split, step, epoch = d.pop("split", None), d.pop("step", None), d.pop("epoch", None)
        return cls(split, step, epoch, d)

    def to_dict(self) -> dict[str, Any]:
        head = {"split": self.split, "step": self.step, "epoch": self.epoch}
        return {**{k: v for k, v in head.items() if v is not None}, **self.metrics}

    def value(self, name: str) -> Any:
        """Metric or figure ``name`` (None when the entry has none)."""
        return self.metrics.get(name)

    def scores(self) -> dict[str, Any]:
        """The registered metrics the entry holds, {name: value}."""
        return {k: self.metrics[k] for k in METRICS if k in self.metrics}


def read_metrics(rows: list[Mapping[str, Any]]) -> list[EvalEntry]:
    """OUT/metrics.json's content (a list of evaluations) -> one EvalEntry per row."""
    return [EvalEntry.from_dict(r) for r in rows]


# -- summary.json --------------------------------------------------------------------------------
@dataclass
class DatasetRef(Record):
    """The dataset a run or a SID table was built from (`DatasetSpec.record`)."""

    name: str | None = None
    fingerprint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass
class BestRecord(Record):
    """The best validation (`BestTracker.record`): its metric, value, epoch (from 0) and step."""

    metric: str | None = None
    value: float | None = None
    epoch: int | None = None
    step: int | None = None
    early_stopped: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass
class PlanEntry(Record):
    """One embedding table of the sharding plan."""

    table: str | None = None
    sharding: str | None = None
    kernel: str | None = None
    ranks: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass
class EvalConfig(Record):
    """The run's --eval.* settings the report reads (restore_best None: from before the flag)."""

    metric: str | None = None
    patience: int | None = None
    restore_best: bool | None = None
    tail_buckets: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass
class OptimConfig(Record):
    """The run's --optim.* settings the report reads."""

    sparse: str | None = None
    sparse_lr: float | None = None
    dense: str | None = None
    dense_lr: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass
class ModelConfig(Record):
    """The run's --model.* settings the report reads (the rest, per model, in ``extra``)."""

    embedding_dim: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    moba_block_size: int | None = None
    moba_sparsity: float | None = None
    vanilla_attention: bool | None = None
    rotation: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass
class RunConfig(Record):
    """The run's configuration (`TrainConfig.to_dict`): the settings the report and the benchmarks
    read; every other one in ``extra``."""

    data: str | None = None
    model: str | None = None
    sids: str | None = None
    out: str | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    device: str | None = None
    optim: OptimConfig = nested(OptimConfig, default_factory=OptimConfig)
    eval: EvalConfig = nested(EvalConfig, default_factory=EvalConfig)
    model_config: ModelConfig = nested(ModelConfig, default_factory=ModelConfig)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass
class RunSummary(Record):
    """A finished run's OUT/summary.json. ``scores``: the registered metrics of ``test`` lifted to the
    top level; ``test``: the reported weights' test metrics (the best validation's with
    --eval.restore_best), ``test_last``: the last weights' (None in runs from before it); ``valid``:
    every validation in order. Figures a run did not record are None (lists: empty)."""

    VERSION: ClassVar[int | None] = 2
    """2: summary.json with a version key; files without one are version 1."""

    version: int = 2
    scores: dict[str, Any] = field(default_factory=dict)
    test: EvalEntry = field(default_factory=EvalEntry)
    test_last: EvalEntry | None = None
    best: BestRecord | None = nested(BestRecord, default=None)
    best_epoch: int | None = None
    train_positive_rate: float | None = None
    valid: list[EvalEntry] = field(default_factory=list)
    steps: int | None = None
    samples_per_s: float | None = None
    samples_per_s_per_rank: float | None = None
    step_time_ms_rank0: dict[str, float] | None = None
    world_size: int | None = None
    pipeline: bool | None = None
    pipeline_blocker: str | None = None
    device: str | None = None
    peak_memory_bytes_per_rank: list[int] = field(default_factory=list)
    embedding_params_per_rank: list[int] = field(default_factory=list)
    embedding_bytes_per_rank: list[int] = field(default_factory=list)
    embedding_optimizer_bytes_per_rank: list[int] = field(default_factory=list)
    sharding_plan: list[PlanEntry] = nested(PlanEntry, "list", default_factory=list)
    wall_s: float | None = None
    versions: dict[str, str] | None = None
    config: RunConfig = nested(RunConfig, default_factory=RunConfig)
    dataset: DatasetRef | None = nested(DatasetRef, default=None)
    zch: dict[str, dict[str, int | None]] | None = None
    """ID-ZCH's managed-collision tables at the end of training, {table: {rows, admitted (distinct IDs
    that ever held a row), admissions, evicted, occupied, buffer_bytes}} (``store.models.zch.ZchCounts``);
    None for other models."""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RunSummary:
        d = dict(d or {})
        order = tuple(d)
        scores = {k: d.pop(k) for k in order if k in METRICS}
        run = super().from_dict(d)
        run.scores = scores
        run.test = EvalEntry.from_dict(d.get("test"))
        run.test_last = EvalEntry.from_dict(d["test_last"]) if d.get("test_last") is not None else None
        run.valid = [EvalEntry.from_dict(e) for e in d.get("valid") or []]
        run.keys = order
        return run

    def to_dict(self) -> dict[str, Any]:
        """summary.json's keys: ``scores`` at the top level, where the trainer writes them (first)."""
        body = super().to_dict()
        if "test" in body:
            body["test"] = self.test.to_dict()
        if "test_last" in body:
            body["test_last"] = self.test_last.to_dict() if self.test_last is not None else None
        if "valid" in body:
            body["valid"] = [e.to_dict() for e in self.valid]
        flat: dict[str, Any] = {}
        for k, v in body.items():
            if k == "scores":
                flat |= v
            else:
                flat[k] = v
        order = [k for k in self.keys if k in flat]
        return {k: flat[k] for k in [*order, *(k for k in flat if k not in order)]}

    @property
    def seed(self) -> int | None:
        return self.config.seed

    def test_scores(self, which: str = "best") -> dict[str, Any]:
        """The test metrics of the reported weights ('best': the best validation's with
        --eval.restore_best, else the last) or of the last weights ('last': ``test_last``, empty in runs
        from before it)."""
        if which == "last":
            return dict(self.test_last.metrics) if self.test_last is not None else {}
        return {**self.test.metrics, **self.scores}

    def auc(self) -> float:
        """The reported test AUC (NaN when the run has none)."""
        v = self.test_scores().get("auc")
        return float(v) if v is not None else math.nan


def as_summary(s: RunSummary | Mapping[str, Any]) -> RunSummary:
    """A RunSummary of ``s`` (a RunSummary, or the content of a summary.json)."""
    return s if isinstance(s, RunSummary) else RunSummary.from_dict(s)


# -- meta.json -----------------------------------------------------------------------------------
@dataclass
class SidFeature(Record):
    """A tokenized feature's figures in meta.json. ``test_coverage``: of the test rows whose ID occurs
    in the train split, the share whose ID has real SIDs (None: undefined, or not measured: tables from
    before it, see `coverage`); ``items_tokenized`` 0: every row has the reserved code (None: not
    counted, tables from before it)."""

    embedding_source: str | None = None
    rows: int | None = None
    coverage: float | None = None
    test_coverage: float | None = None
    items_tokenized: int | None = None
    recon_error_rel: float | None = None
    utilisation: list[float] | None = None
    perplexity: list[float] | None = None
    collision_rate: float | None = None
    collision_rate_rows: float | None = None
    unique_sids: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def real_sids(self) -> bool:
        """Whether some ID of the feature has real SIDs (tables from before that count: assumed)."""
        return self.items_tokenized != 0

    @property
    def test_coverage_of(self) -> float | None:
        """`test_coverage`; None when unknown (tables from before the tokenizer measured it, unless no
        ID has real SIDs: 0) or undefined (no test row's ID occurs in the train split)."""
        if "test_coverage" in self.keys or self.test_coverage is not None:
            return float(self.test_coverage) if self.test_coverage is not None else None
        return None if self.real_sids else 0.0


@dataclass
class EmbeddingParams(Record):
    """A tokenized feature's embedding rows: STORE's K codebooks (``sid``) vs the raw-ID table."""

    sid: int = 0
    raw_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass
class SelectionCandidate(Record):
    """A SID variant the tokenizer tried."""

    name: str | None = None
    valid_auc: float | None = None
    chosen: bool = False
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass
class SidSelection(Record):
    """The tokenizer's choice among SID variants (``forced``: a flag chose it, nothing was tried).
    ``raw_id_valid_auc``: the proxy on raw IDs, as a reference (None: not recorded)."""

    chosen: str | None = None
    forced: bool = False
    metric: str | None = None
    candidates: list[SelectionCandidate] = nested(SelectionCandidate, "list", default_factory=list)
    raw_id_valid_auc: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass
class SidTableMeta(Record):
    """A SID folder's meta.json: the method, K SIDs per feature over C codewords (``codebook_size``:
    the codebook rows, C plus the reserved code when there is one), the dataset, and per tokenized
    feature its figures. ``unseen_code`` None: no reserved code. Tables from before per-feature SIDs
    hold the item's figures at the top level (`tokenized`)."""

    VERSION: ClassVar[int | None] = 2
    """2: meta.json with a version key; files without one are version 1."""

    version: int = 2
    method: str | None = None
    num_sids: int | None = None
    codebook_size: int | None = None
    codewords: int | None = None
    dataset: DatasetRef | None = nested(DatasetRef, default=None)
    learned_from: str | None = None
    embedding_params: dict[str, EmbeddingParams] = nested(EmbeddingParams, "dict", default_factory=dict)
    features: dict[str, SidFeature] = nested(SidFeature, "dict", default_factory=dict)
    selection: SidSelection | None = nested(SidSelection, default=None)
    unseen_code: int | None = None
    min_count: int | None = None
    rare: str | None = None
    num_items: int | None = None
    item_feature: str | None = None
    oof_folds: int = 0
    """Out-of-fold codes: train rows take the codes of their fold's table (``store.sid.row_folds``);
    0: one table for every split."""
    fold_keys: list[str] = field(default_factory=list)
    """The sparse features whose values decide a row's fold (``oof_folds`` > 0)."""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def codeword_count(self) -> int | None:
        """C, the codewords per codebook (tables from before ``codewords``: ``codebook_size``)."""
        return self.codewords if self.codewords is not None else self.codebook_size

    def tokenized(self) -> dict[str, SidFeature]:
        """{tokenized feature: its figures} (tables from before per-feature SIDs: the item's, read from
        the top level)."""
        if self.features:
            return self.features
        return {self.item_feature or "item_id": SidFeature.from_dict(self.to_dict())}
