"""The rest of the paper's Table 1 (FM, Wide&Deep, GDCN, MaskNet, PEPNet) and SSR: shapes, finite loss,
overfitting a tiny batch, each model's defining equation, their FLOPs, the output bias of every zoo
model, and a model sharded over two gloo processes against the same model unsharded."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from data_pipeline.spec import SparseFeature
from store.models import registry
from store.models.config import ModelConfig
from store.models.flops import model_flops
from store.models.fm import HISTORY_TABLE
from store.models.gdcn import GatedCrossLayer, GDCNConfig
from store.models.layers import FIRST_ORDER_WIDTH, output_bias
from store.models.masknet import MaskNetConfig
from store.models.pepnet import GATE_SCALE, pepnet_inputs
from store.models.ssr import ICS_ROUNDS, CompetitiveSparse, SSRConfig, SSRLayer, static_subsets
from store.models.zoo import batch_transform, build_model
from tests.test_sid import tiny_batch, tiny_sids, tiny_spec

NEW_MODELS = ("fm", "widedeep", "gdcn", "masknet", "pepnet", "ssr")
VARIANTS = [(name, {}) for name in NEW_MODELS] + [
    ("masknet", {"masknet": MaskNetConfig(mode="parallel")}),
    ("ssr", {"ssr": SSRConfig(variant="dynamic")}),
]


def _ids(v) -> str:
    name, over = v
    own = [getattr(val, "mode", None) or getattr(val, "variant", None) or val for val in over.values()]
    return name + "".join(f"-{val}" for val in own)


def _build(name: str, overrides: dict | None = None, seed: int = 0, device=None):
    torch.manual_seed(seed)
    return build_model(name, tiny_spec(), ModelConfig(**(overrides or {})), tiny_sids(), device=device)


# -- every new model: shapes, finite loss, learning ---------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_logits_have_one_finite_value_per_row_and_the_loss_is_finite(variant):
    model = _build(*variant)
    batch = tiny_batch(tiny_spec(), rows=5)
    out = model(batch)
    assert out.logits.shape == (5,) and torch.isfinite(out.logits).all()
    assert out.aux_losses == {}
    assert torch.isfinite(F.binary_cross_entropy_with_logits(out.logits, batch.labels))
    assert model(tiny_batch(tiny_spec(), rows=1)).logits.shape == (1,)


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_overfits_a_tiny_batch_and_every_parameter_learns(variant):
    model = _build(*variant)
    batch = tiny_batch(tiny_spec(), rows=32, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    learned = {name: False for name, _ in model.named_parameters()}
    first = final = None
    for _ in range(200):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(batch).logits, batch.labels)
        first, final = first or loss.item(), loss.item()
        if final < 0.3 * first:
            break
        loss.backward()
        for name, p in model.named_parameters():
            learned[name] |= p.grad is not None and bool(p.grad.abs().sum() > 0)
        opt.step()
    assert final < 0.5 * first, (first, final)
    assert all(learned.values()), [n for n, ok in learned.items() if not ok]


@pytest.mark.parametrize("name", registry.names())
def test_the_output_bias_moves_every_logit_by_the_same_amount(name):
    """What the trainer relies on when it sets the bias to logit(click rate)."""
    spec, sids = tiny_spec(), tiny_sids()
    torch.manual_seed(0)
    model = build_model(name, spec, ModelConfig(), sids).eval()
    transform = batch_transform(name, spec, sids, ModelConfig())
    batch = tiny_batch(spec, rows=6)
    batch = batch if transform is None else transform(batch)
    with torch.no_grad():
        before = model(batch).logits
        output_bias(model).add_(1.5)
        after = model(batch).logits
    torch.testing.assert_close(after - before, torch.full_like(before, 1.5))


# -- each model's own equation ------------------------------------------------------------------------
def test_fm_is_bias_plus_first_order_plus_dense_linear_plus_pairwise_products_of_sparse_fields():
    model = _build("fm").eval()
    batch = tiny_batch(tiny_spec(), rows=4)
    with torch.no_grad():
        output_bias(model).fill_(0.3)
        fields, first = model.fields(batch)
        logits = model(batch).logits
    assert fields.shape == (4, 5, 16)  # the five sparse features; the dense ones are no FM field
    pairs = sum((fields[:, f] * fields[:, g]).sum(1) for f in range(5) for g in range(f + 1, 5))
    dense = batch.dense @ model.dense.weight.detach().squeeze(0)
    torch.testing.assert_close(logits, 0.3 + first + dense + pairs)
    assert first.abs().min() > 0  # the first-order weights are really there
    with torch.no_grad():  # each ID's first-order weight is the mean of its FIRST_ORDER_WIDTH-wide row
        pooled = model.fields.ebc(batch.sparse).to_dict()
        rows = [pooled[k] for k in model.fields.first_order_keys]
    assert all(r.shape[1] == FIRST_ORDER_WIDTH for r in rows)
    torch.testing.assert_close(first, sum(r.mean(1) for r in rows))


def test_fm_first_order_weights_start_at_zero_and_learn():
    """w_dense starts at exactly 0 (nn.Linear's +-1/sqrt(n) start stayed where it was, store/models/fm.py)
    and the per-ID weights at the tables' small init; the dense weights still learn."""
    model = _build("fm", {"embedding_init_std": 1e-4})
    assert torch.equal(model.dense.weight, torch.zeros_like(model.dense.weight))
    batch = tiny_batch(tiny_spec(), rows=8)
    with torch.no_grad():
        _, first = model.fields(batch)
    assert first.abs().max() < 1e-3
    loss = F.binary_cross_entropy_with_logits(model(batch).logits, batch.labels)
    loss.backward()
    assert model.dense.weight.grad.abs().min() > 0


def test_fm_history_items_have_factors_of_their_own():
    """The history is its own group of one-hot columns (store/models/fm.py), not the target item's table."""
    model = _build("fm").eval()
    configs = {c.name: c for c in model.fields.ebc.embedding_bag_configs()}
    assert configs["t_item"].feature_names == ["item_id"]
    assert configs[HISTORY_TABLE].feature_names == ["hist_items"]
    assert configs[HISTORY_TABLE + "_w"].feature_names == ["hist_items"]
    assert configs[HISTORY_TABLE].num_embeddings == configs["t_item"].num_embeddings
    batch = tiny_batch(tiny_spec(), rows=6)
    hist = model.fields.keys.index(f"hist_items@{HISTORY_TABLE}")
    with torch.no_grad():
        before, _ = model.fields(batch)
        model.fields.ebc.embedding_bags["t_item"].weight.add_(1.0)  # the target item's factors only
        after, _ = model.fields(batch)
    assert torch.equal(after[:, hist], before[:, hist])
    assert not torch.equal(after, before)
    assert build_model("dnn", tiny_spec(), ModelConfig(), None).fields.ebc.embedding_bag_configs()[
        -1
    ].feature_names == [
        "item_id",
        "hist_items",
    ]  # the other baselines keep one shared item table


def test_wide_and_deep_is_the_first_order_term_plus_the_deep_mlp():
    model = _build("widedeep").eval()
    batch = tiny_batch(tiny_spec(), rows=4)
    with torch.no_grad():
        fields, wide = model.fields(batch)
        logits = model(batch).logits
    assert fields.shape == (4, 6, 16)  # the deep part also reads the dense features
    torch.testing.assert_close(logits, wide + model.head(fields.flatten(1)))
    # the wide part is linear in the sparse features only: moving the dense features moves the deep part
    moved = dataclasses.replace(batch, dense=batch.dense + 1.0)
    with torch.no_grad():
        assert torch.equal(model.fields(moved)[1], wide)


def test_gated_cross_layer_gates_the_dcn_cross_term():
    torch.manual_seed(0)
    layer = GatedCrossLayer(6)
    x0, x = torch.randn(3, 6), torch.randn(3, 6)
    w_c, b, w_g = layer.cross.weight, layer.cross.bias, layer.gate.weight
    expected = x0 * (x @ w_c.T + b) * torch.sigmoid(x @ w_g.T) + x
    torch.testing.assert_close(layer(x0, x), expected)
    with torch.no_grad():  # a shut gate leaves only the residual
        layer.gate.weight.fill_(0.0)
        layer.gate.weight[:, 0] = -1e4
    x[:, 0] = 1.0
    torch.testing.assert_close(layer(x0, x), x)
    assert len(_build("gdcn", {"gdcn": GDCNConfig(cross_layers=5)}).cross) == 5


@pytest.mark.parametrize("mode", ["serial", "parallel"])
def test_masknet_masks_come_from_the_whole_instance_and_gate_the_blocks(mode):
    cfg = {"masknet": MaskNetConfig(mode=mode, blocks=3, block_dim=8)}
    model = _build("masknet", cfg).eval()
    n = 6 * 16  # fields x D
    assert len(model.blocks) == 3
    assert all(b.mask.aggregate.in_features == n for b in model.blocks)  # every mask reads V_emb
    masked = [b.mask.project.out_features for b in model.blocks]
    assert masked == ([n, 8, 8] if mode == "serial" else [n, n, n])
    head_in = model.head.mlp[0].in_features if mode == "parallel" else model.head.out.in_features
    assert head_in == (3 * 8 if mode == "parallel" else 8)  # the blocks side by side, or the last one
    batch = tiny_batch(tiny_spec(), rows=6)
    with torch.no_grad():
        assert model(batch).logits.std() > 0
        for block in model.blocks:  # all-zero masks: every block outputs ReLU(LN(0)) = 0 for every row
            block.mask.project.weight.zero_()
            block.mask.project.bias.zero_()
        logits = model(batch).logits
    torch.testing.assert_close(logits, logits[:1].expand(6))


@pytest.mark.parametrize("mode", ["serial", "parallel"])
@pytest.mark.parametrize("norm", [False, True])
def test_masknet_blocks_on_the_embedding_read_it_raw_or_layer_normed(mode, norm):
    model = _build("masknet", {"masknet": MaskNetConfig(mode=mode, embedding_norm=norm)}).eval()
    assert (model.field_norm is None) != norm
    seen = []
    model.blocks[0].register_forward_hook(lambda mod, args, out: seen.append(args))
    batch = tiny_batch(tiny_spec(), rows=5)
    with torch.no_grad():
        model(batch)
        fields, _ = model.fields(batch)  # (B, F, D)
    v_emb, v_in = seen[0]
    torch.testing.assert_close(v_emb, fields.flatten(1))  # the mask always reads the raw embedding
    expected = (
        F.layer_norm(fields, (fields.shape[-1],), model.field_norm.weight, model.field_norm.bias)
        if norm
        else fields
    )
    torch.testing.assert_close(v_in, expected.flatten(1))
    assert not torch.allclose(
        v_in, fields.flatten(1) if norm else F.layer_norm(fields, (fields.shape[-1],)).flatten(1)
    )


def test_masknet_reduction_ratio_sets_the_masks_aggregation_width():
    model = _build("masknet", {"masknet": MaskNetConfig(reduction_ratio=0.5, block_dim=8)})
    n = 6 * 16
    assert all(b.mask.aggregate.out_features == n // 2 for b in model.blocks)
    assert _build("masknet").blocks[0].mask.aggregate.out_features == 2 * n  # the default r = 2


def test_pepnet_prior_fields_come_from_the_user_and_context_groups():
    spec = tiny_spec()
    prior = pepnet_inputs(spec)
    assert prior.domain == ("ctx_hour",)
    assert prior.personal == ("user_age", "user_gender", "item_id")
    # a user ID that is a sparse feature leads the personal prior; --model.feature_groups overrides
    spec.sparse.insert(0, SparseFeature("user_id", 20, high_cardinality=True))
    prior = pepnet_inputs(spec, "context=user_age;user=ctx_hour")
    assert prior.domain == ("user_age",) and prior.personal == ("user_id", "ctx_hour", "item_id")
    with pytest.raises(ValueError, match="--model.feature_groups names unknown sparse features"):
        pepnet_inputs(spec, "context=nope")
    spec.feature_groups = {}
    assert pepnet_inputs(spec).domain == ()  # no context group: EPNet reads the embeddings alone
    assert _build("pepnet").epnet.hidden.in_features == (1 + 6) * 16


def test_pepnet_gates_personalise_embeddings_and_layers():
    model = _build("pepnet").eval()
    batch = tiny_batch(tiny_spec(), rows=6)
    assert len(model.ppnet) == len(model.layers) + 1  # a gate per MLP layer and one on the output layer
    with torch.no_grad():
        fields, _ = model.fields(batch)
        delta = model.epnet(torch.cat([fields[:, model.domain].flatten(1), fields.flatten(1)], dim=1))
        assert delta.shape == (6, 6) and (delta > 0).all() and (delta < GATE_SCALE).all()
        assert delta.std(0).max() > 0  # gates differ between rows
        moved = dataclasses.replace(batch, dense=batch.dense + 1.0)  # the dense field is no prior
        assert not torch.allclose(model(moved).logits, model(batch).logits)
        model.epnet.gate.bias.fill_(-1e4)  # EPNet shuts every field: only the personal prior is left
        torch.testing.assert_close(model(moved).logits, model(batch).logits)


def test_ssr_static_subsets_are_distinct_even_and_fixed_by_their_seed():
    subsets = static_subsets(20, 4, 8, seed=7)
    assert subsets.shape == (4, 8)
    assert all(len(set(view.tolist())) == 8 for view in subsets)  # no dimension twice in a view
    counts = torch.bincount(subsets.flatten(), minlength=20)
    assert counts.max() - counts.min() <= 1  # 32 slots spread evenly over 20 dimensions
    torch.manual_seed(123)  # the global seed does not move them: every rank draws the same
    assert torch.equal(static_subsets(20, 4, 8, seed=7), subsets)
    assert not torch.equal(static_subsets(20, 4, 8, seed=8), subsets)


def test_ssr_static_view_reads_only_its_dimensions():
    cfg = SSRConfig("static", views=2, view_dim=5, layers=1)
    layer = SSRLayer(30, cfg, seed=1)
    x = torch.randn(3, 30)
    out = layer(x)
    assert out.shape == (3, 2, 5)
    outside = sorted(set(range(30)) - set(layer.subsets.flatten().tolist()))
    assert len(outside) == 20
    x2 = x.clone()
    x2[:, outside] += 10.0
    torch.testing.assert_close(layer(x2), out)  # filtered out
    x2[:, int(layer.subsets[1, 0])] += 10.0
    moved = layer(x2)
    torch.testing.assert_close(moved[:, 0], out[:, 0])  # only the view holding that dimension changes
    assert not torch.allclose(moved[:, 1], out[:, 1])


def test_competitive_sparsity_matches_its_iteration_and_leaves_exact_zeros():
    ics = CompetitiveSparse(num_views=1, dim=4)
    with torch.no_grad():
        ics.alpha.fill_(0.5)
        ics.gamma.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    z = torch.tensor([[[3.0, 1.0, 0.2, -1.0]]])  # (B, b, d)
    x = [max(v, 0.0) for v in z.flatten().tolist()]
    for _ in range(ICS_ROUNDS):
        mean = sum(x) / len(x)
        x = [max(v - 0.5 * mean, 0.0) for v in x]
    expected = torch.tensor([[[x[0] * 1.0, x[1] * 2.0, x[2] * 3.0, x[3] * 4.0]]])
    got = ics(z)
    torch.testing.assert_close(got, expected)
    assert got[0, 0, 0] > 0 and (got[0, 0, 2:] == 0).all()  # the strong one survives, weak ones die
    ssr = _build("ssr", {"ssr": SSRConfig(variant="dynamic", layers=3)})
    assert len(ssr.layers) == 3 and all(layer.subsets is None for layer in ssr.layers)
    assert all(layer.project is None for layer in _build("ssr").layers)


@pytest.mark.parametrize(
    "overrides, flag",
    [
        ({"masknet": MaskNetConfig(mode="stacked")}, "--model.masknet.mode"),
        ({"masknet": MaskNetConfig(blocks=0)}, "--model.masknet.blocks"),
        ({"masknet": MaskNetConfig(block_dim=0)}, "--model.masknet.block_dim"),
        ({"masknet": MaskNetConfig(dropout=1.0)}, "--model.masknet.dropout"),
        ({"masknet": MaskNetConfig(dropout=-0.1)}, "--model.masknet.dropout"),
        ({"masknet": MaskNetConfig(reduction_ratio=0.0)}, "--model.masknet.reduction_ratio"),
        ({"ssr": SSRConfig(variant="topk")}, "--model.ssr.variant"),
        ({"ssr": SSRConfig(views=0)}, "--model.ssr.views"),
        ({"ssr": SSRConfig(view_dim=-1)}, "--model.ssr.view_dim"),
        ({"ssr": SSRConfig(layers=0)}, "--model.ssr.layers"),
    ],
)
def test_bad_flags_name_the_flag(overrides, flag):
    with pytest.raises(ValueError, match=flag):
        ModelConfig(**overrides).validate()


# -- FLOPs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS + [("dnn", {}), ("deepfm", {})], ids=_ids)
def test_analytical_model_flops_match_torch_flop_counter(variant):
    name, over = variant
    model = _build(name, over).eval()
    batch = tiny_batch(tiny_spec(), rows=7)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(batch)
    expected = model_flops(name, model, 7)
    assert expected > 0 and counter.get_total_flops() == expected
    meta = _build(name, over, device=torch.device("meta"))  # what benchmarks/paper_experiments.py counts
    assert model_flops(name, meta, 7) == expected


def test_model_flops_refuse_models_with_other_matmuls():
    assert all(registry.get(name).flops is not None for name in NEW_MODELS)
    with pytest.raises(ValueError, match="no analytical FLOPs for model 'dcn'"):
        model_flops("dcn", _build("dcn"), 4)


# -- sharded over two processes == unsharded ------------------------------------------------------------
SHARDING = {"t_item": "column_wise", "t_user_age": "data_parallel"}
"""The other tables (t_user_gender, t_ctx_hour and the first-order t_*_w) go table_wise."""


def _sharded_vs_unsharded(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from trainer import distributed as D
    from trainer.step import TrainModule

    env = D.init_distributed("cpu")
    results = {}
    batch = tiny_batch(tiny_spec(), rows=12, seed=3)
    for variant in VARIANTS:
        module = TrainModule(_build(*variant, device=torch.device("meta")), False, "cpu")
        tables = [c.name for c in module.model.fields.ebc.embedding_bag_configs()]
        kinds = {t: SHARDING.get(t, "table_wise") for t in tables}
        dmp, _ = D.shard_model(module, env, kinds, "rowwise_adagrad", 0.1)
        dmp.eval()
        with torch.no_grad():
            _, sharded = dmp(batch)
        full = {}  # the whole tables on rank 0: gather every shard
        for key, value in dmp.state_dict().items():
            if hasattr(value, "local_shards"):
                t = torch.empty(value.size()) if rank == 0 else None
                value.gather(dst=0, out=t)
                full[key] = t
            else:
                full[key] = value
        if rank == 0:
            plain = TrainModule(_build(*variant, seed=1), False, "cpu")  # other weights until loaded
            plain.load_state_dict(full)
            plain.eval()
            with torch.no_grad():
                _, ref = plain(batch)
            results[_ids(variant)] = (sharded.logits, ref.logits)
    if rank == 0:
        torch.save(results, out)
    D.close_distributed()


@pytest.mark.slow
def test_sharded_models_match_unsharded(tmp_path):
    from trainer.distributed import _free_port

    out = tmp_path / "logits.pt"
    mp.spawn(_sharded_vs_unsharded, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    got = torch.load(out)
    assert sorted(got) == sorted(_ids(v) for v in VARIANTS)
    for name, (sharded, plain) in got.items():
        assert sharded.shape == (12,), name
        torch.testing.assert_close(sharded, plain, rtol=1e-5, atol=1e-6, msg=name)
