"""Model hyper-parameters shared by every model of the zoo (``store.models.zoo.build_model``).

One flat dataclass: the trainer exposes each field as ``--model.<field>``, so one config can drive a
whole comparison. The models never see it: ``build_model`` hands each model its own small config
with only the fields it uses (``store.models.zoo.model_config``; e.g. ``DCNConfig.cross_layers``).
"""

from __future__ import annotations

from dataclasses import dataclass

from store.models.attention import GATINGS, KERNELS
from store.models.layers import EMBEDDING_INIT_STD


@dataclass
class ModelConfig:
    """Hyper-parameters of STORE, its ID variant and the baselines."""

    # -- shared --------------------------------------------------------------------------------
    embedding_dim: int = 16
    """D: width of every embedding table and of every token."""
    mlp_dims: tuple[int, ...] = (64, 32)
    """Hidden sizes of the prediction head (and of the deep towers of DNN / DeepFM / DCN)."""
    dropout: float = 0.0
    """Dropout probability in MLPs and attention sublayers (MaskNet has its own: --model.masknet_dropout)."""
    embedding_init_std: float = EMBEDDING_INIT_STD
    """Standard deviation of every embedding table's start (uniform law; raw-ID tables and SID codebooks
    alike)."""

    # -- STORE / ID transformer ------------------------------------------------------------------
    num_layers: int = 2
    """L: transformer layers (STORE, ID, RankMixer, OneTrans)."""
    num_heads: int = 2
    """Attention heads; must divide embedding_dim."""
    ffn_mult: int = 2
    """Feed-forward hidden width = ffn_mult * embedding_dim."""
    moba_block_size: int = 2
    """MoBA key/value block size (tokens per block)."""
    moba_sparsity: float = 0.5
    """Fraction of key blocks each query skips; kept blocks = max(1, round((1 - sparsity) * n_blocks))."""
    vanilla_attention: bool = False
    """Use dense attention instead of MoBA (ablation)."""
    moba_gather: bool = False
    """Run MoBA through the per-query gather kernel (executes only the kept blocks' FLOPs; slow): the same as
    --model.moba_kernel gather."""
    moba_gating: str = "block"
    """MoBA gate granularity: "block" (each query block of moba_block_size tokens picks its key blocks
    together, what block-sparse kernels need) or "token" (each query picks its own, the MoBA paper's rule)."""
    moba_query_block_size: int = 0
    """Block gating: queries per query block, each block sharing one choice of key blocks (0: moba_block_size).
    Larger than moba_block_size keeps the key choice fine while the block-sparse kernel runs larger, faster
    attention calls."""
    moba_kernel: str = "auto"
    """MoBA kernel (store/models/attention.py): auto, block_sparse, flex, masked_sdpa or gather. auto: flex
    on CUDA for blocks of 128s, block_sparse for blocks of >= 16 tokens, else masked_sdpa (token gating:
    masked_sdpa)."""
    rotation: bool = True
    """Rotate the static-feature block by orthogonal matrices; False feeds one token per group (ablation)."""
    num_rotations: int = 0
    """Rotated tokens K_r; 0 means one per item token (= number of SIDs)."""
    orthogonal_parametrization: bool = True
    """Keep each R exactly orthogonal (torch orthogonal parametrization); False learns free R + penalty."""
    diversity_lambda: float = 0.1
    """lambda of the diversity regulariser -lambda * sum_{i<j} ||R_i - R_j||_F^2."""
    orthogonality_weight: float = 1.0
    """Weight of the penalty sum_i ||R_i^T R_i - I||_F^2 (only when orthogonal_parametrization is False)."""
    feature_groups: str = ""
    """Static feature groups 'name=f1,f2;name2=f3' (empty: the spec's feature_groups, else one group)."""
    history_tokens: bool = False
    """Feed each history item as its own token; False pools the history into one token."""
    history_sid_tokens: bool = False
    """With history_tokens: one token per SID of each history item (K per item; the ID model splits each item's
    embedding into K), for a few hundred tokens; False: one per item (its SID embeddings summed)."""
    id_item_tokens: int = 0
    """ID model: tokens each high-cardinality feature's raw-ID embedding is projected into (0: as many as the
    SIDs, else 1)."""

    # -- baselines -----------------------------------------------------------------------------
    cross_layers: int = 3
    """DCN-v2: full-rank cross layers; GDCN: gated cross layers."""
    autoint_layers: int = 2
    """AutoInt: self-attention layers over the feature fields."""
    autoint_heads: int = 2
    """AutoInt: heads per self-attention layer; must divide embedding_dim."""
    rankmixer_tokens: int = 4
    """RankMixer: tokens the feature fields are packed into; must divide embedding_dim."""
    masknet_mode: str = "parallel"
    """MaskNet: "parallel" (every MaskBlock on the embedding, then the mlp_dims MLP) or "serial" (each
    MaskBlock on the previous one)."""
    masknet_blocks: int = 3
    """MaskNet: MaskBlocks."""
    masknet_block_dim: int = 64
    """MaskNet: output width of every MaskBlock."""
    masknet_embedding_norm: bool = False
    """MaskNet: layer-normalize each field's embedding before the blocks on the embedding (the paper's
    LN_EMB; off by default: on MovieLens-100K it costs 0.005 validation AUC, store/models/masknet.py)."""
    masknet_reduction_ratio: float = 2.0
    """MaskNet: r, the width of each mask's aggregation layer over the width of the vector it masks."""
    masknet_dropout: float = 0.5
    """MaskNet: dropout after every MaskBlock and in its MLP (its own default: at 0 the model, 34x DNN's
    dense parameters, overfits; store/models/masknet.py)."""
    ssr_variant: str = "static"
    """SSR: the views' filter, "static" (SSR-S, fixed random dimension subsets) or "dynamic" (SSR-D,
    iterative competitive sparsity)."""
    ssr_views: int = 4
    """SSR: views per layer."""
    ssr_view_dim: int = 32
    """SSR: dimensions each view keeps and fuses."""
    ssr_layers: int = 2
    """SSR: filter-then-fuse layers."""

    def validate(self) -> None:
        """Raise ValueError naming the flag (``--model.<field>``) and the rule it breaks."""

        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"--model.{name} {rule}, got {getattr(self, name)!r}")

        positive = ("embedding_dim", "num_heads", "ffn_mult", "moba_block_size", "autoint_heads")
        positive += ("rankmixer_tokens", "masknet_blocks", "masknet_block_dim", "ssr_views", "ssr_view_dim")
        positive += ("ssr_layers",)
        for name in positive:
            if getattr(self, name) <= 0:
                raise bad(name, "must be > 0")
        for name in ("num_layers", "num_rotations", "id_item_tokens", "cross_layers", "autoint_layers"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if not self.mlp_dims or any(int(d) <= 0 for d in self.mlp_dims):
            raise bad("mlp_dims", "must be a non-empty list of positive sizes")
        if not self.embedding_init_std > 0:
            raise bad("embedding_init_std", "must be > 0")
        if not self.masknet_reduction_ratio > 0:
            raise bad("masknet_reduction_ratio", "must be > 0")
        for name in ("dropout", "masknet_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise bad(name, "must be in [0, 1)")
        if not 0.0 <= self.moba_sparsity < 1.0:
            raise bad("moba_sparsity", "must be in [0, 1)")
        if self.moba_query_block_size < 0:
            raise bad("moba_query_block_size", "must be >= 0 (0: --model.moba_block_size)")
        if self.moba_gating not in GATINGS:
            raise bad("moba_gating", f"must be one of {', '.join(GATINGS)}")
        if self.moba_kernel not in KERNELS:
            raise bad("moba_kernel", f"must be one of {', '.join(KERNELS)}")
        if self.moba_kernel in ("block_sparse", "flex") and self.moba_gating != "block":
            raise bad("moba_kernel", "needs --model.moba_gating block (one key set per query block)")
        if self.moba_gather and self.moba_kernel not in ("auto", "gather"):
            raise bad("moba_gather", f"conflicts with --model.moba_kernel={self.moba_kernel}")
        if self.history_sid_tokens and not self.history_tokens:
            raise bad("history_sid_tokens", "needs --model.history_tokens (one token per history item first)")
        if self.diversity_lambda < 0 or self.orthogonality_weight < 0:
            name = "diversity_lambda" if self.diversity_lambda < 0 else "orthogonality_weight"
            raise bad(name, "must be >= 0")
        for name, heads in (("num_heads", self.num_heads), ("autoint_heads", self.autoint_heads)):
            if self.embedding_dim % heads:
                raise bad(name, f"must divide --model.embedding_dim={self.embedding_dim}")
        if self.embedding_dim % self.rankmixer_tokens:
            raise bad("rankmixer_tokens", f"must divide --model.embedding_dim={self.embedding_dim}")
        if self.masknet_mode not in ("serial", "parallel"):
            raise bad("masknet_mode", "must be serial or parallel")
        if self.ssr_variant not in ("static", "dynamic"):
            raise bad("ssr_variant", "must be static or dynamic")
        parse_feature_groups(self.feature_groups)


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
