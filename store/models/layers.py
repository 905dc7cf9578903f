"""Small layers shared by the model zoo: the output type, MLPs and the TorchRec embedding collections.

Shape letters: B batch, F feature fields, D embedding width, L sequence length.

Every model keeps ALL its sparse embeddings in TorchRec collections so the trainer can shard them,
and passes ``batch.sparse`` (STORE's SID codebooks: ``batch.sid``) straight into them (no KJT
surgery before the lookup, so
``TrainPipelineSparseDist`` can overlap the input distribution). Collections are built on the
``device`` given (``meta`` for sharding later); dense layers on the default device.

Models never read the ``DatasetSpec``: ``store.models.zoo.build_model`` turns it into explicit inputs
(``Table`` lists, feature names, ``HistoryFeature`` lengths, the dense count), with the helpers of the
"which feature is what" section below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from data_pipeline.spec import DatasetSpec

EMBEDDING_INIT_STD = 1e-4
"""Default standard deviation of every embedding table's start (``--model.embedding_init_std``): the
same for raw-ID and SID tables whatever their row count (TorchRec's default, uniform in
+-1/sqrt(rows), would give a 1M-row ID table a far smaller start than a 256-row codebook). 1e-4 is
deepctr-torch's; it scored as well as or better than the previous +-0.05 (std 0.029) on MovieLens and
the synthetic data (docs/recipe.md)."""


def init_bound(std: float) -> float:
    """Tables start uniform in [-a, a] with a = sqrt(3) * std (the uniform law of that std): the
    bounds are what FBGEMM's fused tables take (``weight_init_min/max``), on every sharding type and
    TorchRec version."""
    return math.sqrt(3.0) * std


RAW_ITEM_TABLE = "t_item"
"""The raw item-ID table shared by every item-valued feature in the non-SID models."""
EXCLUSIVE_INPUT = "exclusive_input"
"""Attribute set to True on an embedding collection whose input KJT holds exactly the features it
serves (STORE's SID codebooks read ``batch.sid``): the trainer may replicate its tables, which
TorchRec's data-parallel EmbeddingCollection allows only for such an input."""


@dataclass
class ModelOutput:
    """What every model returns."""

    logits: torch.Tensor
    """(B,) click logits; the trainer applies the BCE loss."""
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    """Regularisers, already multiplied by their weights, scalar tensors: added to the loss, logged each."""


def mlp(in_dim: int, dims: tuple[int, ...] | list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear -> ReLU -> Dropout for each size in ``dims`` (hidden layers only, no output layer)."""
    layers: list[nn.Module] = []
    for d in dims:
        layers += [nn.Linear(in_dim, d), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = d
    return nn.Sequential(*layers)


class Head(nn.Module):
    """MLP then a linear layer to one logit. forward(x (B, in_dim)) -> (B,)."""

    def __init__(self, in_dim: int, dims: tuple[int, ...], dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = mlp(in_dim, dims, dropout)
        self.out = nn.Linear(dims[-1] if dims else in_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(x)).squeeze(-1)


def output_bias(model: nn.Module) -> nn.Parameter:
    """The bias every logit of ``model`` gets, whatever the input: ``model.head.out.bias`` (a ``Head``),
    ``model.out.bias`` (a final ``nn.Linear(., 1)``) or ``model.bias`` (a 1-element parameter).

    Every model of the zoo has exactly one of these; ``init_output_bias`` sets it from the train split's
    click rate, so training starts from calibrated predictions instead of p = 0.5.
    """
    head = getattr(model, "head", None)
    if isinstance(head, Head):
        return head.out.bias
    out = getattr(model, "out", None)
    if isinstance(out, nn.Linear) and out.out_features == 1 and out.bias is not None:
        return out.bias
    bias = getattr(model, "bias", None)
    if isinstance(bias, nn.Parameter) and bias.numel() == 1:
        return bias
    raise TypeError(
        f"{type(model).__name__} has no output bias: name its final layer `head` (a Head) or `out` "
        "(nn.Linear(in, 1)), or give it a 1-element parameter `bias`"
    )


def init_output_bias(model: nn.Module, positive_rate: float) -> None:
    """Set ``output_bias(model)`` to logit(positive_rate) (clamped to [1e-6, 1 - 1e-6]), so that
    the untrained model predicts the base rate. Rare clicks (0.4% on Open Bandit) otherwise spend
    their first steps, and much of their log loss, walking down from 0.5."""
    p = min(max(float(positive_rate), 1e-6), 1 - 1e-6)
    with torch.no_grad():
        output_bias(model).fill_(math.log(p / (1 - p)))


# -- explicit inputs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    """One embedding table, D wide: its name, rows and the batch features it serves."""

    name: str
    """Table name (``t_<...>``): what the sharding plan and checkpoints key on."""
    rows: int
    """num_embeddings."""
    features: tuple[str, ...]
    """Keys of the batch KJT it serves."""
    init_std: float = EMBEDDING_INIT_STD
    """Standard deviation of its uniform start (``init_bound``)."""


@dataclass(frozen=True)
class HistoryFeature:
    """An item-valued feature other than the target item (e.g. ``hist_items``)."""

    name: str
    """Its key in the batch KJT."""
    max_len: int
    """L it is padded to as tokens: 1 when single-valued, else the spec's max_len (0: the longest list
    in the batch)."""


@dataclass
class FieldInputs:
    """A batch's raw features as the baselines read them (``store.models.inputs.field_inputs(spec)``)."""

    static_tables: list[Table]
    """One table ``t_<f>`` per static (not item-valued) sparse feature f, in spec order."""
    item_table: Table | None
    """``t_item``: raw item IDs, serving every item-valued feature in spec order (None without items)."""
    item_feature: str
    """The target item's feature ("" without items)."""
    history: list[HistoryFeature]
    """Item-valued features other than the target item."""
    num_dense: int
    """Dense features, fed as one more field through a linear layer when > 0."""


# -- which feature is what (read by store.models.zoo to build the inputs above) -------------------------
def static_features(spec: DatasetSpec) -> list[str]:
    """Sparse features that are not item IDs (user, context, category ...), in spec order."""
    return [f.name for f in spec.sparse if not f.item_ref]


def low_cardinality_features(spec: DatasetSpec) -> list[str]:
    """STORE's static features: neither item-valued nor high-cardinality (those become SID tokens)."""
    return [f.name for f in spec.sparse if not f.item_ref and not f.high_cardinality]


def history_features(spec: DatasetSpec) -> list[str]:
    """Item-valued features other than the target item (e.g. ``hist_items``)."""
    return [f.name for f in spec.sparse if f.item_ref and f.name != spec.item_id]


def num_item_rows(spec: DatasetSpec) -> int:
    """Rows of the raw item-ID table (``DatasetSpec.table_rows``; 0 without item features)."""
    items = [f.name for f in spec.sparse if f.item_ref]
    return spec.table_rows(items[0]) if items else 0


def static_table_name(feature: str) -> str:
    return f"t_{feature}"


def _check_unique(names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"embedding table names collide: {dupes} (rename the sparse features)")


def bag_configs(tables: list[Table], dim: int, suffix: str = "") -> list[EmbeddingBagConfig]:
    """One mean-pooled EmbeddingBagConfig per table, ``dim`` wide, named ``<table><suffix>``."""
    return [
        EmbeddingBagConfig(
            name=t.name + suffix,
            embedding_dim=dim,
            num_embeddings=t.rows,
            feature_names=list(t.features),
            pooling=PoolingType.MEAN,
            weight_init_min=-init_bound(t.init_std),
            weight_init_max=init_bound(t.init_std),
        )
        for t in tables
    ]


# -- baselines: one pooled embedding per field ---------------------------------------------------------
FIRST_ORDER_WIDTH = 4
"""FBGEMM's fused (sharded) tables need a width divisible by 4; a 1-wide table fails to shard."""


class FieldEmbedder(nn.Module):
    """One EmbeddingBagCollection over every raw feature -> one D-vector per field.

    Static features have their own tables; all item-valued features (``item_id``, ``hist_items``)
    share the raw item table ``t_item`` (num_items rows), mean-pooled (an empty history gives 0).
    Dense features, if any, become one more field through a linear layer.
    With ``first_order`` the collection also holds narrow tables (``<table>_w``, FIRST_ORDER_WIDTH wide,
    averaged to one weight per ID) for FM's linear term.

    forward(batch) -> fields (B, F, D) and first-order term (B,) (zeros without ``first_order``).
    """

    def __init__(
        self, inputs: FieldInputs, dim: int, device: torch.device | None = None, first_order: bool = False
    ) -> None:
        super().__init__()
        shared = inputs.static_tables + ([inputs.item_table] if inputs.item_table is not None else [])
        tables = bag_configs(shared, dim)
        if first_order:
            tables += bag_configs(shared, FIRST_ORDER_WIDTH, suffix="_w")
        _check_unique([t.name for t in tables])
        self.ebc = EmbeddingBagCollection(tables=tables, device=device)
        features = [f for t in shared for f in t.features]  # static features, then the item-valued ones
        # A feature served by two tables is keyed "<feature>@<table>" in the pooled output (TorchRec).
        table_of = {f: t.name for t in shared for f in t.features}
        self.keys = [f"{f}@{table_of[f]}" if first_order else f for f in features]
        self.first_order_keys = [f"{f}@{table_of[f]}_w" for f in features] if first_order else []
        self.dense = nn.Linear(inputs.num_dense, dim) if inputs.num_dense else None
        self.num_sparse_fields = len(features)
        """The first fields are the sparse features'; the dense field, if any, comes last."""
        self.num_fields = len(features) + (1 if inputs.num_dense else 0)

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.ebc(batch.sparse).to_dict()
        fields = [pooled[k] for k in self.keys]
        if self.dense is not None:
            fields.append(self.dense(batch.dense))
        if self.first_order_keys:
            # each ID's weight is the mean of its row: it then moves at the sparse LR like a 1-wide
            # weight (row-wise AdaGrad moves every column by the LR, so a sum would move 4x faster)
            first = torch.cat([pooled[k] for k in self.first_order_keys], 1).sum(1) / FIRST_ORDER_WIDTH
        else:
            first = torch.zeros(batch.labels.shape[0], device=batch.labels.device)
        return torch.stack(fields, dim=1), first


# -- transformer models: pooled static features + sequences of item embeddings ------------------------
class StaticEmbedder(nn.Module):
    """EmbeddingBagCollection over the static features' tables. forward(kjt) -> {feature: (B, D)}."""

    def __init__(self, tables: list[Table], dim: int, device: torch.device | None = None) -> None:
        super().__init__()
        configs = bag_configs(tables, dim)
        _check_unique([t.name for t in configs])
        self.ebc = EmbeddingBagCollection(tables=configs, device=device) if configs else None

    def forward(self, kjt: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        return {} if self.ebc is None else self.ebc(kjt).to_dict()


def item_collection(
    tables: list[Table], dim: int, pooled: bool, device: torch.device | None = None
) -> EmbeddingBagCollection | EmbeddingCollection:
    """The collection of ``tables``, all D wide: mean-pooled bags (``pooled``, an
    EmbeddingBagCollection) or per-position sequences (an EmbeddingCollection)."""
    _check_unique([t.name for t in tables])
    if pooled:
        return EmbeddingBagCollection(tables=bag_configs(tables, dim), device=device)
    seqs = [
        EmbeddingConfig(name=t.name, num_embeddings=t.rows, feature_names=list(t.features), embedding_dim=dim,
                        weight_init_min=-init_bound(t.init_std), weight_init_max=init_bound(t.init_std))
        for t in tables
    ]  # fmt: skip
    return EmbeddingCollection(tables=seqs, device=device)


def sequence_collection(
    tables: list[Table], dim: int, device: torch.device | None = None
) -> EmbeddingCollection:
    """EmbeddingCollection of ``tables``, all D wide."""
    return item_collection(tables, dim, pooled=False, device=device)


def padded(jt: JaggedTensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Jagged (B, <=L, D) embeddings -> padded (B, L, D) and valid mask (B, L) (keeps the first L)."""
    dense = jt.to_padded_dense(desired_length=max_len, padding_value=0.0)
    valid = torch.arange(max_len, device=dense.device)[None, :] < jt.lengths()[:, None]
    return dense, valid


def sequence_length(max_len: int, jt: JaggedTensor) -> int:
    """L for a history feature: ``max_len`` (``HistoryFeature.max_len``), or the longest list in the
    batch when it is 0."""
    return max_len if max_len > 0 else max(1, int(jt.lengths().max()) if jt.lengths().numel() else 1)


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of (B, L, D) where valid (B, L); all-invalid rows give 0."""
    w = valid.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


class TokenwiseLinear(nn.Module):
    """A separate linear map per token (RankMixer's per-token FFN, OneTrans's token-specific weights).

    forward(x (B, T, in_dim)) -> (B, T, out_dim).
    """

    def __init__(self, num_tokens: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = in_dim**-0.5  # nn.Linear's default range
        self.weight = nn.Parameter(torch.empty(num_tokens, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_tokens, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bti,tio->bto", x, self.weight) + self.bias
