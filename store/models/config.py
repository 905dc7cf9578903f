"""Model hyper-parameters (``store.models.zoo.build_model``), the trainer's ``--model.*`` flags.

``ModelConfig``: the fields many models share (``--model.embedding_dim``, ``--model.num_layers``,
STORE's and its ID twin's options), and one group per model with hyper-parameters of its own,
``--model.<name>.<field>`` (``--model.masknet.mode serial``): the ``config`` dataclass of its
``ModelSpec``, declared in the model's module (``store.models.registry``). Every model takes the
whole config and reads the shared fields and its own group.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from store.models import registry
from store.models.attention import GATINGS, KERNELS
from store.models.inputs import parse_feature_groups
from store.models.layers import EMBEDDING_INIT_STD


@dataclass
class SharedModelConfig:
    """The hyper-parameters several models read (``ModelConfig`` adds one group per model)."""

    # -- shared --------------------------------------------------------------------------------
    embedding_dim: int = 16
    """D: width of every embedding table and of every token."""
    mlp_dims: tuple[int, ...] = (64, 32)
    """Hidden sizes of the prediction head (and of the deep towers of DNN / DeepFM / DCN)."""
    dropout: float = 0.0
    """Dropout probability in MLPs and attention sublayers (MaskNet has its own: --model.masknet.dropout)."""
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

    def validate(self) -> None:
        """Raise ValueError naming the flag (``--model.<field>``, ``--model.<name>.<field>``) and the
        rule it breaks."""

        def bad(name: str, rule: str) -> ValueError:
            return registry.flag_error(name, getattr(self, name), rule)

        for name in ("embedding_dim", "num_heads", "ffn_mult", "moba_block_size"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be > 0")
        for name in ("num_layers", "num_rotations", "id_item_tokens"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if not self.mlp_dims or any(int(d) <= 0 for d in self.mlp_dims):
            raise bad("mlp_dims", "must be a non-empty list of positive sizes")
        if not self.embedding_init_std > 0:
            raise bad("embedding_init_std", "must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "must be in [0, 1)")
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
        if self.embedding_dim % self.num_heads:
            raise bad("num_heads", f"must divide --model.embedding_dim={self.embedding_dim}")
        parse_feature_groups(self.feature_groups)
        for spec in registry.specs():
            group = getattr(self, spec.group, None)
            if hasattr(group, "validate"):
                group.validate(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SharedModelConfig:
        """The config a run recorded (``dataclasses.asdict``, e.g. summary.json's ``model_config``):
        lists back to tuples, each model's group back to its dataclass; missing fields take their
        defaults, unknown ones are dropped."""

        def typed(value: Any) -> Any:
            return tuple(value) if isinstance(value, list) else value

        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            value = values[f.name]
            if isinstance(value, dict):  # a model's group: f.default_factory is its dataclass
                known = {g.name for g in dataclasses.fields(f.default_factory)}
                value = f.default_factory(**{k: typed(v) for k, v in value.items() if k in known})
            kwargs[f.name] = typed(value)
        return cls(**kwargs)


def _with_model_groups(base: type) -> type:
    """``base`` plus one field per model with a config of its own: ``<group>: <its config>``."""
    groups = [
        (spec.group, spec.config, dataclasses.field(default_factory=spec.config))
        for spec in registry.specs()
        if spec.config is not None
    ]
    cls = dataclasses.make_dataclass("ModelConfig", groups, bases=(base,))
    cls.__module__ = __name__
    cls.__doc__ = "Hyper-parameters of STORE, its ID variant and the baselines: shared, and per model."
    return cls


ModelConfig = _with_model_groups(SharedModelConfig)
