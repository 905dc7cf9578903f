"""STORE's efficient attention: MoBA (mixture of block attention), its kernels and its dense, masked
reference.

Shape letters: B batch, H heads, T tokens, E head dim, P key block size, N key blocks
(ceil(T / P)), S kept key blocks per query (``num_kept_blocks``), Pq query block size (block gating;
P unless set), Nq query blocks (ceil(T / Pq)), M = B * H * Nq query blocks.

MoBA splits the keys/values into N blocks of P tokens and lets each query attend only to the keys of
S blocks, chosen by a gate: the dot product of the query with the block's mean key. Two gatings:

- ``"block"`` (the default): the queries are cut into blocks of Pq tokens (``query_block_size``,
  the key block size P unless set), and each query block picks its top-S key blocks by the mean of
  its real queries' gate scores (= the block's mean query . the key block's mean key). All Pq queries
  of a block then share one key set, so a kernel can gather those S*P keys once and run one dense
  attention per query block: work and memory scale with the kept blocks. This is the granularity
  block-sparse kernels work at (FlexAttention's ``BlockMask`` has a query and a key block size).
  P sets how finely keys are chosen (the FLOPs); Pq how many queries share a choice, which sets the
  kernel's efficiency: on CPU a fused attention call per query block runs well from ~64-200 queries
  (with head dims of 16-32 a larger Pq pays more), so a long token set with small key blocks is best
  served by Pq > P.
- ``"token"``: each query picks its own top-S blocks, as in the MoBA paper's definition. Exact, but
  every query has its own key set, so no kernel here runs it faster than dense attention.

Why block gating is the default: sparsity is only worth having when it saves time, and only block
gating lets a kernel skip the unchosen blocks (per token, every query needs its own gather, or the
dense masked product). It is also what MoBA's own and FlexAttention's block-sparse kernels compute.
What it gives up is that queries of one block cannot pick different blocks. On the 424-token STORE
configuration, sparsity 0.5 with block gating kept test AUC within 0.001 of dense attention (mean of
2 seeds; docs/results.md, "MoBA sparsity sweep with a few hundred tokens").

Attention here is non-causal over a token set (SID tokens, rotated feature blocks, history), so,
unlike causal MoBA, the query's own block is NOT forced into its selection: there is no future to
hide, every block is equally eligible and the choice is purely content-based (the rule of the
per-token gate this module had first, kept for both gatings). Padded keys (``key_valid`` False, e.g.
short histories) are never attended; a block holding only padding gets gate -inf, so it is only
picked when fewer than S real blocks exist, and then contributes nothing. The gate is a discrete
top-k choice and carries no gradient (as in MoBA).

Kernels (``KERNELS``; ``TokenAttention(kernel=...)``, ``--model.moba_kernel``), all exact against
``moba_reference`` (dense attention with the block mask), forward and backward:

    block_sparse  block gating. Each query block's S kept key blocks are gathered into one (S*P, E)
                  matrix and attended to with one fused attention call per chunk of query blocks:
                  O(T * S * P) work. On CPU a custom autograd function drives torch's fused CPU
                  flash-attention forward and backward kernels chunk by chunk (gathered blocks stay
                  in cache; key/value gradients are scattered back once); elsewhere, or with dropout,
                  plain autograd over ``F.scaled_dot_product_attention``.
    flex          block gating, CUDA: FlexAttention (compiled) with a ``BlockMask`` built from the
                  selected blocks. torch 2.13 has no FlexAttention backward on CPU, so "auto" never
                  picks it there.
    masked_sdpa   either gating: torch's fused attention over all T keys with the (B, H, T, T) block
                  mask. Dense cost; the fastest for a few tens of tokens.
    gather        either gating: per query, a gather of its S blocks (the FLOPs of the kept blocks,
                  but S blocks of keys copied per query: slow). For comparison and FLOP checks.
    auto          block gating: flex on CUDA when both block sizes are multiples of ``FLEX_BLOCK``,
                  else block_sparse when blocks are at least ``MIN_SPARSE_BLOCK`` tokens, else
                  masked_sdpa; token gating: masked_sdpa.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

try:  # FlexAttention (torch >= 2.5); used on CUDA only
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
except ImportError:  # pragma: no cover - older torch
    BlockMask = flex_attention = None

GATINGS = ("block", "token")
KERNELS = ("auto", "block_sparse", "flex", "masked_sdpa", "gather")
MIN_SPARSE_BLOCK = 16
""""auto" runs block gating through the block-sparse kernel from this block size up: below it, one
attention call per block of a few tokens costs more than the dense masked call it replaces (T=56,
blocks of 8: 2.5x dense vs 1.3x; T=212, blocks of 16: 1.0x vs 1.4x; benchmarks/bench_attention.py)."""
FLEX_BLOCK = 128
"""FlexAttention's Triton kernels tile a BlockMask block with power-of-two tiles (up to 128 tokens), so
"auto" hands it block sizes that are multiples of this only."""
FUSED_CPU = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")
"""torch's CPU flash-attention forward/backward ops exist (torch >= 2.2): the block-sparse kernel's
custom autograd function uses them; without them it runs plain autograd over SDPA."""
CHUNK_BYTES = 1 << 20
"""Gathered keys + values per chunk of query blocks in the CPU kernel: small enough to stay in cache
between the gather, the attention call and (in backward) the scatter of the gradients."""


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
    if n * block_size > t:
        x = F.pad(x, (0, 0, 0, n * block_size - t))
    return x.reshape(b, h, n, block_size, e)


def _valid_blocked(key_valid: torch.Tensor | None, b: int, t: int, block_size: int, device) -> torch.Tensor:
    """(B, T) bool (None = all valid) -> (B, N, P) bool, padding positions False."""
    if key_valid is None:
        key_valid = torch.ones(b, t, dtype=torch.bool, device=device)
    n = num_blocks(t, block_size)
    return F.pad(key_valid, (0, n * block_size - t), value=False).view(b, n, block_size)


def _block_means(
    x: torch.Tensor, valid: torch.Tensor, block_size: int, all_valid: bool = False
) -> torch.Tensor:
    """(B, H, T, E) -> (B, H, N, E): the mean of each block's valid tokens (0 for none). ``all_valid``:
    every token is real and T = N * P (no mask to apply)."""
    if all_valid:
        return _blocked(x, block_size).mean(3)
    count = valid.sum(-1).clamp(min=1)[:, None, :, None].to(x.dtype)  # (B, 1, N, 1)
    return (_blocked(x, block_size) * valid[:, None, :, :, None]).sum(3) / count


@torch.no_grad()
def moba_select_blocks(
    q: torch.Tensor, k: torch.Tensor, block_size: int, kept: int, key_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Token gating: each query's top-``kept`` key blocks by gate score q . mean(block keys).

    q, k: (B, H, T, E); key_valid: (B, T) bool or None. Returns block indices (B, H, T, S), long.
    """
    b, _, t, _ = k.shape
    valid = _valid_blocked(key_valid, b, t, block_size, k.device)  # (B, N, P)
    gate = q @ _block_means(k, valid, block_size).transpose(-1, -2)  # (B, H, T, N)
    gate = gate.masked_fill((valid.sum(-1) == 0)[:, None, None, :], float("-inf"))
    return gate.topk(kept, dim=-1).indices


@torch.no_grad()
def moba_select_query_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    kept: int,
    key_valid: torch.Tensor | None = None,
    query_block_size: int | None = None,
) -> torch.Tensor:
    """Block gating: each query block's top-``kept`` key blocks by mean(block's queries) . mean(block
    keys), i.e. the mean gate score of its queries. Only real tokens enter either mean (``key_valid``
    marks the tokens, which are the queries as well as the keys).

    q, k: (B, H, T, E); key_valid: (B, T) bool or None; query_block_size: Pq (None: P).
    Returns key-block indices (B, H, Nq, S), long.
    """
    b, _, t, _ = k.shape
    pq = query_block_size or block_size
    valid = _valid_blocked(key_valid, b, t, block_size, k.device)  # (B, N, P)
    real = key_valid is None  # every token real: plain means where the blocks tile T exactly
    query_valid = _valid_blocked(key_valid, b, t, pq, k.device)
    mean_query = _block_means(q, query_valid, pq, real and t % pq == 0)  # (B, H, Nq, E)
    mean_key = _block_means(k, valid, block_size, real and t % block_size == 0)  # (B, H, N, E)
    gate = mean_query @ mean_key.transpose(-1, -2)  # (B, H, Nq, N)
    gate = gate.masked_fill((valid.sum(-1) == 0)[:, None, None, :], float("-inf"))
    return gate.topk(kept, dim=-1).indices


def query_block_tokens(block_idx: torch.Tensor, num_tokens: int, query_block_size: int) -> torch.Tensor:
    """(B, H, Nq, S) per query block -> (B, H, T, S) per query: every query takes its block's choice."""
    return block_idx.repeat_interleave(query_block_size, dim=2)[:, :, :num_tokens]


# -- block-sparse kernel (block gating) ------------------------------------------------------------------
def moba_block_sparse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    block_idx: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    query_block_size: int | None = None,
) -> torch.Tensor:
    """Block-sparse attention: each query block attends to the keys of its S selected blocks only.

    q, k, v: (B, H, T, E); block_idx: (B, H, Nq, S) from ``moba_select_query_blocks``; key_valid:
    (B, T); query_block_size: Pq (None: P). Returns (B, H, T, E). Works with the M = B*H*Nq query
    blocks of Pq queries as a batch of independent attentions, each over its S*P gathered keys.

    On CPU (no dropout) queries and output stay token-major, (B, T, H, E): the layout a QKV
    projection makes and the fused CPU attention kernel works in, so a (B, H, T, E) view of such a
    tensor (``x.transpose(1, 2)``) goes in, and the output comes out, without a transposing copy;
    keys and values are copied once into (B*H*N, P*E) blocks, the rows the kernel gathers.
    """
    b, h, t, e = q.shape
    p, s = block_size, block_idx.shape[-1]
    pq = query_block_size or p
    n, nq = num_blocks(t, p), num_blocks(t, pq)
    bias, bias_rows = None, None  # additive key mask (B*N, P), 0 or -inf; None when every key is real
    if key_valid is not None or n * p != t:
        valid = _valid_blocked(key_valid, b, t, p, q.device).reshape(b * n, p)
        bias = torch.zeros(b * n, p, dtype=q.dtype, device=q.device).masked_fill(~valid, float("-inf"))
        bias_rows = torch.arange(b, device=q.device).view(b, 1, 1, 1) * n + block_idx  # rows of bias
    rows = torch.arange(b * h, device=q.device).view(b, h, 1, 1) * n + block_idx  # (B, H, Nq, S)
    if FUSED_CPU and q.device.type == "cpu" and dropout_p == 0.0:

        def per_query_block(x):  # (B, H, Nq, S) -> (B*Nq, H*S)
            return None if x is None else x.permute(0, 2, 1, 3).reshape(b * nq, h * s)

        # q, k and v go in token-major ((B, T, H, E) views where the projection made them so), and the
        # gradients come back token-major, as dense SDPA's do: no transposing copies around the call.
        out = _BlockSparseCPU.apply(
            _token_major(q, nq * pq), _token_major(k, n * p), _token_major(v, n * p),
            per_query_block(rows), bias, per_query_block(bias_rows), p,
        )  # fmt: skip  # (B, Nq*Pq, H, E)
        return out[:, :t].transpose(1, 2)
    k_blocks = _blocked(k, p).reshape(b * h * n, p * e)  # one row per (batch, head, key block)
    v_blocks = _blocked(v, p).reshape(b * h * n, p * e)
    # Plain autograd: the M query blocks as a batch of heads, each with its S gathered blocks.
    m = b * h * nq
    keys = k_blocks.index_select(0, rows.reshape(-1)).view(m, 1, s * p, e)
    values = v_blocks.index_select(0, rows.reshape(-1)).view(m, 1, s * p, e)
    mask = None if bias is None else bias.index_select(0, bias_rows.reshape(-1)).view(m, 1, 1, s * p)
    q_blocks = _blocked(q, pq).reshape(m, 1, pq, e)
    out = F.scaled_dot_product_attention(q_blocks, keys, values, attn_mask=mask, dropout_p=dropout_p)
    return out.reshape(b, h, nq * pq, e)[:, :, :t]


def _token_major(x: torch.Tensor, length: int) -> torch.Tensor:
    """(B, H, T, E) -> (B, length, H, E) token-major, zero-padded after the T tokens: a view when x is
    already stored token-major (tokens one stride apart), else a copy."""
    x = x.transpose(1, 2)
    if length > x.shape[1]:
        return F.pad(x, (0, 0, 0, 0, 0, length - x.shape[1]))
    uniform_tokens = x.stride(3) == 1 and x.stride(0) == x.shape[1] * x.stride(1)
    return x if uniform_tokens else x.contiguous()


class _BlockSparseCPU(torch.autograd.Function):
    """Block-sparse attention on CPU through torch's fused flash-attention kernels, chunk by chunk.

    forward(q (B, Nq*Pq, H, E), k, v (B, N*P, H, E), all token-major (tokens one stride apart), rows
    (B*Nq, H*S): the (batch, head, key block) rows of each query block and head, bias (B*N, P) additive
    key mask or None, bias_rows (B*Nq, H*S) or None: its rows, p: P) -> (B, Nq*Pq, H, E) contiguous.

    Keys and values are copied once into (B*H*N, P*E) block rows. The B*Nq query blocks are the batch
    of a flash call, the H heads its heads (queries are a view of q, the output is written
    token-major): each (query block, head) attends to its S*P gathered keys, chunk by chunk of query
    blocks; per chunk the gathered keys stay in cache. The backward re-gathers them, runs the flash
    backward with the saved output and log-sum-exp, adds the key/value gradients back into block rows
    with index_add_, and returns them token-major (one copy each), like dense SDPA's: the QKV
    projection's gradient then needs no strided copy.
    """

    @staticmethod
    def forward(ctx, q, k, v, rows, bias, bias_rows, p):
        b, tq, h, e = q.shape
        m = rows.shape[0]
        pq = tq * b // m
        k_blocks, v_blocks = _block_rows(k, p), _block_rows(v, p)  # (B*H*N, P*E)
        step = _chunk_rows(rows.shape[1] * k_blocks.shape[1] * k_blocks.element_size())
        q4 = q.view(m, pq, h, e).transpose(1, 2)  # (B*Nq, H, Pq, E): a view
        out = torch.empty(m, pq, h, e, dtype=q.dtype)
        lse_parts = []
        for a in range(0, m, step):
            c = slice(a, a + step)
            keys, values, mask = _gather(k_blocks, v_blocks, rows[c], bias, bias_rows, c, h, e)
            o, lse = _FLASH_FWD(q4[c], keys, values, attn_mask=mask)
            out[c] = o.transpose(1, 2)
            lse_parts.append(lse)
        lse = torch.cat(lse_parts)  # (B*Nq, H, Pq)
        ctx.p = p
        ctx.save_for_backward(q, k_blocks, v_blocks, rows, bias, bias_rows, out, lse)
        return out.view(b, tq, h, e)

    @staticmethod
    def backward(ctx, grad_out):
        q, k_blocks, v_blocks, rows, bias, bias_rows, out, lse = ctx.saved_tensors
        b, tq, h, e = q.shape
        m, pq = out.shape[:2]
        row_width = k_blocks.shape[1]  # P*E
        n = k_blocks.shape[0] // (b * h)
        step = _chunk_rows(rows.shape[1] * row_width * k_blocks.element_size())
        q4, out4 = q.view(m, pq, h, e).transpose(1, 2), out.transpose(1, 2)
        grad_out = grad_out.contiguous().view(m, pq, h, e).transpose(1, 2)
        grad_q = torch.empty(q.shape, dtype=q.dtype)
        grad_q4 = grad_q.view(m, pq, h, e)
        grad_k, grad_v = torch.zeros_like(k_blocks), torch.zeros_like(v_blocks)
        for a in range(0, m, step):
            c = slice(a, a + step)
            keys, values, mask = _gather(k_blocks, v_blocks, rows[c], bias, bias_rows, c, h, e)
            gq, gk, gv = _FLASH_BWD(
                grad_out[c], q4[c], keys, values, out4[c], lse[c], 0.0, False, attn_mask=mask
            )
            grad_q4[c] = gq.transpose(1, 2)
            flat = rows[c].reshape(-1)
            grad_k.index_add_(0, flat, gk.contiguous().view(-1, row_width))  # (C, H, S*P, E) -> block rows
            grad_v.index_add_(0, flat, gv.contiguous().view(-1, row_width))
        p = ctx.p
        grad_k, grad_v = _token_rows(grad_k, b, h, n, p), _token_rows(grad_v, b, h, n, p)  # token-major
        return grad_q, grad_k, grad_v, None, None, None, None


def _block_rows(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, N*P, H, E) token-major -> (B*H*N, P*E) contiguous: one row per (batch, head, key block)."""
    b, t, h, e = x.shape
    return x.view(b, t // p, p, h, e).permute(0, 3, 1, 2, 4).reshape(b * h * (t // p), p * e)


def _token_rows(rows: torch.Tensor, b: int, h: int, n: int, p: int) -> torch.Tensor:
    """The inverse of ``_block_rows``: (B*H*N, P*E) -> (B, N*P, H, E) contiguous."""
    return rows.view(b, h, n, p, -1).permute(0, 2, 3, 1, 4).reshape(b, n * p, h, -1)


if FUSED_CPU:
    _FLASH_FWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    _FLASH_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _chunk_rows(bytes_per_row: int) -> int:
    """Query blocks per chunk: their gathered keys and values fill about CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (2 * bytes_per_row))


def _gather(k_blocks, v_blocks, rows, bias, bias_rows, chunk: slice, h: int, e: int):
    """Keys, values (C, H, S*P, E) of a chunk of C query blocks (rows: (C, H*S)) and their additive
    mask (C, H, 1, S*P) or None."""
    c, flat = rows.shape[0], rows.reshape(-1)
    keys = k_blocks.index_select(0, flat).view(c, h, -1, e)
    values = v_blocks.index_select(0, flat).view(c, h, -1, e)
    mask = None if bias is None else bias.index_select(0, bias_rows[chunk].reshape(-1)).view(c, h, 1, -1)
    return keys, values, mask


# -- FlexAttention (block gating, CUDA) -----------------------------------------------------------------
def flex_available(device: torch.device) -> bool:
    """FlexAttention with a backward: importable and on CUDA (torch 2.13 has no CPU backward)."""
    return flex_attention is not None and device.type == "cuda"


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def moba_flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    block_idx: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    query_block_size: int | None = None,
) -> torch.Tensor:
    """Block-gated MoBA through FlexAttention: a ``BlockMask`` (query blocks of Pq, key blocks of P)
    lists each query block's S key blocks, so the kernel skips the others; its ``mask_mod`` hides
    padded keys (and repeats the block choice, which keeps the eager, dense-math fallback exact too).

    q, k, v: (B, H, T, E); block_idx: (B, H, Nq, S); key_valid: (B, T); query_block_size: Pq (None:
    P). Returns (B, H, T, E). Compiled on CUDA; elsewhere eager (forward only in torch 2.13, for tests).
    """
    if flex_attention is None:
        raise RuntimeError("MoBA kernel 'flex' needs torch.nn.attention.flex_attention (torch >= 2.5)")
    b, h, t, _ = q.shape
    p, s = block_size, block_idx.shape[-1]
    pq = query_block_size or p
    n, nq = num_blocks(t, p), num_blocks(t, pq)
    valid = _valid_blocked(key_valid, b, t, p, q.device).reshape(b, n * p)  # (B, N*P)
    chosen = torch.zeros(b, h, nq, n, dtype=torch.bool, device=q.device).scatter_(-1, block_idx, True)

    def mask_mod(bi, hi, q_idx, kv_idx):
        return valid[bi, kv_idx] & chosen[bi, hi, q_idx // pq, kv_idx // p]

    mask = BlockMask.from_kv_blocks(
        torch.full((b, h, nq), s, dtype=torch.int32, device=q.device),
        block_idx.sort(-1).values.to(torch.int32),
        BLOCK_SIZE=(pq, p),
        mask_mod=mask_mod,
        seq_lengths=(nq * pq, n * p),
    )
    attend = _compiled_flex() if q.device.type == "cuda" else flex_attention
    q_pad, kv_pad = (0, 0, 0, nq * pq - t), (0, 0, 0, n * p - t)
    out = attend(F.pad(q, q_pad), F.pad(k, kv_pad), F.pad(v, kv_pad), block_mask=mask)
    return out[:, :, :t]


# -- kernels over all T keys (either gating) ----------------------------------------------------------------
def moba_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    block_idx: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """The "gather" kernel: each query attends to the keys of its selected blocks only.

    q, k, v: (B, H, T, E); block_idx: (B, H, T, S) per query (``moba_select_blocks``, or
    ``query_block_tokens`` of a block gating); key_valid: (B, T). Returns (B, H, T, E).
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
    """(B, H, T, S) selected block ids per query -> (B, H, T, T) bool mask: True where a query may attend."""
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
    """The "masked_sdpa" kernel: torch's fused attention over all T keys with the block mask
    (block_idx (B, H, T, S) per query). Same result as the others at dense cost; for a few tens of
    tokens the fastest path on CPU."""
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
    """Dense attention over all T keys, masked to each query's selected blocks (the reference).

    block_idx: (B, H, T, S) per query (``query_block_tokens`` turns a block gating's into this).
    """
    e = q.shape[-1]
    mask = moba_mask(block_idx, q.shape[2], block_size, key_valid)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(e)
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def resolve_kernel(
    kernel: str, gating: str, block_size: int, device: torch.device, query_block_size: int | None = None
) -> str:
    """The kernel "auto" stands for (see the module docstring); any other name is returned as is."""
    if kernel != "auto":
        return kernel
    if gating == "token":
        return "masked_sdpa"
    if (
        flex_available(device)
        and block_size % FLEX_BLOCK == 0
        and (query_block_size or block_size) % FLEX_BLOCK == 0
    ):
        return "flex"
    return "block_sparse" if block_size >= MIN_SPARSE_BLOCK else "masked_sdpa"


def moba(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    sparsity: float,
    key_valid: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    gating: str = "block",
    kernel: str = "auto",
    query_block_size: int | None = None,
) -> torch.Tensor:
    """MoBA attention: gate (``gating``; block gating with query blocks of ``query_block_size``, None:
    ``block_size``), then run the chosen ``kernel``. q, k, v: (B, H, T, E) -> (B, H, T, E). flex has
    no dropout: with dropout_p > 0 it runs as block_sparse (same maths)."""
    if gating not in GATINGS:
        raise ValueError(f"MoBA gating must be one of {GATINGS}, got {gating!r}")
    if kernel not in KERNELS:
        raise ValueError(f"MoBA kernel must be one of {KERNELS}, got {kernel!r}")
    t = q.shape[2]
    kept = num_kept_blocks(num_blocks(t, block_size), sparsity)
    kernel = resolve_kernel(kernel, gating, block_size, q.device, query_block_size)
    if gating == "block":
        pq = query_block_size or block_size
        idx = moba_select_query_blocks(q, k, block_size, kept, key_valid, pq)  # (B, H, Nq, S)
        if kernel == "flex" and dropout_p == 0.0:
            return moba_flex(q, k, v, block_size, idx, key_valid, pq)
        if kernel in ("flex", "block_sparse"):
            return moba_block_sparse(q, k, v, block_size, idx, key_valid, dropout_p, pq)
        idx = query_block_tokens(idx, t, pq)  # (B, H, T, S)
    elif kernel in ("flex", "block_sparse"):
        raise ValueError(f"MoBA kernel {kernel!r} needs gating 'block' (one key set per query block)")
    else:
        idx = moba_select_blocks(q, k, block_size, kept, key_valid)  # (B, H, T, S)
    run = moba_attention if kernel == "gather" else moba_masked_sdpa
    return run(q, k, v, block_size, idx, key_valid, dropout_p=dropout_p)


class TokenAttention(nn.Module):
    """Multi-head self-attention over a token set; MoBA (default) or dense ("vanilla").

    ``gating`` and ``kernel``: see the module docstring (``GATINGS``, ``KERNELS``);
    ``query_block_size``: Pq of block gating (0: ``block_size``).
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
        gating: str = "block",
        kernel: str = "auto",
        query_block_size: int = 0,
    ) -> None:
        super().__init__()
        self.query_block_size = query_block_size
        self.num_heads = num_heads
        self.block_size = block_size
        self.sparsity = sparsity
        self.vanilla = vanilla
        self.dropout = dropout
        self.gating = gating
        self.kernel = kernel
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        # (B, H, T, E) views of the token-major projection: its gradients come back token-major too
        qkv = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = (y.transpose(1, 2) for y in qkv.unbind(2))
        p = self.dropout if self.training else 0.0
        if self.vanilla:
            mask = None if key_valid is None else key_valid[:, None, None, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            y = moba(
                q, k, v, self.block_size, self.sparsity, key_valid, p, self.gating, self.kernel,
                self.query_block_size or None,
            )  # fmt: skip
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
