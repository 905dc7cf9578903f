"""The model zoo's one list: each model's name and the module that defines it.

A model module declares ``SPEC`` (or ``SPECS``, several names from one file: "store" and "id"), a
``ModelSpec``: its build function, its own hyper-parameters (the ``--model.<name>.*`` group), its
defaults. ``get(name)`` imports the module on first use; this module imports no torch, so a TorchX
component can check ``--model`` against ``names()`` without it.

Adding a model: a file ``store/models/<name>.py`` with the model, its config dataclass and ``SPEC``,
and one line in ``MODELS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from data_pipeline.batch import Batch
    from data_pipeline.spec import DatasetSpec
    from store.models.config import ModelConfig
    from store.sid import SidTable

MODELS = {
    "store": "store.models.store",
    "id": "store.models.store",
    "id-hash": "store.models.store",
    "sid-prefix": "store.models.sid_arms",
    "hybrid": "store.models.sid_arms",
    "id-zch": "store.models.zch",
    "dnn": "store.models.dnn",
    "deepfm": "store.models.deepfm",
    "dcn": "store.models.dcn",
    "autoint": "store.models.autoint",
    "rankmixer": "store.models.rankmixer",
    "onetrans": "store.models.onetrans",
    "fm": "store.models.fm",
    "widedeep": "store.models.widedeep",
    "gdcn": "store.models.gdcn",
    "masknet": "store.models.masknet",
    "pepnet": "store.models.pepnet",
    "ssr": "store.models.ssr",
}
"""Model name -> the module declaring its ``SPEC``; the order of every listing (``--help``, tests)."""

SPARSE_LR = 0.05
"""The embedding tables' learning rate (``--optim.sparse_lr``) of every model whose spec sets no other."""


@dataclass(frozen=True)
class ModelSpec:
    """One model of the zoo, as the trainer, the FLOPs counter and the tests find it by name."""

    name: str
    """``--model`` value."""
    build: Callable[[DatasetSpec, ModelConfig, SidTable | None, torch.device | None], nn.Module]
    """(dataset spec, ``--model.*``, SID table or None, device) -> the model, its embedding collections
    on the device (``store.models.zoo.build_model`` validates the config and moves the rest there)."""
    config: type | None = None
    """The model's own hyper-parameters: a dataclass whose fields (defaults and docstrings) are the flags
    ``--model.<group>.<field>``, found on ``ModelConfig`` as attribute ``<group>`` (``group``: the name
    with ``-`` as ``_``, "id-hash" -> ``--model.id_hash.rows``); it may define
    ``validate(model_config)``. None: the model reads the shared ``--model.*`` fields only."""
    needs_sids: bool = False
    """Needs ``--sids`` (a SID table, for the model and its ``transform``)."""
    transform: (
        Callable[[DatasetSpec, ModelConfig, SidTable | None, bool], Callable[[Batch], Batch] | None] | None
    ) = None
    """(dataset spec, ``--model.*``, SID table or None, train) -> what the reader applies to every batch
    (of the train split when ``train``: out-of-fold SIDs differ there, ``SidTable.transform``), at data
    time, so TorchRec's pipeline sees collections read batch fields as they come (STORE: the SID
    lookup, ``SidTable.transform``; ID-hash: its IDs hashed into its rows); None: raw batches."""
    sparse_lr: float = SPARSE_LR
    """Default ``--optim.sparse_lr``."""
    budget: str | None = None
    """The field of ``config`` that holds the arm's embedding budget: B rows per tokenized feature
    (``--model.<group>.<budget>``, e.g. ``--model.id_hash.rows``), which ``launch.frontier`` sets from
    its ``--budgets``. None: the model's embedding memory is fixed by the data and the SID table."""
    flops: Callable[[nn.Module, int], int] | None = None
    """(built model, batch size) -> analytical forward FLOPs per batch (``store.models.flops``); None:
    no analytical count (use torch's FlopCounterMode)."""

    @property
    def group(self) -> str:
        """The attribute of ``ModelConfig`` holding ``config`` (the name, ``-`` as ``_``: a Python name)."""
        return self.name.replace("-", "_")


def names() -> tuple[str, ...]:
    """Every model name, in ``MODELS`` order."""
    return tuple(MODELS)


def get(name: str) -> ModelSpec:
    """The spec of model ``name`` (importing its module); ValueError naming the choices if unknown."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    module = importlib.import_module(MODELS[name])
    declared = getattr(module, "SPECS", None) or (module.SPEC,)
    for spec in declared:
        if spec.name == name:
            return spec
    raise ValueError(f"{MODELS[name]} declares no spec named {name!r}")


def specs() -> tuple[ModelSpec, ...]:
    """Every model's spec, in ``MODELS`` order (imports every model module)."""
    return tuple(get(name) for name in MODELS)


def budgeted() -> tuple[str, ...]:
    """The models with an embedding budget (``ModelSpec.budget``), in ``MODELS`` order."""
    return tuple(spec.name for spec in specs() if spec.budget is not None)


def budget_flag(name: str) -> str:
    """``--model.<group>.<budget>`` of model ``name``; ValueError if it has no budget."""
    spec = get(name)
    if spec.budget is None:
        raise ValueError(f"model {name!r} has no embedding budget; budgeted: {', '.join(budgeted())}")
    return f"--model.{spec.group}.{spec.budget}"


def flag_error(flag: str, value: Any, rule: str) -> ValueError:
    """``--model.<flag> <rule>, got <value>``: how a model config's ``validate`` reports a bad value."""
    return ValueError(f"--model.{flag} {rule}, got {value!r}")
