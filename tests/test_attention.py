"""MoBA: every kernel equals the dense masked reference, forward and backward; the gates pick what
they should; dense attention at k = all."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import store.models.attention as attention
from store.models.attention import (
    TokenAttention,
    flex_attention,
    moba,
    moba_attention,
    moba_block_sparse,
    moba_flex,
    moba_masked_sdpa,
    moba_reference,
    moba_select_blocks,
    moba_select_query_blocks,
    num_blocks,
    num_kept_blocks,
    query_block_tokens,
    resolve_kernel,
)


def _qkv(b=3, h=2, t=7, e=4, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, e, generator=g, dtype=dtype).to(device).requires_grad_() for _ in range(3)]


def _padding(b: int, t: int, seed: int = 1) -> torch.Tensor:
    """Valid-key mask: the first 3 tokens always real, the rest real for a random prefix."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, t + 1, (b,), generator=g)
    return torch.arange(t)[None, :] < lengths[:, None]


def _random_choice(shape: tuple[int, ...], n: int, kept: int, seed: int = 2) -> torch.Tensor:
    """Random top-``kept`` of ``n`` blocks (not the gate's): the equalities must hold for any choice
    that has a real block; block 0 (always real tokens) is always among the chosen."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(*shape, n, generator=g)
    scores[..., 0] = 2.0
    return scores.argsort(-1, descending=True)[..., :kept]


def _assert_same_forward_backward(out, ref, inputs, seed=3, **tol):
    torch.testing.assert_close(out, ref, **tol)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype).to(out.device)
    grads = torch.autograd.grad((out * w).sum(), inputs)
    grads_ref = torch.autograd.grad((ref * w).sum(), inputs)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, **tol)


def test_kept_blocks_rule():
    assert [num_kept_blocks(n, 0.5) for n in (1, 2, 3, 4, 5)] == [1, 1, 2, 2, 2]
    assert num_kept_blocks(4, 0.0) == 4 and num_kept_blocks(4, 0.9) == 1
    assert num_blocks(7, 2) == 4 and num_blocks(8, 2) == 4


# -- kernels against the reference -------------------------------------------------------------------
TOKEN_KERNELS = [moba_attention, moba_masked_sdpa]  # take one block choice per query


@pytest.mark.parametrize("impl", TOKEN_KERNELS)
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("block_size", [1, 2, 3])
def test_per_query_kernels_equal_dense_masked_reference_forward_and_backward(padded, block_size, impl):
    q, k, v = _qkv()
    valid = _padding(3, 7) if padded else None
    n = num_blocks(7, block_size)
    idx = _random_choice((3, 2, 7), n, num_kept_blocks(n, 0.5))
    out = impl(q, k, v, block_size, idx, valid)
    _assert_same_forward_backward(out, moba_reference(q, k, v, block_size, idx, valid), (q, k, v))


@pytest.mark.parametrize("fused", [True, False])  # the CPU flash custom function / plain autograd
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize(
    "t, block_size, query_block_size",
    [(7, 1, 1), (7, 2, 2), (9, 3, 3), (12, 4, 4), (10, 4, 4), (20, 8, 8), (20, 4, 8), (21, 4, 10), (9, 3, 2)],
)
def test_block_sparse_kernel_equals_dense_masked_reference_forward_and_backward(
    t, block_size, query_block_size, padded, fused, monkeypatch
):
    if fused and not attention.FUSED_CPU:
        pytest.skip("this torch has no CPU flash-attention ops")
    monkeypatch.setattr(attention, "FUSED_CPU", fused)
    monkeypatch.setattr(attention, "CHUNK_BYTES", 512)  # several chunks even at these sizes
    q, k, v = _qkv(t=t, seed=t)
    valid = _padding(3, t) if padded else None
    n, nq = num_blocks(t, block_size), num_blocks(t, query_block_size)
    idx = _random_choice((3, 2, nq), n, num_kept_blocks(n, 0.5))  # (B, H, Nq, S): per query block
    out = moba_block_sparse(q, k, v, block_size, idx, valid, query_block_size=query_block_size)
    ref = moba_reference(q, k, v, block_size, query_block_tokens(idx, t, query_block_size), valid)
    _assert_same_forward_backward(out, ref, (q, k, v))


def test_block_sparse_kernel_in_float32_and_bfloat16():
    q, k, v = _qkv(b=2, h=2, t=40, e=8, dtype=torch.float32)
    idx = _random_choice((2, 2, 5), 5, 2)
    ref = moba_reference(q, k, v, 8, query_block_tokens(idx, 40, 8))
    _assert_same_forward_backward(moba_block_sparse(q, k, v, 8, idx), ref, (q, k, v))
    qb, kb, vb = (x.detach().bfloat16() for x in (q, k, v))
    torch.testing.assert_close(
        moba_block_sparse(qb, kb, vb, 8, idx).float(), ref.detach(), atol=3e-2, rtol=3e-2
    )


def test_block_sparse_kernel_with_dropout_keeps_the_expected_value():
    # Dropout runs through plain autograd over SDPA (inverted dropout): unbiased on average. 4000
    # copies of one small problem in one call, each with its own dropout draw.
    q, k, v = (x.detach().repeat(4000, 1, 1, 1) for x in _qkv(b=1, h=1, t=8, e=4))
    idx = _random_choice((1, 1, 4), 4, 2).repeat(4000, 1, 1, 1)
    ref = moba_reference(q[:1], k[:1], v[:1], 2, query_block_tokens(idx[:1], 8, 2))[0]
    torch.manual_seed(0)
    runs = moba_block_sparse(q, k, v, 2, idx, dropout_p=0.3)
    assert (runs[0] - ref).abs().max() > 1e-3  # dropout did act
    torch.testing.assert_close(runs.mean(0), ref, atol=0.06, rtol=0)


@pytest.mark.skipif(flex_attention is None, reason="no FlexAttention in this torch")
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("query_block_size", [4, 6])
def test_flex_block_mask_equals_reference_forward(query_block_size, padded):
    # On CPU FlexAttention runs eagerly and forward only (torch 2.13): this checks the BlockMask and
    # mask_mod built from the block choice; the CUDA test below adds the compiled kernel's backward.
    q, k, v = (x.detach() for x in _qkv(b=2, t=10, e=8))
    valid = _padding(2, 10) if padded else None
    idx = _random_choice((2, 2, num_blocks(10, query_block_size)), 3, 2)
    out = moba_flex(q, k, v, 4, idx, valid, query_block_size)
    ref = moba_reference(q, k, v, 4, query_block_tokens(idx, 10, query_block_size), valid)
    torch.testing.assert_close(out, ref)


@pytest.mark.skipif(
    not torch.cuda.is_available() or flex_attention is None, reason="needs CUDA FlexAttention"
)
@pytest.mark.parametrize("padded", [False, True])
def test_flex_on_cuda_equals_reference_forward_and_backward(padded):
    q, k, v = _qkv(b=2, h=2, t=700, e=16, dtype=torch.float32, device="cuda")
    valid = _padding(2, 700).cuda() if padded else None
    idx = _random_choice((2, 2, 3), 6, 3).cuda()  # query blocks of 256, key blocks of 128
    out = moba_flex(q, k, v, 128, idx, valid, 256)
    ref = moba_reference(q, k, v, 128, query_block_tokens(idx, 700, 256), valid)
    _assert_same_forward_backward(out, ref, (q, k, v), atol=2e-3, rtol=2e-3)


GATING_KERNELS = [("block", kernel) for kernel in ("auto", "block_sparse", "masked_sdpa", "gather")]
GATING_KERNELS += [("token", kernel) for kernel in ("auto", "masked_sdpa", "gather")]


@pytest.mark.parametrize("gating, kernel", GATING_KERNELS)
@pytest.mark.parametrize("padded", [False, True])
def test_all_blocks_kept_equals_plain_dense_attention(padded, kernel, gating):
    q, k, v = _qkv(t=9)
    valid = _padding(3, 9) if padded else None
    out = moba(q, k, v, 2, 0.0, valid, gating=gating, kernel=kernel)
    mask = None if valid is None else valid[:, None, None, :]
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


@pytest.mark.parametrize("kernel", ["block_sparse", "masked_sdpa", "gather"])
@pytest.mark.parametrize("query_block_size", [None, 8])
def test_block_gating_kernels_agree_through_moba(kernel, query_block_size):
    q, k, v = _qkv(t=24, e=8)
    valid = _padding(3, 24)
    out = moba(q, k, v, 4, 0.5, valid, gating="block", kernel=kernel, query_block_size=query_block_size)
    pq = query_block_size or 4
    idx = moba_select_query_blocks(q, k, 4, num_kept_blocks(6, 0.5), valid, pq)
    assert idx.shape == (3, 2, 24 // pq, 3)
    _assert_same_forward_backward(
        out, moba_reference(q, k, v, 4, query_block_tokens(idx, 24, pq), valid), (q, k, v)
    )


def test_kernel_choice_and_bad_combinations():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_kernel("auto", "block", 64, cpu) == "block_sparse"
    assert resolve_kernel("auto", "block", 16, cpu) == "block_sparse"
    assert resolve_kernel("auto", "block", 8, cpu) == "masked_sdpa"  # tiny blocks: dense masked is faster
    assert resolve_kernel("auto", "token", 64, cpu) == "masked_sdpa"
    assert resolve_kernel("gather", "block", 64, cpu) == "gather"
    flex = "flex" if flex_attention is not None else "block_sparse"
    assert resolve_kernel("auto", "block", 128, cuda) == flex
    assert resolve_kernel("auto", "block", 128, cuda, query_block_size=256) == flex
    assert resolve_kernel("auto", "block", 64, cuda) == "block_sparse"  # flex tiles need blocks of 128s
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="needs gating 'block'"):
        moba(q, k, v, 2, 0.5, gating="token", kernel="block_sparse")
    with pytest.raises(ValueError, match="kernel must be one of"):
        moba(q, k, v, 2, 0.5, kernel="fast")


# -- the gates ------------------------------------------------------------------------------------------
def test_token_gate_picks_the_blocks_with_the_closest_mean_key():
    e = 4
    k = torch.zeros(1, 1, 6, e)
    k[0, 0, 4:, 0] = 5.0  # block 2 (tokens 4, 5) points along axis 0
    k[0, 0, 2:4, 1] = 5.0  # block 1 along axis 1
    q = torch.zeros(1, 1, 2, e)
    q[0, 0, 0, 0] = 1.0
    q[0, 0, 1, 1] = 1.0
    idx = moba_select_blocks(q, k, 2, 1)
    assert idx.flatten().tolist() == [2, 1]


def test_block_gate_uses_the_mean_of_the_real_queries_of_each_block():
    e = 4
    k = torch.zeros(1, 1, 6, e)
    k[0, 0, 0:2, 2] = 5.0  # key block 0 along axis 2
    k[0, 0, 2:4, 1] = 5.0  # key block 1 along axis 1
    k[0, 0, 4:6, 0] = 5.0  # key block 2 along axis 0
    q = torch.zeros(1, 1, 6, e)
    q[0, 0, 0, 0] = 1.0  # query block 0: one query towards block 2, one (stronger) towards block 1
    q[0, 0, 1, 1] = 3.0
    q[0, 0, 2, 2] = 1.0  # query block 1: its real query points to block 0 ...
    q[0, 0, 3, 1] = 9.0  # ... its padding query would pull it to block 1
    q[0, 0, 4:6, 0] = 1.0  # query block 2: both towards block 2
    valid = torch.tensor([[True, True, True, False, True, True]])
    idx = moba_select_query_blocks(q, k, 2, 1, valid)  # (1, 1, 3, 1)
    assert idx.flatten().tolist() == [1, 0, 2]
    # query blocks of 3 (two), key blocks of 2: the first block's real queries sum towards block 1
    # (3 along axis 1 beats 1 + 1), the second's (one along axis 0 twice) towards block 2
    idx = moba_select_query_blocks(q, k, 2, 1, valid, query_block_size=3)  # (1, 1, 2, 1)
    assert idx.flatten().tolist() == [1, 2]
    # per token the first query block splits, which block gating cannot express
    assert moba_select_blocks(q, k, 2, 1, valid)[0, 0, :2, 0].tolist() == [2, 1]


@pytest.mark.parametrize("select", [moba_select_blocks, moba_select_query_blocks])
def test_padding_only_blocks_are_never_chosen_while_real_ones_remain(select):
    valid = torch.arange(8)[None, :] < torch.tensor([[2], [4], [6], [8]])
    q = torch.ones(4, 2, 8, 4)
    k = torch.where(valid[:, None, :, None], -1.0, 100.0).expand(4, 2, 8, 4)  # padding would win the gate
    idx = select(q, k, 2, 2, valid)  # 2 kept blocks: row 0 has only 1 real one
    starts = idx * 2  # first token of each chosen block
    lengths = valid.sum(1)[:, None, None, None]
    assert (starts[1:] < lengths[1:]).all()  # rows with >= 2 real blocks choose only real ones
    assert (idx[0].amin(-1) == 0).all()  # row 0 keeps its one real block (and one padding block)


# -- the module -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "gating, kernel",
    [
        ("block", "auto"),
        ("block", "block_sparse"),
        ("block", "gather"),
        ("token", "auto"),
        ("token", "gather"),
    ],
)
def test_module_with_sparsity_zero_equals_vanilla(gating, kernel):
    torch.manual_seed(0)
    moba_layer = TokenAttention(8, 2, block_size=2, sparsity=0.0, gating=gating, kernel=kernel)
    dense = TokenAttention(8, 2, vanilla=True)
    dense.load_state_dict(moba_layer.state_dict())
    x = torch.randn(4, 7, 8)
    valid = _padding(4, 7)
    # padded queries' outputs are never read: compare the real ones
    torch.testing.assert_close(moba_layer(x, valid)[valid], dense(x, valid)[valid], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(moba_layer(x), dense(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gating", ["block", "token"])
def test_sparse_module_differs_from_dense(gating):
    torch.manual_seed(0)
    moba_layer = TokenAttention(8, 2, block_size=2, sparsity=0.5, gating=gating)
    dense = TokenAttention(8, 2, vanilla=True)
    dense.load_state_dict(moba_layer.state_dict())
    x = torch.randn(4, 8, 8)
    assert (moba_layer(x) - dense(x)).abs().max() > 1e-3


def test_module_kernels_agree_in_training():
    torch.manual_seed(0)
    x = torch.randn(3, 40, 16, requires_grad=True)
    valid = _padding(3, 40)
    outs, grads = [], []
    for kernel in ("block_sparse", "masked_sdpa", "gather"):
        torch.manual_seed(1)
        layer = TokenAttention(16, 2, block_size=8, sparsity=0.5, kernel=kernel)
        y = layer(x, valid)[valid]
        outs.append(y)
        grads.append(torch.autograd.grad(y.square().sum(), [x, layer.qkv.weight]))
    for y, g in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(y, outs[0], rtol=1e-4, atol=1e-5)
        for a, b in zip(g, grads[0]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# -- the STORE model's long token set: one token per SID of every history item ----------------------------
@pytest.mark.parametrize("name", ["store", "id"])
def test_history_sid_tokens_are_each_history_items_k_tokens(name):
    from store.models.config import ModelConfig
    from store.models.zoo import build_model
    from tests.test_sid import tiny_batch, tiny_sids, tiny_spec

    spec, sids = tiny_spec(), tiny_sids()  # K = 3 SIDs, histories of up to 5 items
    per_item = build_model(name, spec, ModelConfig(history_tokens=True), sids)
    per_sid = build_model(name, spec, ModelConfig(history_tokens=True, history_sid_tokens=True), sids)
    per_sid.load_state_dict(per_item.state_dict())  # the same parameters: only the token layout differs
    batch = tiny_batch(spec, rows=16)
    if name == "store":
        batch = sids.transform(batch, spec)
    items, items_valid = per_item.tokens(batch)
    tokens, valid = per_sid.tokens(batch)
    fixed = per_item.num_fixed_tokens  # 3 item tokens + 3 rotated blocks
    assert per_sid.num_fixed_tokens == fixed == 6
    assert items.shape[1] == fixed + 5 and tokens.shape[1] == fixed + 5 * 3
    torch.testing.assert_close(tokens[:, :fixed], items[:, :fixed])
    hist = tokens[:, fixed:].view(16, 5, 3, -1)  # item after item, K tokens each
    if name == "store":  # an item's K SID embeddings sum to its one-token embedding
        torch.testing.assert_close(hist.sum(2), items[:, fixed:])
    else:  # the raw-ID embedding split by the item table's Linear(D, K*D)
        split = per_sid.items.split[per_sid.items.table_index["hist_items"]]
        torch.testing.assert_close(hist.flatten(2), split(items[:, fixed:]))
    assert torch.equal(valid[:, fixed:], items_valid[:, fixed:].repeat_interleave(3, dim=1))
    assert 0 < int(valid[:, fixed:].sum()) < 16 * 15  # some histories padded, some not empty
    out = per_sid(batch).logits
    out.sum().backward()
    assert out.shape == (16,) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"moba_gating": "query"}, "--model.moba_gating must be one of block, token"),
        ({"moba_kernel": "fast"}, "--model.moba_kernel must be one of"),
        (
            {"moba_gating": "token", "moba_kernel": "block_sparse"},
            "--model.moba_kernel needs --model.moba_gating",
        ),
        (
            {"moba_gather": True, "moba_kernel": "flex"},
            "--model.moba_gather conflicts with --model.moba_kernel",
        ),
        ({"history_sid_tokens": True}, "--model.history_sid_tokens needs --model.history_tokens"),
    ],
)
def test_moba_and_history_flags_are_validated_naming_the_flag(overrides, message):
    from store.models.config import ModelConfig

    with pytest.raises(ValueError, match=message):
        ModelConfig(**overrides).validate()
    ModelConfig(
        moba_gating="token", moba_kernel="gather", history_tokens=True, history_sid_tokens=True
    ).validate()
