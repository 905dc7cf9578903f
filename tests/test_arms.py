"""The embedding-memory arms: "id-hash" (the ID model with each tokenized feature's raw IDs hashed
into ``--model.id_hash.rows`` rows, by its data-time batch transform)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from data_pipeline.spec import DatasetSpec
from store.models.config import ModelConfig
from store.models.layers import low_cardinality_features
from store.models.store import IdHash, IdHashConfig, hashed_features
from store.models.zoo import batch_transform, build_model
from store.sid import sid_sources
from tests.test_sid import NUM_ITEMS, tiny_batch, tiny_spec

REPO = Path(__file__).resolve().parents[1]
ROWS = 16


def _train(run, data: Path, out: Path, model: str, *extra: str) -> dict:
    flags = ["--data", str(data), "--model", model, "--out", str(out), "--epochs", "1"]
    flags += ["--batch-size", "256", "--logging.progress", "false", "--logging.tensorboard", "false"]
    done = run("-m", "trainer", *flags, *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def test_id_hash_trains_and_its_tables_hold_the_budget(run, tiny_data, tmp_path):
    hashed = _train(run, tiny_data, tmp_path / "hash", "id-hash", "--model.id_hash.rows", str(ROWS))
    raw = _train(run, tiny_data, tmp_path / "id", "id")
    assert hashed["steps"] == raw["steps"] > 0 and 0.0 < hashed["logloss"] < 2.0
    spec = DatasetSpec.load(tiny_data)
    sources = list(sid_sources(spec))  # the tokenized features, one table each: t_item, t_user_id
    assert sources == ["item_id", "user_id"]
    width = 4 * ModelConfig().embedding_dim  # float32 bytes per row
    static = sum(spec.feature(f).vocab_size for f in low_cardinality_features(spec)) * width
    assert hashed["embedding_bytes_per_rank"] == [static + len(sources) * ROWS * width]
    assert raw["embedding_bytes_per_rank"] == [static + sum(spec.table_rows(f) for f in sources) * width]


def test_id_hash_trains_through_the_pipeline_on_fused_sharded_tables(run, tiny_data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="torchrec.distributed.train_pipeline")
    extra = ["--model.id_hash.rows", str(ROWS), "--sharding.default", "table_wise", "--max-steps", "3"]
    summary = _train(
        run, tiny_data, tmp_path / "hash", "id-hash", "--pipeline", "--model.history_tokens", "true", *extra
    )
    assert summary["steps"] == 3 and summary["pipeline"], summary["pipeline_blocker"]
    plan = {r["table"]: r["sharding"] for r in summary["sharding_plan"]}
    assert plan["t_item"] == plan["t_user_id"] == "table_wise"
    # the hash runs at data time: TorchRec pipelines both lookups, the hashed token collection's too
    assert "will NOT be pipelined" not in caplog.text
    pipelined = [r.getMessage() for r in caplog.records if "pipelined" in r.getMessage()]
    assert "Module 'model.items.ec' will be pipelined" in pipelined, pipelined


def test_id_hash_model_has_the_id_models_tokens_and_budget_rows():
    spec = tiny_spec()
    cfg = ModelConfig(id_item_tokens=3, id_hash=IdHashConfig(rows=ROWS))
    hashed, raw = build_model("id-hash", spec, cfg, None), build_model("id", spec, cfg, None)
    rows = {c.name: c.num_embeddings for c in hashed.items.ec.embedding_bag_configs()}
    assert rows == {"t_item": ROWS}  # the item table, serving item_id and hist_items
    assert {c.name: c.num_embeddings for c in raw.items.ec.embedding_bag_configs()} == {"t_item": NUM_ITEMS}
    assert hashed.num_item_tokens == raw.num_item_tokens == 3
    assert hashed.num_fixed_tokens == raw.num_fixed_tokens
    assert batch_transform("id", spec, None, cfg) is None


def test_the_transform_hashes_the_tokenized_features_only():
    spec = tiny_spec()
    cfg = ModelConfig(id_hash=IdHashConfig(rows=ROWS, seed=3))
    batch = tiny_batch(spec, rows=64)
    out = batch_transform("id-hash", spec, None, cfg)(batch)
    id_hash = IdHash.from_seed(ROWS, 3)
    assert out.sparse.keys() == batch.sparse.keys() and out.sid is None
    for key in batch.sparse.keys():
        before, after = batch.sparse[key], out.sparse[key]
        assert torch.equal(after.lengths(), before.lengths()), key
        hashed = key in ("item_id", "hist_items")  # the item table's features (tiny_spec's tokenized)
        assert torch.equal(after.values(), id_hash(before.values()) if hashed else before.values()), key
    assert torch.equal(out.labels, batch.labels) and torch.equal(out.item_ids, batch.item_ids)


def test_the_model_looks_up_the_hashed_row():
    spec = tiny_spec()
    cfg = ModelConfig(id_hash=IdHashConfig(rows=ROWS, seed=3))
    model = build_model("id-hash", spec, cfg, None)
    raw = tiny_batch(spec, rows=64)
    batch = batch_transform("id-hash", spec, None, cfg)(raw)
    pooled = model.items.lookup(batch)
    weight = model.items.ec.embedding_bags["t_item"].weight
    items = raw.sparse["item_id"].values()
    assert torch.equal(pooled["item_id"], weight[IdHash.from_seed(ROWS, 3)(items)])
    assert torch.isfinite(model(batch).logits).all()


def test_the_hash_is_deterministic_across_processes_and_spreads_ids():
    ids = torch.arange(200)
    rows = IdHash.from_seed(ROWS, 0)(ids)
    code = (
        "import torch; from store.models.store import IdHash; "
        f"print(IdHash.from_seed({ROWS}, 0)(torch.arange(200)).tolist())"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == rows.tolist()
    assert rows[0] == 0 and (rows[1:] > 0).all()  # ID 0 keeps row 0 alone
    counts = torch.bincount(rows[1:], minlength=ROWS)[1:]  # rows 1..B-1 share IDs 1..199
    assert (counts > 0).all() and counts.max() <= 3 * counts.float().mean()
    other = IdHash.from_seed(ROWS, 1)
    assert not torch.equal(other(ids), rows)  # another seed, another map
    big = torch.tensor([2**31, 2**40, 2**62])
    assert ((IdHash.from_seed(ROWS, 0)(big) >= 1) & (IdHash.from_seed(ROWS, 0)(big) < ROWS)).all()


def test_hashed_features_keep_keys_lengths_empty_lists_and_the_other_features():
    kjt = KeyedJaggedTensor.from_lengths_sync(
        ["item_id", "user_age", "hist_items"],
        torch.tensor([0, 5, 40, 41, 7, 0, 199]),
        torch.tensor([1, 1, 1, 1, 0, 3]),
    )
    id_hash = IdHash.from_seed(ROWS, 0)
    out = hashed_features(kjt, id_hash, ("item_id", "hist_items"))
    assert out.keys() == kjt.keys() and torch.equal(out.lengths(), kjt.lengths())
    assert out.values().tolist() == [
        *id_hash(torch.tensor([0, 5])).tolist(),
        40,
        41,
        *id_hash(kjt.values()[4:]).tolist(),
    ]
    assert out.values()[0] == 0 and out.values()[5] == 0
    assert out["hist_items"].lengths().tolist() == [0, 3] and kjt.values()[1] == 5  # the input unchanged


def test_a_bad_budget_exits_2_naming_the_flag(run, tiny_data, tmp_path):
    for flags in (
        ["--model.id_hash.rows", "1"],
        ["--model.id-hash.rows", "0"],
        ["--model.id_hash.seed", "-1"],
    ):
        done = run(
            "-m",
            "trainer",
            "--data",
            str(tiny_data),
            "--model",
            "id-hash",
            "--out",
            str(tmp_path / "o"),
            *flags,
        )
        assert done.returncode == 2, done.stderr
        assert f"--model.id_hash.{flags[0].rsplit('.', 1)[1]} must be" in done.stderr
