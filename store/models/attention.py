"""STORE's efficient attention: MoBA (mixture of block attention), with its dense, masked reference.

Shape letters: B batch, H heads, T tokens, E head dim, N key blocks (ceil(T / block_size)),
S kept blocks per query (``num_kept_blocks``), P block size.

MoBA splits the keys/values into N blocks of P tokens. Each query scores every block by the dot
product of the query with the block's mean key (the "gate") and attends only to the keys of its
top-S blocks. Attention here is non-causal over a small token set (item SIDs, rotated feature
blocks, optional history), so unlike causal MoBA the query's own block is NOT forced into its
selection: there is no future to hide, every block is equally eligible, and the choice is purely
content-based. Padded keys (``key_valid`` False, e.g. short histories) are never attended; a block
holding only padding gets gate -inf, so it is only picked when fewer than S real blocks exist, and
then contributes nothing. The gate is a discrete top-k choice and carries no gradient (as in MoBA).

``moba_attention`` is the block-sparse computation (gathers each query's S blocks: O(T * S * P)
scores instead of O(T^2)); ``moba_reference`` is the same maths as dense attention with a mask,
which the tests compare it with, forward and backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def num_blocks(num_tokens: int, block_size: int) -> int:
    """N: key blocks for T tokens (the last one may be partly padding)."""
    return -(-num_tokens // block_size)


def num_kept_blocks(n_blocks: int, sparsity: float) -> int:
    """S = max(1, round((1 - sparsity) * N)): blocks each query attends to."""
    return max(1, min(n_blocks, round((1.0 - sparsity) * n_blocks)))


def _blocked(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B, H, T, E) -> (B, H, N, P, E), zero-padding T up to N * P."""
    b, h, t, e = x.shape
    n = num_blocks(t, block_size)
    return F.pad(x, (0, 0, 0, n * block_size - t)).view(b, h, n, block_size, e)


def _valid_blocked(key_valid: torch.Tensor | None, b: int, t: int, block_size: int, device) -> torch.Tensor:
    """(B, T) bool (None = all valid) -> (B, N, P) bool, padding positions False."""
    if key_valid is None:
        key_valid = torch.ones(b, t, dtype=torch.bool, device=device)
    n = num_blocks(t, block_size)
    return F.pad(key_valid, (0, n * block_size - t), value=False).view(b, n, block_size)


@torch.no_grad()
def moba_select_blocks(
    q: torch.Tensor, k: torch.Tensor, block_size: int, kept: int, key_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Each query's top-``kept`` key blocks by gate score q . mean(block keys).

    q, k: (B, H, T, E); key_valid: (B, T) bool or None. Returns block indices (B, H, T, S), long.
    """
    b, _, t, _ = k.shape
    valid = _valid_blocked(key_valid, b, t, block_size, k.device)  # (B, N, P)
    count = valid.sum(-1)  # (B, N)
    kb = _blocked(k, block_size) * valid[:, None, :, :, None]
    mean_key = kb.sum(3) / count.clamp(min=1)[:, None, :, None].to(k.dtype)  # (B, H, N, E)
    gate = q @ mean_key.transpose(-1, -2)  # (B, H, T, N)
    gate = gate.masked_fill((count == 0)[:, None, None, :], float("-inf"))
    return gate.topk(kept, dim=-1).indices


def moba_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    block_idx: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Block-sparse attention: each query attends to the keys of its selected blocks only.

    q, k, v: (B, H, T, E); block_idx: (B, H, T, S) from ``moba_select_blocks``; key_valid: (B, T).
    Returns (B, H, T, E).
    """
    b, h, t, e = q.shape
    s = block_idx.shape[-1]
    valid = _valid_blocked(key_valid, b, t, block_size, q.device)  # (B, N, P)
    n = valid.shape[1]
    # Gather the S selected blocks of every query: (B*H, T*S) block ids into (B*H, N, P*E).
    rows = torch.arange(b * h, device=q.device)[:, None]
    flat_idx = block_idx.reshape(b * h, t * s)
    kg = _blocked(k, block_size).reshape(b * h, n, block_size * e)[rows, flat_idx]
    vg = _blocked(v, block_size).reshape(b * h, n, block_size * e)[rows, flat_idx]
    kg = kg.view(b, h, t, s * block_size, e)
    vg = vg.view(b, h, t, s * block_size, e)
    valid_bh = valid.reshape(b, 1, n, block_size).expand(b, h, n, block_size).reshape(b * h, n, block_size)
    mask = valid_bh[rows, flat_idx].view(b, h, t, s * block_size)
    scores = torch.einsum("bhte,bhtje->bhtj", q, kg) / math.sqrt(e)
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    probs = F.dropout(probs, dropout_p)
    return torch.einsum("bhtj,bhtje->bhte", probs, vg)


def moba_mask(
    block_idx: torch.Tensor, num_tokens: int, block_size: int, key_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, H, T, S) selected block ids -> (B, H, T, T) bool mask: True where a query may attend."""
    b, h, t, _ = block_idx.shape
    n = num_blocks(num_tokens, block_size)
    chosen = torch.zeros(b, h, t, n, dtype=torch.bool, device=block_idx.device).scatter_(-1, block_idx, True)
    mask = chosen.repeat_interleave(block_size, dim=-1)[..., :num_tokens]  # (B, H, T, T)
    if key_valid is not None:
        mask = mask & key_valid[:, None, None, :]
    return mask


def moba_masked_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    block_idx: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """MoBA through torch's fused attention with the block mask. Same result as ``moba_attention``;
    for the short token sets of a ranking model (tens of tokens) this is the fastest path on CPU
    (the gather materialises S blocks of keys per query), so the model uses it. The FLOPs counter
    counts the block-sparse algorithm (kept blocks only), which a block-sparse kernel realises."""
    mask = moba_mask(block_idx, q.shape[2], block_size, key_valid)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def moba_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    block_idx: torch.Tensor,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense attention over all T keys, masked to each query's selected blocks (the reference)."""
    e = q.shape[-1]
    mask = moba_mask(block_idx, q.shape[2], block_size, key_valid)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(e)
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


class TokenAttention(nn.Module):
    """Multi-head self-attention over a token set; MoBA (default) or dense ("vanilla").

    forward(x (B, T, D), key_valid (B, T) bool or None) -> (B, T, D).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        block_size: int = 2,
        sparsity: float = 0.5,
        vanilla: bool = False,
        dropout: float = 0.0,
        gather: bool = False,
    ) -> None:
        super().__init__()
        self.gather = gather  # moba_attention (kept blocks only) instead of moba_masked_sdpa
        self.num_heads = num_heads
        self.block_size = block_size
        self.sparsity = sparsity
        self.vanilla = vanilla
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        if self.vanilla:
            mask = None if key_valid is None else key_valid[:, None, None, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            kept = num_kept_blocks(num_blocks(t, self.block_size), self.sparsity)
            idx = moba_select_blocks(q, k, self.block_size, kept, key_valid)
            moba = moba_attention if self.gather else moba_masked_sdpa
            y = moba(q, k, v, self.block_size, idx, key_valid, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class TransformerLayer(nn.Module):
    """Post-LN block: X = LN(Attn(X) + X); X = LN(FFN(X) + X).

    forward(x (B, T, D), key_valid (B, T) or None) -> (B, T, D).
    """

    def __init__(self, dim: int, num_heads: int, ffn_mult: int, dropout: float = 0.0, **attention) -> None:
        super().__init__()
        self.attn = TokenAttention(dim, num_heads, dropout=dropout, **attention)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_mult * dim, dim)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(self.drop(self.attn(x, key_valid)) + x)
        return self.norm2(self.drop(self.ffn(x)) + x)


class TransformerEncoder(nn.Module):
    """``num_layers`` TransformerLayers. forward(x (B, T, D), key_valid (B, T) or None) -> (B, T, D).

    One module rather than a bare ModuleList so TorchRec's pipeline tracer treats the whole stack
    as one leaf (it only knows the names of a model's direct children).
    """

    def __init__(
        self, num_layers: int, dim: int, num_heads: int, ffn_mult: int, dropout: float = 0.0, **attention
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            [TransformerLayer(dim, num_heads, ffn_mult, dropout, **attention) for _ in range(num_layers)]
        )

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, key_valid)
        return x
