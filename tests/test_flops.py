"""The analytical FLOPs counter against a hand count and against torch's own FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from store.models.attention import TransformerLayer
from store.models.config import ModelConfig
from store.models.flops import store_model_flops, transformer_flops
from store.models.zoo import build_model
from tests.test_sid import tiny_batch, tiny_sids, tiny_spec


def test_hand_count_tiny_moba_config():
    # B=2, T=5, D=4, one layer, ffn x2, blocks of 2 -> N=3 blocks, keep round(1.5)=2 -> 4 keys per query
    r = transformer_flops(2, 5, 4, num_layers=1, ffn_mult=2, block_size=2, sparsity=0.5)
    assert r.projections == 2 * 5 * (2 * 4 * 12 + 2 * 4 * 4)  # QKV (4 -> 12) and output (4 -> 4)
    assert r.gating == 2 * 2 * 5 * 3 * 4  # each query . each block's mean key
    assert r.attention_core == 2 * (2 * 2 * 5 * 4 * 4)  # QK^T and AV over 4 keys
    assert r.ffn == 2 * 5 * (2 * 4 * 8 + 2 * 8 * 4)
    assert r.attention_flops == 1280 + 240 + 640 and r.total_flops == 1280 + 240 + 640 + 1280
    assert r.total_tflops == pytest.approx(3440e-12)


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


@pytest.mark.parametrize("vanilla", [True, False])
def test_transformer_count_matches_torch_flop_counter(vanilla):
    b, t, d = 3, 7, 8
    # gather=True: the block-sparse kernel, which executes exactly the counted (kept-block) FLOPs
    layers = [
        TransformerLayer(d, 2, 2, block_size=2, sparsity=0.5, vanilla=vanilla, gather=True) for _ in range(2)
    ]
    x = torch.randn(b, t, d)

    def run():
        y = x
        for layer in layers:
            y = layer(y)

    expected = transformer_flops(b, t, d, 2, 2, block_size=2, sparsity=0.5, vanilla=vanilla)
    assert _torch_count(run) == expected.total_flops


@pytest.mark.parametrize("name", ["store", "id"])
@pytest.mark.parametrize("history_tokens", [False, True])
@pytest.mark.parametrize("vanilla", [True, False])
def test_whole_model_count_matches_torch_flop_counter(name, history_tokens, vanilla):
    spec, sids = tiny_spec(), tiny_sids()
    cfg = ModelConfig(vanilla_attention=vanilla, history_tokens=history_tokens, moba_gather=True)
    model = build_model(name, spec, cfg, sids).eval()
    batch = tiny_batch(spec, rows=8)
    if name == "store":
        batch = sids.transform(batch, spec)
    report = store_model_flops(model, batch_size=8)
    assert report.num_tokens == 3 + 3 + (5 if history_tokens else 1)
    # R's parametrization (matrix exponentials, once per step, batch-independent) is not counted.
    with parametrize.cached():
        if model.rotation is not None:
            model.rotation.rotations  # noqa: B018 (fills the cache outside the counter)
        assert _torch_count(lambda: model(batch)) == report.total_flops
