"""The SID arms of the embedding-memory comparison: "sid-prefix" (one embedding per SID prefix) and
"hybrid" (SIDs plus a hashed raw-ID table), store.models.sid_arms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data_pipeline.spec import DatasetSpec
from store.models.config import ModelConfig
from store.models.layers import low_cardinality_features
from store.models.sid_arms import (
    HybridConfig,
    PrefixHash,
    SidPrefixConfig,
    prefix_rows,
    raw_feature_name,
)
from store.models.store import IdHash
from store.models.zoo import batch_transform, build_model
from store.sid import SidTable, sid_feature_name, sid_sources
from store.tokenizer.pipeline import main as tokenize_main
from tests.test_sid import tiny_batch, tiny_sids, tiny_spec

C, K = 8, 3


@pytest.fixture(scope="module")
def sids_dir(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arms") / "sids"
    argv = ["--data", str(tiny_data), "--out", str(out), "--num-sids", "2", "--codebook-size", "8"]
    assert (
        tokenize_main([*argv, "--min-steps", "20", "--fm-epochs", "1", "--min-count", "1", "--no-progress"])
        == 0
    )
    return out


def _train(run, data: Path, sids: Path, out: Path, model: str, *extra: str) -> dict:
    flags = ["--data", str(data), "--sids", str(sids), "--model", model, "--out", str(out), "--epochs", "1"]
    flags += ["--batch-size", "256", "--logging.progress", "false", "--logging.tensorboard", "false"]
    done = run("-m", "trainer", *flags, *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def test_prefix_rows_split_the_budget_and_stop_at_the_possible_prefixes():
    assert prefix_rows(4096, 4, 64) == [64, 1024, 1024, 1024]
    assert prefix_rows(100, 4, 64) == [25, 25, 25, 25]  # level 0 hashed too
    assert prefix_rows(1 << 20, 2, 9) == [9, 81]  # every prefix its own row


def test_exact_levels_number_every_prefix_and_hashed_levels_stay_in_range():
    codes = torch.tensor([[0, 1, 7, 7], [0, 0, 3, 3], [5, 5, 5, 6]])  # (K, N): four IDs
    prefix = PrefixHash.from_seed([8, 64, 40], 8, seed=1)
    rows = prefix(codes)
    assert rows[0].tolist() == [0, 1, 7, 7]  # (c1): its own row
    assert rows[1].tolist() == [0, 8, 59, 59]  # (c1, c2) = c1 * 8 + c2: its own row
    assert ((rows[2] >= 0) & (rows[2] < 40)).all()
    # the same tuple, the same row at every level
    same = prefix(torch.tensor([[7], [3], [5]]))
    assert same[:, 0].tolist() == rows[:, 2].tolist()
    # the same prefix in two IDs shares its row at every level up to where they differ
    assert rows[0, 2] == rows[0, 3] and rows[1, 2] == rows[1, 3]
    assert PrefixHash.from_seed([8, 64, 40], 8, seed=2).a != prefix.a


def test_the_prefix_transform_turns_codes_into_prefix_rows():
    spec, sids = tiny_spec(), tiny_sids(num_sids=K, codebook_size=C)
    cfg = ModelConfig(sid_prefix=SidPrefixConfig(rows=3 * 16))
    raw = tiny_batch(spec, rows=64)
    plain = batch_transform("store", spec, sids, cfg)(raw)
    out = batch_transform("sid-prefix", spec, sids, cfg)(raw)
    assert out.sid.keys() == plain.sid.keys()
    prefix = PrefixHash.from_seed(prefix_rows(48, K, C), C, 0)
    for f in sid_sources(spec)["item_id"]:
        codes = torch.stack([plain.sid[sid_feature_name(f, k)].values() for k in range(K)])
        want = prefix(codes)
        for k in range(K):
            got = out.sid[sid_feature_name(f, k)]
            assert torch.equal(got.values(), want[k]) and torch.equal(
                got.lengths(), plain.sid[sid_feature_name(f, k)].lengths()
            )
    assert prefix.rows == (8, 16, 16)


def test_sid_prefix_model_tables_hold_the_budget():
    spec, sids = tiny_spec(), tiny_sids(num_sids=K, codebook_size=C)
    model = build_model("sid-prefix", spec, ModelConfig(sid_prefix=SidPrefixConfig(rows=48)), sids)
    rows = {c.name: c.num_embeddings for c in model.items.ec.embedding_bag_configs()}
    assert rows == {"t_prefix0": 8, "t_prefix1": 16, "t_prefix2": 16}
    store = build_model("store", spec, ModelConfig(), sids)
    assert model.num_fixed_tokens == store.num_fixed_tokens


def test_hybrid_batches_carry_sids_and_hashed_ids_and_its_tokens_add_them():
    spec, sids = tiny_spec(), tiny_sids(num_sids=K, codebook_size=C)
    cfg = ModelConfig(hybrid=HybridConfig(rows=16, seed=2))
    raw = tiny_batch(spec, rows=64)
    out = batch_transform("hybrid", spec, sids, cfg)(raw)
    plain = batch_transform("store", spec, sids, cfg)(raw)
    id_hash = IdHash.from_seed(16, 2)
    for f in sid_sources(spec)["item_id"]:
        assert torch.equal(out.sid[raw_feature_name(f)].values(), id_hash(raw.sparse[f].values()))
        assert torch.equal(out.sid[raw_feature_name(f)].lengths(), raw.sparse[f].lengths())
    for key in plain.sid.keys():
        assert torch.equal(out.sid[key].values(), plain.sid[key].values())
    assert out.sparse.keys() == plain.sparse.keys()
    model = build_model("hybrid", spec, cfg, sids)
    rows = {c.name: c.num_embeddings for c in model.items.ec.embedding_bag_configs()}
    assert rows == {"t_sid0": C, "t_sid1": C, "t_sid2": C, "t_item_raw": 16}
    jts = model.items.lookup(out)
    store_part = torch.stack([jts[sid_feature_name("item_id", k)] for k in range(K)], 1)
    raw_part = model.items.split[0](jts["item_id_raw"]).view(64, K, -1)
    assert torch.allclose(model.items.feature_tokens(jts, "item_id"), store_part + raw_part)
    assert torch.isfinite(model(out).logits).all()


@pytest.mark.parametrize("history_tokens", ["false", "true"])
def test_both_arms_train_through_the_trainer_with_their_budgets(
    run, tiny_data, sids_dir, tmp_path, history_tokens
):
    spec = DatasetSpec.load(tiny_data)
    sids = SidTable.load(sids_dir, spec)
    width = 4 * ModelConfig().embedding_dim
    static = sum(spec.feature(f).vocab_size for f in low_cardinality_features(spec)) * width
    features = len(sid_sources(spec))
    extra = ["--max-steps", "3", "--model.history_tokens", history_tokens]
    prefix = _train(
        run, tiny_data, sids_dir, tmp_path / "p", "sid-prefix", "--model.sid_prefix.rows", "40", *extra
    )
    rows = sum(prefix_rows(40, sids.num_sids, sids.codebook_size))
    assert prefix["embedding_bytes_per_rank"] == [static + features * rows * width]
    hybrid = _train(run, tiny_data, sids_dir, tmp_path / "h", "hybrid", "--model.hybrid.rows", "32", *extra)
    sid_rows = sids.num_sids * sids.codebook_size
    assert hybrid["embedding_bytes_per_rank"] == [static + features * (sid_rows + 32) * width]
    assert prefix["steps"] == hybrid["steps"] == 3 and 0 < hybrid["logloss"] < 2


def test_a_bad_budget_exits_2_naming_the_flag(run, tiny_data, sids_dir, tmp_path):
    for model, flag, value in (("sid-prefix", "sid_prefix.rows", "0"), ("hybrid", "hybrid.rows", "1")):
        done = run("-m", "trainer", "--data", str(tiny_data), "--sids", str(sids_dir), "--model", model,
                   "--out", str(tmp_path / model), f"--model.{flag}", value)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert f"--model.{flag} must be" in done.stderr
