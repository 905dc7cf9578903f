"""Every model of the zoo on a tiny hand-made batch: shapes, the embedding contract, overfitting."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.modules.mc_embedding_modules import BaseManagedCollisionEmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from data_pipeline.batch import Batch
from store.models import registry
from store.models.autoint import AutoIntConfig
from store.models.config import ModelConfig
from store.models.dcn import DCNConfig
from store.models.deepfm import factorization_machine
from store.models.dnn import DNN
from store.models.inputs import field_inputs
from store.models.layers import (
    EXCLUSIVE_INPUT,
    FieldInputs,
    HistoryFeature,
    Table,
    init_output_bias,
    output_bias,
)
from store.models.rankmixer import RankMixerConfig
from store.models.store import store_inputs
from store.models.zoo import batch_transform, build_model
from tests.test_sid import NUM_ITEMS, tiny_batch, tiny_sids, tiny_spec

# (model, config overrides): every model plus STORE's ablations
VARIANTS = [(name, {}) for name in registry.names()] + [
    ("store", {"vanilla_attention": True}),
    ("store", {"rotation": False}),
    ("store", {"history_tokens": True}),
    ("id", {"history_tokens": True}),
    ("id-hash", {"history_tokens": True}),
    ("sid-prefix", {"history_tokens": True}),
    ("hybrid", {"history_tokens": True}),
    ("hybrid", {"history_tokens": True, "history_sid_tokens": True}),
    ("id-zch", {"history_tokens": True}),
    ("store", {"orthogonal_parametrization": False}),
]


def _ids(v):
    name, over = v
    return name + "".join(f"-{k}={val}" for k, val in over.items())


def _setup(name: str, overrides: dict, rows: int = 32, seed: int = 0):
    spec, sids, cfg = tiny_spec(), tiny_sids(), ModelConfig(**overrides)
    model = build_model(name, spec, cfg, sids)
    batch = tiny_batch(spec, rows=rows, seed=seed)
    transform = batch_transform(name, spec, sids, cfg)
    return model, (batch if transform is None else transform(batch))


def _loss(out, batch) -> tuple[torch.Tensor, torch.Tensor]:
    bce = F.binary_cross_entropy_with_logits(out.logits, batch.labels)
    return bce, bce + sum(out.aux_losses.values())


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_output_shape_and_finite_losses(variant):
    model, batch = _setup(*variant, rows=5)
    out = model(batch)
    assert out.logits.shape == (5,) and torch.isfinite(out.logits).all()
    for name, value in out.aux_losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    assert torch.isfinite(_loss(out, batch)[1])


@pytest.mark.parametrize("name", registry.names())
def test_collections_serve_exactly_the_batch_keys(name):
    spec, sids = tiny_spec(), tiny_sids()
    cfg = ModelConfig(history_tokens=True)
    model = build_model(name, spec, cfg, sids)
    batch = tiny_batch(spec)
    transform = batch_transform(name, spec, sids, cfg)
    batch = batch if transform is None else transform(batch)
    reads_sids = registry.get(name).needs_sids  # store, sid-prefix, hybrid: their tokens from batch.sid
    keys = batch.sparse.keys() + (batch.sid.keys() if batch.sid is not None else [])
    features, tables, inside = [], [], set()
    for m in model.modules():
        if isinstance(m, EmbeddingBagCollection):
            configs = m.embedding_bag_configs()
        elif isinstance(m, EmbeddingCollection):
            configs = m.embedding_configs()
        else:
            continue
        inside |= {id(sub) for sub in m.modules()}
        tables += [c.name for c in configs]
        features += [f for c in configs for f in c.feature_names]
    # no other embedding tables hide outside the collections
    loose = [m for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))]
    assert not [m for m in loose if id(m) not in inside]
    assert set(features) == set(keys)
    if reads_sids:  # the SID collection reads batch.sid, which holds exactly its features
        sid_ec = model.items.ec
        assert getattr(sid_ec, EXCLUSIVE_INPUT)
        assert [f for c in _configs(sid_ec) for f in c.feature_names] == batch.sid.keys()
    assert len(tables) == len(set(tables)) and all(t.startswith("t_") for t in tables)
    if name in ("store", "hybrid"):
        assert {t for t in tables if "sid" in t} == {"t_sid0", "t_sid1", "t_sid2"}
    if reads_sids:
        assert "t_item" not in tables
    else:
        assert "t_item" in tables


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_fx_traceable_down_to_collections_which_take_batch_kjts_directly(variant):
    """What TorchRec's TrainPipelineSparseDist needs. Its tracer (torchrec's
    ``_get_leaf_module_names``) makes every direct child of a module holding a collection a leaf
    by name (unless it holds a collection too); the rest must trace, and each collection must be
    called on ``batch.sparse`` (STORE's SID codebooks: ``batch.sid``) itself. A managed-collision
    collection (ID-ZCH) counts as one: TorchRec shards it whole, its remapper with its tables."""
    collections = (EmbeddingBagCollection, EmbeddingCollection, BaseManagedCollisionEmbeddingCollection)
    model, _ = _setup(*variant)

    def holds(m: torch.nn.Module) -> bool:
        return any(isinstance(c, collections) for c in m.modules())

    leaves = {
        f"{parent}.{name}".lstrip(".")
        for parent, m in model.named_modules()
        if holds(m) and not isinstance(m, collections)
        for name, child in m.named_children()
        if not holds(child)
    }

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
            return isinstance(m, collections) or qualname in leaves or super().is_leaf_module(m, qualname)

    graph = Tracer().trace(model)
    calls = [
        n
        for n in graph.nodes
        if n.op == "call_module" and isinstance(model.get_submodule(n.target), collections)
    ]
    assert calls
    fields = []
    for node in calls:
        (arg,) = node.args
        assert arg.op == "call_function" and arg.args[0].op == "placeholder"
        fields.append(arg.args[1])
    reads_sids = registry.get(variant[0]).needs_sids
    assert sorted(fields) == (["sid", "sparse"] if reads_sids else ["sparse"] * len(calls))


def _configs(collection):
    if isinstance(collection, EmbeddingBagCollection):
        return collection.embedding_bag_configs()
    return collection.embedding_configs()


@pytest.mark.parametrize("history_tokens", [False, True])
def test_sid_tables_have_codebook_rows_and_id_table_has_item_rows(history_tokens):
    spec, sids = tiny_spec(), tiny_sids(codebook_size=8)
    store = build_model("store", spec, ModelConfig(history_tokens=history_tokens), sids)
    ident = build_model("id", spec, ModelConfig(history_tokens=history_tokens), sids)
    kind = EmbeddingCollection if history_tokens else EmbeddingBagCollection  # pooled history: bags
    assert isinstance(store.items.ec, kind) and isinstance(ident.items.ec, kind)
    rows = {c.name: c.num_embeddings for c in _configs(store.items.ec)}
    assert rows == {"t_sid0": 8, "t_sid1": 8, "t_sid2": 8}
    assert {c.name: c.num_embeddings for c in _configs(ident.items.ec)} == {"t_item": 50}
    # same architecture otherwise: K item tokens each, same token count and layer shapes
    assert store.num_fixed_tokens == ident.num_fixed_tokens == 3 + 3 + (0 if history_tokens else 1)
    assert [p.shape for p in store.encoder.parameters()] == [p.shape for p in ident.encoder.parameters()]


@pytest.mark.parametrize("name", registry.names())
def test_meta_device_builds_collections_on_meta_and_dense_layers_on_cpu(name):
    spec, sids = tiny_spec(), tiny_sids()
    model = build_model(name, spec, ModelConfig(), sids, device=torch.device("meta"))
    emb = [
        p
        for m in model.modules()
        if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection))
        for p in m.parameters()
    ]
    assert emb and all(p.is_meta for p in emb)
    emb_ids = {id(p) for p in emb}
    assert all(p.device.type == "cpu" for p in model.parameters() if id(p) not in emb_ids)


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_overfits_a_tiny_batch_and_every_parameter_learns(variant):
    torch.manual_seed(0)
    model, batch = _setup(*variant)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    got_grad = {name: False for name, _ in model.named_parameters()}
    first = final = None
    for _ in range(150):  # stops early: most models get there in ~15 steps
        opt.zero_grad()
        bce, total = _loss(model(batch), batch)
        first, final = first or bce.item(), bce.item()
        if final < 0.3 * first:
            break
        total.backward()
        for name, p in model.named_parameters():
            got_grad[name] |= p.grad is not None and bool(p.grad.abs().sum() > 0)
        opt.step()
    assert final < 0.5 * first, (first, final)
    assert all(got_grad.values()), [n for n, ok in got_grad.items() if not ok]


def test_factorization_machine_is_the_sum_of_pairwise_dot_products():
    v = torch.randn(4, 3, 5)
    expected = (v[:, 0] * v[:, 1]).sum(1) + (v[:, 0] * v[:, 2]).sum(1) + (v[:, 1] * v[:, 2]).sum(1)
    torch.testing.assert_close(factorization_machine(v), expected)


def test_store_without_sids_and_unknown_model_are_rejected():
    spec = tiny_spec()
    with pytest.raises(ValueError, match="model 'store' needs --sids"):
        build_model("store", spec, ModelConfig(), None)
    with pytest.raises(ValueError, match="unknown model 'gbdt'"):
        build_model("gbdt", spec, ModelConfig(), None)
    assert build_model("id", spec, ModelConfig(), None).num_item_tokens == 1  # no SID table: 1 token


def test_batch_transform_moves_tokenized_features_to_sids_for_store():
    spec, sids, cfg = tiny_spec(), tiny_sids(), ModelConfig()
    batch = tiny_batch(spec, rows=8)
    moved, expected = batch_transform("store", spec, sids, cfg)(batch), sids.transform(batch, spec)
    sid_keys = [f"{f}_sid{k}" for k in range(3) for f in ("item_id", "hist_items")]
    assert moved.sid.keys() == expected.sid.keys() == sid_keys
    assert torch.equal(moved.sid.values(), expected.sid.values())
    assert torch.equal(moved.sid.lengths(), expected.sid.lengths())
    assert moved.sparse.keys() == ["user_age", "user_gender", "ctx_hour"]
    transformed = [name for name in registry.names() if batch_transform(name, spec, sids, cfg) is not None]
    assert transformed == ["store", "id-hash", "sid-prefix", "hybrid"]
    with pytest.raises(ValueError, match="model 'store' needs --sids"):
        batch_transform("store", spec, None, cfg)
    with pytest.raises(ValueError, match="unknown model 'gbdt'"):
        batch_transform("gbdt", spec, sids, cfg)


@pytest.mark.parametrize(
    "overrides, flag",
    [
        ({"num_heads": 3}, "--model.num_heads"),
        ({"moba_sparsity": 1.0}, "--model.moba_sparsity"),
        ({"embedding_dim": 0}, "--model.embedding_dim"),
        ({"mlp_dims": ()}, "--model.mlp_dims"),
        ({"feature_groups": "user"}, "--model.feature_groups"),
        ({"dcn": DCNConfig(cross_layers=-1)}, "--model.dcn.cross_layers"),
        ({"autoint": AutoIntConfig(heads=3)}, "--model.autoint.heads"),
        ({"autoint": AutoIntConfig(layers=-1)}, "--model.autoint.layers"),
        ({"rankmixer": RankMixerConfig(tokens=5)}, "--model.rankmixer.tokens"),
    ],
)
def test_config_validation_names_the_flag(overrides, flag):
    with pytest.raises(ValueError, match=flag):
        ModelConfig(**overrides).validate()


def test_feature_groups_from_config_override_the_spec():
    spec, sids = tiny_spec(), tiny_sids()
    model = build_model("store", spec, ModelConfig(feature_groups="a=user_age;b=ctx_hour"), sids)
    assert model.groups == {"a": ["user_age"], "b": ["ctx_hour"], "other": ["user_gender"]}
    assert build_model("store", spec, ModelConfig(), sids).groups == {
        "user": ["user_age", "user_gender"],
        "context": ["ctx_hour"],
    }
    with pytest.raises(ValueError, match="unknown sparse features"):
        build_model("store", spec, ModelConfig(feature_groups="a=nope"), sids)


@pytest.mark.parametrize("name", ["store", "id"])
def test_pooled_item_lookup_equals_sequence_lookup_with_the_same_tables(name):
    """With the history pooled into one token the item features are looked up as mean-pooled bags;
    that must equal the per-position lookup followed by the masked mean (empty histories give 0)."""
    spec, sids = tiny_spec(), tiny_sids()
    bags = build_model(name, spec, ModelConfig(), sids).items
    seqs = build_model(name, spec, ModelConfig(history_tokens=True), sids).items
    assert bags.pooled and not seqs.pooled
    for (n1, w1), (n2, w2) in zip(bags.ec.named_parameters(), seqs.ec.named_parameters(), strict=True):
        assert n1.split(".")[-2] == n2.split(".")[-2]  # same table
        with torch.no_grad():
            w2.copy_(w1)
    if hasattr(bags, "split"):
        seqs.split.load_state_dict(bags.split.state_dict())
    batch = tiny_batch(spec, rows=16, seed=3)
    assert (batch.sparse.to_dict()["hist_items"].lengths() == 0).any()  # covers the empty history
    if name == "store":
        batch = sids.transform(batch, spec)
    a, b = bags.lookup(batch), seqs.lookup(batch)
    torch.testing.assert_close(bags.feature_tokens(a, "item_id"), seqs.feature_tokens(b, "item_id"))
    torch.testing.assert_close(bags.history(a, "hist_items"), seqs.history(b, "hist_items"))


# -- explicit inputs and per-model configs --------------------------------------------------------------
def test_build_model_turns_the_spec_into_explicit_inputs():
    spec, sids = tiny_spec(), tiny_sids(codebook_size=8)
    fields = field_inputs(spec)
    assert fields.static_tables == [
        Table("t_user_age", 7, ("user_age",)),
        Table("t_user_gender", 3, ("user_gender",)),
        Table("t_ctx_hour", 24, ("ctx_hour",)),
    ]
    assert fields.item_table == Table("t_item", NUM_ITEMS, ("item_id", "hist_items"))
    assert fields.item_feature == "item_id" and fields.num_dense == 2
    assert fields.history == [HistoryFeature("hist_items", 5)]
    store = store_inputs(spec, "", sids, sids.num_sids)
    assert store.sid_tokens and store.num_tokens == 3 and store.tokenized == ["item_id"]
    assert store.token_tables == [
        Table(f"t_sid{k}", 8, (f"item_id_sid{k}", f"hist_items_sid{k}")) for k in range(3)
    ]
    assert store.static_tables == fields.static_tables  # no high-cardinality static feature here
    assert store.groups == {"user": ["user_age", "user_gender"], "context": ["ctx_hour"]}
    ident = store_inputs(spec, "a=ctx_hour", None, 2)
    assert not ident.sid_tokens and ident.num_tokens == 2
    assert ident.token_tables == [Table("t_item", NUM_ITEMS, ("item_id", "hist_items"))]
    assert ident.groups == {"a": ["ctx_hour"], "other": ["user_age", "user_gender"]}


def test_a_model_builds_from_explicit_inputs_without_a_spec():
    inputs = FieldInputs(
        static_tables=[Table("t_a", 10, ("a",)), Table("t_b", 4, ("b",))],
        item_table=None,
        item_feature="",
        history=[],
        num_dense=3,
    )
    torch.manual_seed(0)
    model = DNN(inputs, ModelConfig(embedding_dim=8, mlp_dims=(4,), dropout=0.0))
    configs = model.fields.ebc.embedding_bag_configs()
    assert [(c.name, c.num_embeddings, c.embedding_dim, c.feature_names) for c in configs] == [
        ("t_a", 10, 8, ["a"]),
        ("t_b", 4, 8, ["b"]),
    ]
    assert model.fields.num_fields == 3  # a, b and the dense features
    #     0       1   <-- batch
    # a   [1]     [9]
    # b   [0, 3]  []
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["a", "b"], values=torch.tensor([1, 9, 0, 3]), lengths=torch.tensor([1, 1, 2, 0])
    )
    batch = Batch(torch.randn(2, 3), kjt, torch.zeros(2), torch.arange(2), torch.arange(2))
    logits = model(batch).logits
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    # b is empty in row 1: its field is the zero vector, so changing b's table moves row 0 only
    with torch.no_grad():
        model.fields.ebc.embedding_bags["t_b"].weight.add_(1.0)
    moved = model(batch).logits
    assert moved[0] != logits[0] and moved[1] == logits[1]


def test_model_flags_shape_the_baselines():
    spec, sids = tiny_spec(), tiny_sids()
    cfg = ModelConfig(
        embedding_dim=8,
        dcn=DCNConfig(cross_layers=5),
        autoint=AutoIntConfig(layers=3, heads=4),
        rankmixer=RankMixerConfig(tokens=2),
    )
    assert len(build_model("dcn", spec, cfg, sids).cross.kernels) == 5
    autoint = build_model("autoint", spec, cfg, sids)
    assert len(autoint.layers) == 3 and autoint.layers[0].attn.num_heads == 4
    assert build_model("rankmixer", spec, dataclasses.replace(cfg, num_layers=1), sids).num_tokens == 2
    assert len(build_model("onetrans", spec, dataclasses.replace(cfg, num_layers=4), sids).stack.layers) == 4


@pytest.mark.parametrize("name", ["dnn", "deepfm", "id", "store"])
def test_embedding_init_std_reaches_every_table(name):
    spec, sids = tiny_spec(), tiny_sids()
    for std in (1e-4, 0.1):
        model = build_model(name, spec, ModelConfig(embedding_init_std=std), sids)
        tables = [p for n, p in model.named_parameters() if "embedding" in n and n.endswith(".weight")]
        assert tables
        for w in tables:
            bound = 3**0.5 * std
            assert float(w.detach().abs().max()) <= bound * (1 + 1e-6)
            assert float(w.detach().std()) == pytest.approx(std, rel=0.5)  # tiny tables: loose


@pytest.mark.parametrize("name", registry.names())
def test_every_model_has_an_output_bias_set_to_the_base_rate(name):
    spec, sids = tiny_spec(), tiny_sids()
    model = build_model(name, spec, ModelConfig(), sids)
    init_output_bias(model, 0.01)
    assert float(output_bias(model)) == pytest.approx(math.log(0.01 / 0.99))


def test_deepfm_crosses_the_sparse_fields_only():
    """With the deep tower silenced, DeepFM's logit (bias + first order + FM) must not move with the
    dense features: they are no FM field."""
    model, batch = _setup("deepfm", {})
    with torch.no_grad():
        for p in model.head.parameters():
            p.zero_()
    base = model(batch).logits
    shifted = dataclasses.replace(batch, dense=batch.dense + 5.0)
    torch.testing.assert_close(model(shifted).logits, base)
    assert model.fields.num_sparse_fields == model.fields.num_fields - 1  # the batch has dense features
