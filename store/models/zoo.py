"""One entry point for every model: ``build_model(name, spec, cfg, sids, device)``.

Every model takes a ``Batch`` and returns ``ModelOutput(logits (B,), aux_losses)``; holds its sparse
embeddings in TorchRec collections (built on ``device``, e.g. ``meta`` before sharding) and has
``rotation_parameters()`` (STORE's R, empty elsewhere) for alternating optimisation.

"store" takes batches already passed through ``SidTable.transform``; the others take raw batches.
"id" is STORE with the raw item-ID table: its item embedding is projected into as many tokens as
the SID table has SIDs (when ``sids`` is given; else ``--model.id_item_tokens``, default 1), so the
two attend over the same token count.
"""

from __future__ import annotations

import torch
from torch import nn

from data_pipeline.spec import DatasetSpec
from store.models.autoint import AutoInt
from store.models.config import ModelConfig
from store.models.dcn import DCN
from store.models.deepfm import DeepFM
from store.models.dnn import DNN
from store.models.layers import ModelOutput
from store.models.onetrans import OneTrans
from store.models.rankmixer import RankMixer
from store.models.store import StoreModel
from store.sid import SidTable

MODEL_NAMES = ("store", "id", "dnn", "deepfm", "dcn", "autoint", "rankmixer", "onetrans")
NEEDS_SIDS = {"store"}
BASELINES = {
    "dnn": DNN,
    "deepfm": DeepFM,
    "dcn": DCN,
    "autoint": AutoInt,
    "rankmixer": RankMixer,
    "onetrans": OneTrans,
}

__all__ = ["MODEL_NAMES", "NEEDS_SIDS", "ModelOutput", "build_model"]


def build_model(
    name: str,
    spec: DatasetSpec,
    cfg: ModelConfig,
    sids: SidTable | None,
    device: torch.device | None = None,
) -> nn.Module:
    """Build model ``name``; embedding collections on ``device``, dense layers moved there unless meta."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
    cfg.validate()
    device = torch.device(device) if device is not None else None
    if name == "store":
        if sids is None:
            raise ValueError("model 'store' needs --sids (a SID table folder written by the tokenizer)")
        sids.check_fits(spec)
        model: nn.Module = StoreModel(spec, cfg, sids, device)
    elif name == "id":
        tokens = cfg.id_item_tokens or (sids.num_sids if sids is not None else 1)
        model = StoreModel(spec, cfg, None, device, num_item_tokens=tokens)
    else:
        model = BASELINES[name](spec, cfg, device)
    if device is not None and device.type != "meta":
        model.to(device)
    return model
