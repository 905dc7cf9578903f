"""The analytical FLOPs counter against a hand count and against torch's own FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

import store.models.attention as attention
from store.models.attention import TransformerLayer
from store.models.config import ModelConfig
from store.models.flops import store_model_flops, transformer_flops
from store.models.zoo import build_model
from tests.test_sid import tiny_batch, tiny_sids, tiny_spec


def test_hand_count_tiny_moba_config():
    # B=2, T=5, D=4, one layer, ffn x2, blocks of 2 -> N=3 blocks, keep round(1.5)=2 -> 4 keys per query
    r = transformer_flops(2, 5, 4, num_layers=1, ffn_mult=2, block_size=2, sparsity=0.5, gating="token")
    assert r.projections == 2 * 5 * (2 * 4 * 12 + 2 * 4 * 4)  # QKV (4 -> 12) and output (4 -> 4)
    assert r.gating == 2 * 2 * 5 * 3 * 4  # each query . each block's mean key
    assert r.attention_core == 2 * (2 * 2 * 5 * 4 * 4)  # QK^T and AV over 4 keys
    assert r.ffn == 2 * 5 * (2 * 4 * 8 + 2 * 8 * 4)
    assert r.attention_flops == 1280 + 240 + 640 and r.total_flops == 1280 + 240 + 640 + 1280
    assert r.total_tflops == pytest.approx(3440e-12)
    # block gating: 3 query blocks . 3 key-block means; the kernel runs all N*P = 6 query rows
    blk = transformer_flops(2, 5, 4, num_layers=1, ffn_mult=2, block_size=2, sparsity=0.5, gating="block")
    assert blk.gating == 2 * 2 * 3 * 3 * 4
    assert blk.attention_core == 2 * (2 * 2 * 6 * 4 * 4)
    assert blk.projections == r.projections and blk.ffn == r.ffn
    # query blocks of 4 (2 of them, 8 query rows) over key blocks of 2
    wide = transformer_flops(2, 5, 4, 1, 2, block_size=2, sparsity=0.5, gating="block", query_block_size=4)
    assert wide.gating == 2 * 2 * 2 * 3 * 4
    assert wide.attention_core == 2 * (2 * 2 * 8 * 4 * 4)


def test_dense_count_and_sparsity_scaling():
    dense = transformer_flops(8, 16, 8, 2, 2, vanilla=True)
    assert dense.gating == 0 and dense.attention_core == 2 * 4 * 8 * 16 * 16 * 8
    half = transformer_flops(8, 16, 8, 2, 2, block_size=4, sparsity=0.5)
    assert half.attention_core == dense.attention_core // 2  # 2 of 4 blocks
    quarter = transformer_flops(8, 16, 8, 2, 2, block_size=4, sparsity=0.75)
    assert quarter.attention_core == dense.attention_core // 4
    assert quarter.attention_tflops < half.attention_tflops < dense.attention_tflops


def _torch_count(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):  # the math backend decomposes into counted matmuls
        fn()
    return counter.get_total_flops()


# MoBA kernels that execute exactly the counted (kept-block) FLOPs: per query block, the block-sparse
# kernel (its plain-autograd form: torch's counter has no formula for the CPU flash ops); per token, the
# gather kernel.
COUNTED = [(True, "block", "auto"), (False, "block", "block_sparse"), (False, "token", "gather")]


@pytest.mark.parametrize("vanilla, gating, kernel", COUNTED)
@pytest.mark.parametrize("query_block_size", [0, 3])
def test_transformer_count_matches_torch_flop_counter(vanilla, gating, kernel, query_block_size, monkeypatch):
    monkeypatch.setattr(attention, "FUSED_CPU", False)
    b, t, d = 3, 7, 8  # T = 7 in blocks of 2: the block-sparse kernel runs 8 query rows (9 in blocks of 3)
    attn = dict(vanilla=vanilla, gating=gating, kernel=kernel, query_block_size=query_block_size)
    layers = [TransformerLayer(d, 2, 2, block_size=2, sparsity=0.5, **attn) for _ in range(2)]
    x = torch.randn(b, t, d)

    def run():
        y = x
        for layer in layers:
            y = layer(y)

    expected = transformer_flops(
        b,
        t,
        d,
        2,
        2,
        block_size=2,
        sparsity=0.5,
        vanilla=vanilla,
        gating=gating,
        query_block_size=query_block_size,
    )
    assert _torch_count(run) == expected.total_flops


@pytest.mark.parametrize("name", ["store", "id"])
@pytest.mark.parametrize("history", ["pooled", "items", "sids"])
@pytest.mark.parametrize("vanilla, gating, kernel", COUNTED)
def test_whole_model_count_matches_torch_flop_counter(name, history, vanilla, gating, kernel, monkeypatch):
    monkeypatch.setattr(attention, "FUSED_CPU", False)
    spec, sids = tiny_spec(), tiny_sids()  # 3 SIDs; the item history is 5 long
    history_tokens, history_sid_tokens = history != "pooled", history == "sids"
    cfg = ModelConfig(
        vanilla_attention=vanilla,
        moba_gating=gating,
        moba_kernel=kernel,
        history_tokens=history_tokens,
        history_sid_tokens=history_sid_tokens,
    )
    model = build_model(name, spec, cfg, sids).eval()
    batch = tiny_batch(spec, rows=8)
    if name == "store":
        batch = sids.transform(batch, spec)
    report = store_model_flops(model, batch_size=8)
    assert report.num_tokens == 3 + 3 + {"pooled": 1, "items": 5, "sids": 5 * 3}[history]
    # R's parametrization (matrix exponentials, once per step, batch-independent) is not counted.
    with parametrize.cached():
        if model.rotation is not None:
            model.rotation.rotations  # noqa: B018 (fills the cache outside the counter)
        assert _torch_count(lambda: model(batch)) == report.total_flops
