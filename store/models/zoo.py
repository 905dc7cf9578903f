"""One entry point for every model: ``build_model(name, spec, cfg, sids, device)``, and the batch
transform its reader applies: ``batch_transform(name, spec, sids, cfg)``.

Every model takes a ``Batch`` and returns ``ModelOutput(logits (B,), aux_losses)`` and holds its sparse
embeddings in TorchRec collections (built on ``device``, e.g. ``meta`` before sharding).
``rotation_parameters(model)`` lists STORE's R (empty elsewhere) for alternating optimisation.

The models are found by name in ``store.models.registry``: each model's module declares a
``ModelSpec`` whose build function turns the ``DatasetSpec`` into the model's explicit inputs
(``store.models.inputs.field_inputs``, ``store.models.store.store_inputs``: tables with their rows,
feature lists, the dense count, the SID codebooks) and hands it those and ``--model.*``.

A model may declare a data-time batch transform (``ModelSpec.transform``, built by ``batch_transform``):
"store" takes batches already passed through ``SidTable.transform``, "id-hash" batches with its
tokenized features' raw IDs already hashed into ``--model.id_hash.rows`` rows; the others take raw
batches. "id" is STORE with the raw item-ID table: its item embedding is projected into as
many tokens as the SID table has SIDs (when ``sids`` is given; else ``--model.id_item_tokens``,
default 1), so the two attend over the same token count; "id-hash" is "id" with hashed tables
(``store.models.store``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from data_pipeline.batch import Batch
from data_pipeline.spec import DatasetSpec
from store.models import registry
from store.models.config import ModelConfig
from store.models.layers import ModelOutput
from store.models.rotation import rotation_parameters
from store.sid import SidTable

__all__ = [
    "ModelOutput",
    "batch_transform",
    "build_model",
    "rotation_parameters",
    "sparse_lr",
]


def sparse_lr(name: str) -> float:
    """Model ``name``'s default ``--optim.sparse_lr``."""
    return registry.get(name).sparse_lr


def build_model(
    name: str,
    spec: DatasetSpec,
    cfg: ModelConfig,
    sids: SidTable | None,
    device: torch.device | None = None,
) -> nn.Module:
    """Build model ``name``; embedding collections on ``device``, dense layers moved there unless meta."""
    model_spec = registry.get(name)
    cfg.validate()
    device = torch.device(device) if device is not None else None
    if model_spec.needs_sids:
        sids = _needs_sids(name, sids)
    model = model_spec.build(spec, cfg, sids, device)
    if device is not None and device.type != "meta":
        model.to(device)
    return model


def batch_transform(
    name: str, spec: DatasetSpec, sids: SidTable | None, cfg: ModelConfig, train: bool = False
) -> Callable[[Batch], Batch] | None:
    """What the reader applies to every batch of model ``name`` with ``--model.*`` ``cfg`` (``train``: of
    the train split, whose rows take out-of-fold SIDs where the table has them): its spec's
    ``transform`` (at data time, so TorchRec can pipeline the lookups that read its output), or None
    (raw batches). ValueError if the model needs ``--sids`` and ``sids`` is None."""
    model_spec = registry.get(name)
    cfg.validate()
    if model_spec.needs_sids:
        sids = _needs_sids(name, sids)
    if model_spec.transform is None:
        return None
    return model_spec.transform(spec, cfg, sids, train)


def _needs_sids(name: str, sids: SidTable | None) -> SidTable:
    if sids is None:
        raise ValueError(f"model {name!r} needs --sids (a SID table folder written by the tokenizer)")
    return sids
