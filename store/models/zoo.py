"""One entry point for every model: ``build_model(name, spec, cfg, sids, device)``, and the batch
transform its reader applies: ``batch_transform(name, spec, sids)``.

Every model takes a ``Batch`` and returns ``ModelOutput(logits (B,), aux_losses)`` and holds its sparse
embeddings in TorchRec collections (built on ``device``, e.g. ``meta`` before sharding).
``rotation_parameters(model)`` lists STORE's R (empty elsewhere) for alternating optimisation.

The models never see the ``DatasetSpec`` or the flat ``ModelConfig``: ``build_model`` turns the spec
into explicit inputs (``field_inputs``, ``store_inputs``: tables with their rows, feature lists, the
dense count, the SID codebooks) and ``--model.*`` into the model's own config (``model_config``).

"store" takes batches already passed through ``SidTable.transform`` (``batch_transform``); the others
take raw batches. "id" is STORE with the raw item-ID table: its item embedding is projected into as
many tokens as the SID table has SIDs (when ``sids`` is given; else ``--model.id_item_tokens``,
default 1), so the two attend over the same token count.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from data_pipeline.batch import Batch
from data_pipeline.spec import DatasetSpec
from store.models.autoint import AutoInt, AutoIntConfig
from store.models.config import ModelConfig, parse_feature_groups
from store.models.dcn import DCN, DCNConfig
from store.models.deepfm import DeepFM, DeepFMConfig
from store.models.dnn import DNN, DNNConfig
from store.models.fm import FM, FMConfig
from store.models.gdcn import GDCN, GDCNConfig
from store.models.layers import (
    EMBEDDING_INIT_STD,
    RAW_ITEM_TABLE,
    FieldInputs,
    HistoryFeature,
    ModelOutput,
    Table,
    history_features,
    low_cardinality_features,
    num_item_rows,
    static_features,
    static_table_name,
)
from store.models.masknet import MaskNet, MaskNetConfig
from store.models.onetrans import OneTrans, OneTransConfig
from store.models.pepnet import PEPNet, PEPNetConfig, PEPNetInputs
from store.models.rankmixer import RankMixer, RankMixerConfig
from store.models.rotation import rotation_parameters
from store.models.ssr import SSR, SSRConfig
from store.models.store import StoreConfig, StoreInputs, StoreModel, sid_table_name
from store.models.widedeep import WideDeep, WideDeepConfig
from store.sid import SidTable, sid_feature_name, sid_sources

MODEL_NAMES = ("store", "id", "dnn", "deepfm", "dcn", "autoint", "rankmixer", "onetrans")
MODEL_NAMES += ("fm", "widedeep", "gdcn", "masknet", "pepnet", "ssr")
NEEDS_SIDS = {"store"}
BASELINES = {
    "dnn": DNN,
    "deepfm": DeepFM,
    "dcn": DCN,
    "autoint": AutoInt,
    "rankmixer": RankMixer,
    "onetrans": OneTrans,
    "fm": FM,
    "widedeep": WideDeep,
    "gdcn": GDCN,
    "masknet": MaskNet,
    "ssr": SSR,
}
"""Models built from ``field_inputs(spec)`` alone; "pepnet" also takes its prior fields (``pepnet_inputs``)."""
SPARSE_LR = 0.05
"""The embedding tables' learning rate (``--optim.sparse_lr``) of every model but those of ``MODEL_SPARSE_LR``."""
MODEL_SPARSE_LR = {"fm": 0.02, "deepfm": 0.02}
"""Models with a factorization-machine term learn their tables slower: at 0.05 the factors, and with them
the pairwise term, fit in the first epoch. 0.02 was chosen by validation AUC (2 seeds, 3 epochs) on
MovieLens-100K (DeepFM 0.6828 / 0.6882 at 0.05, 0.6949 / 0.6965 at 0.02, 0.6958 / 0.6955 at 0.01; FM
0.6842 / 0.6880, 0.6919 / 0.6943, 0.6899 / 0.6906) and the synthetic data (200,000 rows; DeepFM 0.7525 /
0.7471 at 0.05, 0.7530 / 0.7513 at 0.02; FM 0.7468 / 0.7426, 0.7490 / 0.7483). DNN has no such
preference (0.6970 / 0.6954 at 0.05, 0.6965 / 0.6958 at 0.01). Figures: docs/results.md, Table 1."""
ZooConfig = (
    StoreConfig | DNNConfig | DeepFMConfig | DCNConfig | AutoIntConfig | RankMixerConfig | OneTransConfig
    | FMConfig | WideDeepConfig | GDCNConfig | MaskNetConfig | PEPNetConfig | SSRConfig
)  # fmt: skip

__all__ = [
    "MODEL_NAMES",
    "NEEDS_SIDS",
    "ModelOutput",
    "batch_transform",
    "build_model",
    "rotation_parameters",
]


def sparse_lr(name: str) -> float:
    """Model ``name``'s default ``--optim.sparse_lr``."""
    return MODEL_SPARSE_LR.get(name, SPARSE_LR)


def build_model(
    name: str,
    spec: DatasetSpec,
    cfg: ModelConfig,
    sids: SidTable | None,
    device: torch.device | None = None,
) -> nn.Module:
    """Build model ``name``; embedding collections on ``device``, dense layers moved there unless meta."""
    _check_name(name)
    cfg.validate()
    device = torch.device(device) if device is not None else None
    if name == "store":
        sids = _needs_sids(name, sids)
        sids.check_fits(spec)
        inputs = store_inputs(spec, cfg.feature_groups, sids, sids.num_sids, cfg.embedding_init_std)
        model: nn.Module = StoreModel(inputs, model_config(name, cfg), device)
    elif name == "id":
        tokens = cfg.id_item_tokens or (sids.num_sids if sids is not None else 1)
        inputs = store_inputs(spec, cfg.feature_groups, None, tokens, cfg.embedding_init_std)
        model = StoreModel(inputs, model_config(name, cfg), device)
    elif name == "pepnet":
        prior = pepnet_inputs(spec, cfg.feature_groups, cfg.embedding_init_std)
        model = PEPNet(prior, model_config(name, cfg), device)
    else:
        model = BASELINES[name](field_inputs(spec, cfg.embedding_init_std), model_config(name, cfg), device)
    if device is not None and device.type != "meta":
        model.to(device)
    return model


def batch_transform(name: str, spec: DatasetSpec, sids: SidTable | None) -> Callable[[Batch], Batch] | None:
    """What the reader applies to every batch of model ``name``: "store" moves its tokenized features
    to SIDs (``SidTable.transform``, at data time so TorchRec can pipeline the lookup); None for the
    others, which read raw batches."""
    _check_name(name)
    if name not in NEEDS_SIDS:
        return None
    return functools.partial(_needs_sids(name, sids).transform, spec=spec)


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")


def _needs_sids(name: str, sids: SidTable | None) -> SidTable:
    if sids is None:
        raise ValueError(f"model {name!r} needs --sids (a SID table folder written by the tokenizer)")
    return sids


# -- explicit inputs from the spec --------------------------------------------------------------------
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


def pepnet_inputs(
    spec: DatasetSpec, feature_groups: str = "", init_std: float = EMBEDDING_INIT_STD
) -> PEPNetInputs:
    """PEPNet's fields and which are its prior ones (``store.models.pepnet``): the domain prior is the
    "context" feature group, the personal prior the user-ID feature, the "user" group and the target
    item; groups from ``feature_groups`` (--model.feature_groups), else the spec's. Features that are
    not sparse features of the spec are skipped (e.g. a user ID kept only for GAUC)."""
    groups = parse_feature_groups(feature_groups) or spec.feature_groups
    unknown = [f for cols in groups.values() for f in cols if f not in spec.sparse_names]
    if feature_groups and unknown:
        raise ValueError(f"--model.feature_groups names unknown sparse features {unknown}")
    personal = [spec.user_id, *groups.get("user", []), spec.item_id]
    return PEPNetInputs(
        fields=field_inputs(spec, init_std),
        domain=tuple(f for f in groups.get("context", []) if f in spec.sparse_names),
        personal=tuple(dict.fromkeys(f for f in personal if f in spec.sparse_names)),  # unique, in order
    )


def store_inputs(
    spec: DatasetSpec,
    feature_groups: str,
    sids: SidTable | None,
    num_tokens: int,
    init_std: float = EMBEDDING_INIT_STD,
) -> StoreInputs:
    """STORE's inputs when given ``sids`` (its codebooks, ``num_tokens`` = its num_sids), else the ID
    twin's (one raw-ID table per tokenized feature, ``num_tokens`` tokens each).

    ``feature_groups``: ``--model.feature_groups`` (see ``resolve_groups``).
    """
    sources = sid_sources(spec)  # {tokenized feature: the batch features that take its codes}
    if sids is not None:
        token_tables = [
            Table(sid_table_name(src, k, spec.item_id), sids.codebook_size,
                  tuple(sid_feature_name(f, k) for f in served), init_std)
            for src, served in sources.items()
            for k in range(sids.num_sids)
        ]  # fmt: skip
    else:
        token_tables = [
            Table(RAW_ITEM_TABLE, num_item_rows(spec), tuple(served), init_std)
            if src == spec.item_id
            else Table(static_table_name(src), spec.feature(src).vocab_size, tuple(served), init_std)
            for src, served in sources.items()
        ]
    return StoreInputs(
        static_tables=static_tables(spec, low_cardinality_features(spec), init_std),
        groups=resolve_groups(spec, feature_groups),
        tokenized=list(spec.high_cardinality),
        token_tables=token_tables,
        num_tokens=num_tokens,
        sid_tokens=sids is not None,
        history=history_inputs(spec),
        num_dense=len(spec.dense),
    )


def resolve_groups(spec: DatasetSpec, feature_groups: str) -> dict[str, list[str]]:
    """Static feature groups: ``feature_groups`` (--model.feature_groups), else the spec's, else one
    group of all.

    Tokenized features (item-valued and high-cardinality) are dropped from groups (they are tokens of
    their own); static features no group names go to an extra group "other"; empty groups are dropped.
    """
    static = low_cardinality_features(spec)
    groups = parse_feature_groups(feature_groups)
    if groups:
        unknown = [f for cols in groups.values() for f in cols if f not in spec.sparse_names]
        if unknown:
            raise ValueError(f"--model.feature_groups names unknown sparse features {unknown}")
    else:
        groups = {g: list(cols) for g, cols in spec.feature_groups.items()}
    groups = {g: [f for f in cols if f in static] for g, cols in groups.items()}
    named = {f for cols in groups.values() for f in cols}
    rest = [f for f in static if f not in named]
    if rest:
        groups["other" if groups else "static"] = rest
    return {g: cols for g, cols in groups.items() if cols}


# -- each model's own config from the flat --model.* one -----------------------------------------------
def model_config(name: str, cfg: ModelConfig) -> ZooConfig:
    """The hyper-parameters model ``name`` takes, read from the trainer-facing ``ModelConfig``."""
    d, mlp_dims, dropout = cfg.embedding_dim, cfg.mlp_dims, cfg.dropout
    if name in ("store", "id"):
        return StoreConfig(
            embedding_dim=d,
            mlp_dims=mlp_dims,
            dropout=dropout,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            ffn_mult=cfg.ffn_mult,
            moba_block_size=cfg.moba_block_size,
            moba_sparsity=cfg.moba_sparsity,
            vanilla_attention=cfg.vanilla_attention,
            moba_gather=cfg.moba_gather,
            moba_gating=cfg.moba_gating,
            moba_query_block_size=cfg.moba_query_block_size,
            moba_kernel=cfg.moba_kernel,
            rotation=cfg.rotation,
            num_rotations=cfg.num_rotations,
            orthogonal_parametrization=cfg.orthogonal_parametrization,
            diversity_lambda=cfg.diversity_lambda,
            orthogonality_weight=cfg.orthogonality_weight,
            history_tokens=cfg.history_tokens,
            history_sid_tokens=cfg.history_sid_tokens,
        )
    if name == "dnn":
        return DNNConfig(embedding_dim=d, mlp_dims=mlp_dims, dropout=dropout)
    if name == "deepfm":
        return DeepFMConfig(embedding_dim=d, mlp_dims=mlp_dims, dropout=dropout)
    if name == "dcn":
        return DCNConfig(embedding_dim=d, mlp_dims=mlp_dims, dropout=dropout, cross_layers=cfg.cross_layers)
    if name == "autoint":
        return AutoIntConfig(
            embedding_dim=d, num_layers=cfg.autoint_layers, num_heads=cfg.autoint_heads, dropout=dropout
        )
    if name == "rankmixer":
        return RankMixerConfig(
            embedding_dim=d,
            num_tokens=cfg.rankmixer_tokens,
            num_layers=cfg.num_layers,
            ffn_mult=cfg.ffn_mult,
            mlp_dims=mlp_dims,
            dropout=dropout,
        )
    if name == "onetrans":
        return OneTransConfig(
            embedding_dim=d,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            ffn_mult=cfg.ffn_mult,
            mlp_dims=mlp_dims,
            dropout=dropout,
        )
    if name == "fm":
        return FMConfig(embedding_dim=d)
    if name == "widedeep":
        return WideDeepConfig(embedding_dim=d, mlp_dims=mlp_dims, dropout=dropout)
    if name == "gdcn":
        return GDCNConfig(embedding_dim=d, mlp_dims=mlp_dims, dropout=dropout, cross_layers=cfg.cross_layers)
    if name == "masknet":
        return MaskNetConfig(
            embedding_dim=d,
            mlp_dims=mlp_dims,
            dropout=cfg.masknet_dropout,
            mode=cfg.masknet_mode,
            num_blocks=cfg.masknet_blocks,
            block_dim=cfg.masknet_block_dim,
            embedding_norm=cfg.masknet_embedding_norm,
            reduction_ratio=cfg.masknet_reduction_ratio,
        )
    if name == "pepnet":
        return PEPNetConfig(embedding_dim=d, mlp_dims=mlp_dims, dropout=dropout)
    if name == "ssr":
        return SSRConfig(
            embedding_dim=d,
            mlp_dims=mlp_dims,
            dropout=dropout,
            variant=cfg.ssr_variant,
            num_views=cfg.ssr_views,
            view_dim=cfg.ssr_view_dim,
            num_layers=cfg.ssr_layers,
        )
    _check_name(name)
    raise ValueError(f"model {name!r} has no config")  # a name added to MODEL_NAMES only
