"""Analytical forward FLOPs of STORE's transformer (and the whole STORE / ID model) per batch, and of
the field baselines whose matmuls are all linear layers (``linear_model_flops``); ``model_flops(name)``
reads the count a model's ``ModelSpec`` declares.

A multiply-add counts 2 FLOPs (as ``torch.utils.flop_counter`` does); biases, norms, softmax and
activations are not counted. Shape letters: B batch, T tokens, D width, H heads, L layers,
f = ffn_mult, P MoBA block size, N = ceil(T / P) blocks, S = kept blocks per query.

Per layer:
    projections    QKV and output:             2 * B * T * D * 3D  +  2 * B * T * D * D = 8 B T D^2
    gating (MoBA)  block gating, mean query . mean key per (query block, key block):  2 * B * Nq * N * D
                   token gating, query . mean key per block:                       2 * B * T * N * D
    attention      QK^T and AV of the Q queries over the J keys each sees:  2 * (2 * B * Q * J * D)
                   dense: Q = J = T; MoBA: J = S * P (a padded last block is computed too), and
                   Q = Nq * Pq with block gating (query blocks of Pq tokens, Nq = ceil(T / Pq): the
                   block-sparse kernel runs whole query blocks), Q = T with token gating
    ffn            two linear maps:            2 * (2 * B * T * D * f D)
plus the head MLP and, for the whole model, the feature-group MLPs, the rotation
(2 * B * R * M^2), its projection and the ID model's item projection ("other").
R's orthogonal parametrization (a few M x M matrix products per step, independent of B) is not
counted. A training step costs about 3x the forward count (backward ~ 2x forward).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from store.models import registry
from store.models.attention import num_blocks, num_kept_blocks
from store.models.layers import TokenwiseLinear


@dataclass
class FlopsReport:
    """Forward FLOPs of one batch, by part."""

    batch_size: int
    """B the counts are for."""
    num_tokens: int
    """T: tokens in the attention."""
    projections: int
    """QKV and output projections, all layers."""
    gating: int
    """MoBA block scores (0 for dense attention)."""
    attention_core: int
    """QK^T and AV over the kept keys."""
    ffn: int
    """Feed-forward sublayers."""
    head: int = 0
    """Prediction head MLP."""
    other: int = 0
    """Everything before the transformer: group MLPs, rotation, projections to tokens."""

    @property
    def attention_flops(self) -> int:
        return self.projections + self.gating + self.attention_core

    @property
    def total_flops(self) -> int:
        return self.attention_flops + self.ffn + self.head + self.other

    @property
    def attention_tflops(self) -> float:
        """Attention sublayers (projections + gating + QK^T/AV), TFLOPs per batch."""
        return self.attention_flops / 1e12

    @property
    def attention_core_tflops(self) -> float:
        """The part sparsity changes: gating + QK^T/AV, TFLOPs per batch."""
        return (self.gating + self.attention_core) / 1e12

    @property
    def total_tflops(self) -> float:
        return self.total_flops / 1e12


def transformer_flops(
    batch_size: int,
    num_tokens: int,
    dim: int,
    num_layers: int,
    ffn_mult: int,
    block_size: int = 2,
    sparsity: float = 0.5,
    vanilla: bool = False,
    gating: str = "block",
    query_block_size: int = 0,
) -> FlopsReport:
    """FLOPs of ``num_layers`` STORE transformer layers (``store.models.attention.TransformerLayer``);
    ``gating``: MoBA's "block" (query blocks of ``query_block_size``, 0: ``block_size``) or "token". MoBA is counted as its block-sparse algorithm (the
    kept blocks only), which the block_sparse, flex and gather kernels execute; masked_sdpa computes
    the dense scores and masks them."""
    b, t, d, layers = batch_size, num_tokens, dim, num_layers
    if vanilla:
        queries, keys, gate = t, t, 0
    else:
        n = num_blocks(t, block_size)
        keys = num_kept_blocks(n, sparsity) * block_size
        if gating == "block":
            pq = query_block_size or block_size
            nq = num_blocks(t, pq)
            queries, gate = nq * pq, 2 * b * nq * n * d
        else:
            queries, gate = t, 2 * b * t * n * d
    return FlopsReport(
        batch_size=b,
        num_tokens=t,
        projections=layers * 8 * b * t * d * d,
        gating=layers * gate,
        attention_core=layers * 4 * b * queries * keys * d,
        ffn=layers * 4 * ffn_mult * b * t * d * d,
    )


def linear_flops(module: nn.Module, rows: int) -> int:
    """2 * rows * in * out summed over the nn.Linear layers inside ``module``."""
    return sum(
        2 * rows * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear)
    )


def store_model_flops(model: nn.Module, batch_size: int, history_len: int | None = None) -> FlopsReport:
    """Forward FLOPs of a ``StoreModel`` ("store" or "id") per batch of ``batch_size`` rows.

    ``history_len``: history items per history feature when ``history_tokens`` is on (default:
    each feature's max_len, the padded length the model uses); each is K tokens with
    ``history_sid_tokens``.
    """
    cfg, b = model.cfg, batch_size  # cfg: the ModelConfig it was built with
    t = model.num_fixed_tokens
    per_item = model.num_item_tokens if cfg.history_sid_tokens else 1
    split_items = 0  # ID twin with history_sid_tokens: history items through their table's Linear(D, K*D)
    if cfg.history_tokens:
        for f in model.history:
            length = history_len if history_len is not None else f.max_len
            if length <= 0:
                raise ValueError(f"history feature {f.name!r} has max_len 0: pass history_len")
            t += length * per_item
            if cfg.history_sid_tokens and hasattr(model.items, "split"):
                split = model.items.split[model.items.table_index[f.name]]
                split_items += linear_flops(split, b * length)
    report = transformer_flops(
        b,
        t,
        cfg.embedding_dim,
        cfg.num_layers,
        cfg.ffn_mult,
        cfg.moba_block_size,
        cfg.moba_sparsity,
        cfg.vanilla_attention,
        cfg.moba_gating,
        cfg.moba_query_block_size,
    )
    report.head = linear_flops(model.head, b)
    other = linear_flops(model.group_mlps, b) + split_items
    if model.rotation is not None:
        r, m = model.rotation.rotations.shape[:2]
        other += 2 * b * r * m * m + linear_flops(model.rotation.proj, b * r)
    if hasattr(model.items, "split"):  # the ID twin: one Linear(D, K*D) per tokenized feature
        other += linear_flops(model.items.split, b)
    report.other = other
    return report


def store_flops(model: nn.Module, batch_size: int) -> int:
    """Forward FLOPs per batch of a ``StoreModel`` ("store", "id"; ``store_model_flops`` by part)."""
    return store_model_flops(model, batch_size).total_flops


# -- field baselines: every matmul is an nn.Linear or a TokenwiseLinear, applied once per row ----------
def linear_model_flops(model: nn.Module, batch_size: int) -> int:
    """Forward FLOPs per batch of ``batch_size`` rows of a model whose forward FLOPs are exactly those of
    its ``nn.Linear`` and ``TokenwiseLinear`` layers, each applied once per row (the ``ModelSpec.flops``
    of such models; tests/test_zoo_more.py checks the count against torch's FlopCounterMode). Their
    FM, gate and mask products are elementwise and SSR's static filter a gather: not counted, like the
    norms and activations above. The embedding tables may be on the meta device."""
    tokenwise = sum(m.weight.numel() for m in model.modules() if isinstance(m, TokenwiseLinear))
    return linear_flops(model, batch_size) + 2 * batch_size * tokenwise  # weight (T, in, out): T maps


def model_flops(name: str, model: nn.Module, batch_size: int) -> int:
    """Analytical forward FLOPs per batch of zoo model ``name`` (its ``ModelSpec.flops``); ValueError
    for a model without one (count those with torch's FlopCounterMode)."""
    flops = registry.get(name).flops
    if flops is None:
        have = [spec.name for spec in registry.specs() if spec.flops is not None]
        raise ValueError(f"no analytical FLOPs for model {name!r} (have {', '.join(have)})")
    return flops(model, batch_size)
