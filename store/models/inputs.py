"""The models' explicit inputs, made from the ``DatasetSpec``: tables with their rows, feature lists,
the dense count (``field_inputs``, what the field baselines read; STORE's and PEPNet's own inputs
are made in their modules from these pieces).

``on_fields(Model)`` is the build function of a model made from ``field_inputs(spec)`` alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from data_pipeline.spec import DatasetSpec
from store.models.layers import (
    EMBEDDING_INIT_STD,
    RAW_ITEM_TABLE,
    FieldInputs,
    HistoryFeature,
    Table,
    history_features,
    num_item_rows,
    static_features,
    static_table_name,
)

if TYPE_CHECKING:
    import torch

    from store.models.config import ModelConfig
    from store.sid import SidTable


def static_tables(
    spec: DatasetSpec, features: list[str], init_std: float = EMBEDDING_INIT_STD
) -> list[Table]:
    """One table ``t_<f>`` (the feature's vocab rows) per feature of ``features``."""
    return [Table(static_table_name(f), spec.feature(f).vocab_size, (f,), init_std) for f in features]


def history_inputs(spec: DatasetSpec) -> list[HistoryFeature]:
    """The item-valued features other than the target item, with the length they are padded to."""
    features = [spec.feature(f) for f in history_features(spec)]
    return [HistoryFeature(f.name, f.max_len if f.multi else 1) for f in features]


def field_inputs(spec: DatasetSpec, init_std: float = EMBEDDING_INIT_STD) -> FieldInputs:
    """The baselines' inputs: every static feature's table and the raw item table ``t_item``, each
    starting with standard deviation ``init_std`` (``--model.embedding_init_std``)."""
    items = tuple(f.name for f in spec.sparse if f.item_ref)
    return FieldInputs(
        static_tables=static_tables(spec, static_features(spec), init_std),
        item_table=Table(RAW_ITEM_TABLE, num_item_rows(spec), items, init_std) if items else None,
        item_feature=spec.item_id,
        history=history_inputs(spec),
        num_dense=len(spec.dense),
    )


def on_fields(
    model: Callable[[FieldInputs, ModelConfig, torch.device | None], nn.Module],
) -> Callable[[DatasetSpec, ModelConfig, SidTable | None, torch.device | None], nn.Module]:
    """The ``ModelSpec.build`` of ``model(field_inputs(spec), cfg, device)`` (no SIDs)."""

    def build(
        spec: DatasetSpec, cfg: ModelConfig, sids: SidTable | None, device: torch.device | None
    ) -> nn.Module:
        return model(field_inputs(spec, cfg.embedding_init_std), cfg, device)

    return build


def parse_feature_groups(text: str) -> dict[str, list[str]]:
    """'user=age,gender;ctx=hour' -> {'user': ['age', 'gender'], 'ctx': ['hour']} ('' -> {})."""
    groups: dict[str, list[str]] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, sep, cols = part.partition("=")
        features = [c.strip() for c in cols.split(",") if c.strip()]
        if not sep or not name.strip() or not features:
            raise ValueError(f"--model.feature_groups: expected 'group=f1,f2;group2=f3', got part {part!r}")
        if name.strip() in groups:
            raise ValueError(f"--model.feature_groups: group {name.strip()!r} given twice")
        groups[name.strip()] = features
    return groups
