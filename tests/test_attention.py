"""MoBA: the block-sparse computation equals its dense masked reference, and dense attention at k = all."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from store.models.attention import (
    TokenAttention,
    moba_attention,
    moba_masked_sdpa,
    moba_reference,
    moba_select_blocks,
    num_blocks,
    num_kept_blocks,
)


def _qkv(b=3, h=2, t=7, e=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, e, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]


def _padding(b: int, t: int, seed: int = 1) -> torch.Tensor:
    """Valid-key mask: the first 3 tokens always real, the rest real for a random prefix."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, t + 1, (b,), generator=g)
    return torch.arange(t)[None, :] < lengths[:, None]


def test_kept_blocks_rule():
    assert [num_kept_blocks(n, 0.5) for n in (1, 2, 3, 4, 5)] == [1, 1, 2, 2, 2]
    assert num_kept_blocks(4, 0.0) == 4 and num_kept_blocks(4, 0.9) == 1
    assert num_blocks(7, 2) == 4 and num_blocks(8, 2) == 4


IMPLEMENTATIONS = [moba_attention, moba_masked_sdpa]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("block_size", [1, 2, 3])
def test_block_sparse_equals_dense_masked_reference_forward_and_backward(padded, block_size, impl):
    q, k, v = _qkv()
    valid = _padding(3, 7) if padded else None
    n = num_blocks(7, block_size)
    kept = num_kept_blocks(n, 0.5)
    # Random top-k (not the gate's): the equality must hold for any block choice with a real block.
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(3, 2, 7, n, generator=g)
    scores[..., 0] = 2.0  # block 0 (always real tokens) is always among the chosen
    idx = scores.argsort(-1, descending=True)[..., :kept]
    sparse = impl(q, k, v, block_size, idx, valid)
    dense = moba_reference(q, k, v, block_size, idx, valid)
    torch.testing.assert_close(sparse, dense)
    w = torch.randn_like(sparse)
    grads_sparse = torch.autograd.grad((sparse * w).sum(), (q, k, v))
    grads_dense = torch.autograd.grad((dense * w).sum(), (q, k, v))
    for a, b in zip(grads_sparse, grads_dense):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("padded", [False, True])
def test_all_blocks_kept_equals_plain_dense_attention(padded, impl):
    q, k, v = _qkv(t=9)
    valid = _padding(3, 9) if padded else None
    n = num_blocks(9, 2)
    idx = moba_select_blocks(q, k, 2, n, valid)
    out = impl(q, k, v, 2, idx, valid)
    mask = None if valid is None else valid[:, None, None, :]
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_gate_picks_the_blocks_with_the_closest_mean_key():
    e = 4
    k = torch.zeros(1, 1, 6, e)
    k[0, 0, 4:, 0] = 5.0  # block 2 (tokens 4, 5) points along axis 0
    k[0, 0, 2:4, 1] = 5.0  # block 1 along axis 1
    q = torch.zeros(1, 1, 2, e)
    q[0, 0, 0, 0] = 1.0
    q[0, 0, 1, 1] = 1.0
    idx = moba_select_blocks(q, k, 2, 1)
    assert idx.flatten().tolist() == [2, 1]


def test_padding_only_blocks_are_never_chosen_while_real_ones_remain():
    q, k, _ = _qkv(b=4, t=8)
    valid = torch.arange(8)[None, :] < torch.tensor([[2], [4], [6], [8]])
    q = torch.ones(4, 2, 8, 4)
    k = torch.where(valid[:, None, :, None], -1.0, 100.0).expand(4, 2, 8, 4)  # padding would win the gate
    idx = moba_select_blocks(q, k, 2, 2, valid)  # 2 kept blocks: row 0 has only 1 real one
    starts = idx * 2  # first token of each chosen block
    lengths = valid.sum(1)[:, None, None, None]
    assert (starts[1:] < lengths[1:]).all()  # rows with >= 2 real blocks choose only real ones
    assert (idx[0].amin(-1) == 0).all()  # row 0 keeps its one real block (and one padding block)


def test_module_with_sparsity_zero_equals_vanilla():
    torch.manual_seed(0)
    moba = TokenAttention(8, 2, block_size=2, sparsity=0.0)
    dense = TokenAttention(8, 2, vanilla=True)
    dense.load_state_dict(moba.state_dict())
    x = torch.randn(4, 7, 8)
    valid = _padding(4, 7)
    torch.testing.assert_close(moba(x, valid), dense(x, valid), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(moba(x), dense(x), rtol=1e-5, atol=1e-6)


def test_sparse_module_differs_from_dense():
    torch.manual_seed(0)
    moba = TokenAttention(8, 2, block_size=2, sparsity=0.5)
    dense = TokenAttention(8, 2, vanilla=True)
    dense.load_state_dict(moba.state_dict())
    x = torch.randn(4, 8, 8)
    assert (moba(x) - dense(x)).abs().max() > 1e-3
