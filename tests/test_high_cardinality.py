"""STORE on any CTR table: feature roles, per-feature SIDs, the learned source, consistency checks,
and the ID-vs-STORE comparison on a dataset of every converter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_pipeline.spec import DataError, DatasetSpec, apply_high_card
from data_pipeline.synthetic import generate_dataset
from store.sid import SidTable, sid_feature_names
from store.tokenizer.pipeline import main as tokenize_main

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
PY = sys.executable


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    """Synthetic data with two extra 5,000-ID high-cardinality columns besides the item and the user."""
    root = tmp_path_factory.mktemp("hc") / "data"
    generate_dataset(
        root, 3000, items=400, users=300, seed=0, progress=False, high_card_columns=2, high_card_size=5000
    )
    return root


@pytest.fixture(scope="module")
def syn_sids(syn, tmp_path_factory) -> Path:
    """The tokenizer with no source flag: every feature learned by its own short FM."""
    out = tmp_path_factory.mktemp("hc") / "sids"
    argv = ["--data", str(syn), "--out", str(out), "--num-sids", "2", "--codebook-size", "8"]
    assert (
        tokenize_main([*argv, "--min-steps", "30", "--fm-epochs", "1", "--min-count", "3", "--no-progress"])
        == 0
    )
    return out


def test_roles_of_the_generated_spec_and_the_override(syn):
    spec = DatasetSpec.load(syn)
    assert spec.high_cardinality == ["item_id", "user_id", "hc_id_0", "hc_id_1"]
    assert apply_high_card(spec, "none").high_cardinality == ["item_id"]
    assert apply_high_card(spec, "hc_id_1").high_cardinality == ["item_id", "hc_id_1"]
    with pytest.raises(DataError, match=r"--high-card: unknown sparse feature\(s\) \['nope'\]"):
        apply_high_card(spec, "nope")
    # roles are not part of the fingerprint, the data is
    assert apply_high_card(spec, "none").fingerprint == spec.fingerprint


def test_tokenizer_default_learns_every_feature_and_reserves_a_code(syn, syn_sids):
    spec = DatasetSpec.load(syn)
    meta = json.loads((syn_sids / "meta.json").read_text())
    assert list(meta["features"]) == spec.high_cardinality
    # the item has content embeddings; the others only have what a model learns
    sources = {f: m["embedding_source"] for f, m in meta["features"].items()}
    assert sources == {"item_id": "content", "user_id": "learned", "hc_id_0": "learned", "hc_id_1": "learned"}
    assert meta["features"]["item_id"]["unseen_rows"] == 0 and meta["coverage"] == 1.0
    assert meta["unseen_code"] == 8 and meta["codebook_size"] == 9
    assert meta["dataset"]["fingerprint"] == spec.fingerprint
    sids = SidTable.load(syn_sids, spec)
    from store.tokenizer.learned import train_counts

    counts = train_counts(syn, spec, ["hc_id_0", "user_id"], progress=False)
    for f in ("hc_id_0", "user_id"):
        codes = sids.tables[f]
        assert codes.shape == (spec.feature(f).vocab_size, 2)
        unseen = counts[f] < 3  # --min-count 3
        # exactly the rows absent from the train split or seen fewer than 3 times carry the reserved
        # code, in every position; meta.json counts both kinds
        assert torch.equal((codes == 8).all(1), unseen)
        m = meta["features"][f]
        assert m["unseen_rows"] == int(unseen.sum()) > 0 and m["min_count"] == 3
        assert m["absent_rows"] == int((counts[f] == 0).sum()) > 0
        assert m["rare_rows"] == int(((counts[f] > 0) & (counts[f] < 3)).sum()) > 0
        assert int(codes[~unseen].max()) < 8
    params = meta["embedding_params"]["hc_id_0"]
    assert params == {"sid": 2 * 9, "raw_id": 5000}


def test_transform_gives_each_tokenized_feature_its_own_codes(syn, syn_sids):
    from data_pipeline.reader import ParquetBatchReader

    spec = DatasetSpec.load(syn)
    sids = SidTable.load(syn_sids, spec)
    batch = next(iter(ParquetBatchReader(syn, "train", 16, spec=spec, shuffle=False)))
    out = sids.transform(batch, spec)
    assert out.sid.keys() == sid_feature_names(spec, 2)
    assert "user_id" not in out.sparse.keys() and "hc_id_0" not in out.sparse.keys()
    assert "age" in out.sparse.keys()
    before, after = batch.sparse.to_dict(), out.sid.to_dict()
    for f, table in (("hc_id_1", "hc_id_1"), ("hist_items", "item_id"), ("item_id", "item_id")):
        for k in range(2):
            assert torch.equal(after[f"{f}_sid{k}"].values(), sids.tables[table][before[f].values(), k])


def test_store_and_id_arms_tokenize_the_same_features(syn, syn_sids):
    from store.models.config import ModelConfig
    from store.models.layers import low_cardinality_features
    from store.models.zoo import build_model

    spec = DatasetSpec.load(syn)
    sids = SidTable.load(syn_sids, spec)
    store = build_model("store", spec, ModelConfig(), sids)
    ident = build_model("id", spec, ModelConfig(), sids)
    assert store.num_fixed_tokens == ident.num_fixed_tokens
    tables = {c.name: c.num_embeddings for c in store.items.ec.embedding_bag_configs()}
    assert tables["t_hc_id_0_sid1"] == 9 and tables["t_sid0"] == 9 and len(tables) == 4 * 2
    raw = {c.name: c.num_embeddings for c in ident.items.ec.embedding_bag_configs()}
    assert raw == {"t_item": 400, "t_user_id": 300, "t_hc_id_0": 5000, "t_hc_id_1": 5000}
    # nothing high-cardinality is left in STORE's rotated static groups
    static = {c.name for c in store.static.ebc.embedding_bag_configs()}
    assert static == {f"t_{f}" for f in low_cardinality_features(spec)}
    assert not static & {"t_user_id", "t_hc_id_0", "t_item"}


def test_trainer_refuses_a_sid_table_of_another_dataset(syn, syn_sids, tmp_path, capsys):
    from trainer.__main__ import main

    other = tmp_path / "other"
    generate_dataset(
        other, 3000, items=400, users=300, seed=1, progress=False, high_card_columns=2, high_card_size=5000
    )
    flags = ["--data", str(other), "--model", "store", "--sids", str(syn_sids), "--out", str(tmp_path / "o")]
    assert main([*flags, "--logging.progress", "false"]) == 2
    err = capsys.readouterr().err
    assert "built for dataset 'synthetic'" in err and "fingerprint" in err
    assert not (tmp_path / "o" / "summary.json").exists()
    # the same data with a --high-card the table was not built for
    flags = ["--data", str(syn), "--model", "store", "--sids", str(syn_sids), "--out", str(tmp_path / "o2")]
    assert main([*flags, "--high-card", "user_id", "--logging.progress", "false"]) == 2
    assert "extra ['hc_id_0', 'hc_id_1']" in capsys.readouterr().err


def test_learned_from_a_finished_run_and_its_checks(syn, tmp_path, capsys):
    from store.tokenizer.learned import from_run

    spec = DatasetSpec.load(syn)
    run = tmp_path / "id"
    cmd = [PY, "-m", "trainer", "--data", str(syn), "--model", "id", "--out", str(run), "--max-steps", "4",
           "--batch-size", "64", "--eval.max_batches", "1", "--model.num_layers", "1",
           "--logging.progress", "false", "--logging.tensorboard", "false"]  # fmt: skip
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    tables = from_run(run, spec, ["item_id", "hc_id_0"])
    assert tables["item_id"].shape == (400, 16) and tables["hc_id_0"].shape == (5000, 16)
    assert torch.isfinite(tables["hc_id_0"]).all() and tables["hc_id_0"].std() > 0
    out = tmp_path / "sids"
    argv = [
        "--data",
        str(syn),
        "--out",
        str(out),
        "--num-sids",
        "2",
        "--codebook-size",
        "8",
        "--min-steps",
        "20",
    ]
    assert tokenize_main([*argv, "--from-run", str(run), "--no-progress"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["learned_from"] == f"run {run}"
    # a run of another dataset, or one without raw-ID tables, is refused naming the run
    other = tmp_path / "other"
    generate_dataset(other, 3000, items=400, users=300, seed=3, progress=False)
    assert tokenize_main(["--data", str(other), "--out", str(tmp_path / "x"), "--from-run", str(run)]) == 2
    assert f"--from-run {run}: trained on dataset 'synthetic'" in capsys.readouterr().err
    with pytest.raises(DataError, match="no summary.json"):
        from_run(tmp_path, spec, ["item_id"])


# -- the comparison on a dataset of every converter -----------------------------------------------------
def _convert(kind: str, tmp: Path) -> Path:
    from data_pipeline.__main__ import main as data_main

    out = tmp / kind
    if kind == "synthetic":
        generate_dataset(
            out, 3000, items=300, users=200, seed=0, progress=False, high_card_columns=1, high_card_size=2000
        )
        return out
    if kind == "avazu":
        from tests.test_convert import AVAZU_HEADER, avazu_row

        src = tmp / "avazu_src"
        src.mkdir()
        rows = [
            avazu_row(i, int(i % 3 == 0), 14102100 + i // 20, device_id=f"d{i % 37:07x}", ip=f"{i % 91:08x}")
            for i in range(300)
        ]
        (src / "train.csv").write_text(AVAZU_HEADER + "\n" + "\n".join(rows) + "\n")
        assert data_main(["convert", "avazu", "--src", str(src), "--out", str(out)]) == 0
        return out
    sources = {
        "movielens": SHARED / "ml-100k",
        "criteo": SHARED / "criteo-sample",
        "open-bandit": SHARED / "open-bandit",
        "table": SHARED / "open-bandit" / "all.csv",  # a real click log, as a user's own table
    }
    src = sources[kind]
    if not src.exists():
        pytest.skip(f"{src} is missing")
    extra = ["--label", "click", "--item", "item_id", "--time", "timestamp"] if kind == "table" else []
    assert data_main(["convert", kind, "--src", str(src), "--out", str(out), *extra]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["synthetic", "movielens", "criteo", "avazu", "open-bandit", "table"])
def test_compare_runs_end_to_end_with_defaults(kind, tmp_path):
    data = _convert(kind, tmp_path)
    out = tmp_path / "cmp"
    # default tokenizer rules and sources; its validation on a sample (the candidates are what counts
    # here, not the sample's size)
    cmd = [PY, "-m", "launch.compare", "--data", str(data), "--out", str(out), "--epochs", "1",
           "--batch-size", "32", "--max-steps", "3", "--tokenizer.min-steps", "10",
           "--tokenizer.select.train-rows", "4000", "--tokenizer.select.valid-rows", "2000",
           "--trainer.model.num-layers", "1", "--trainer.eval.batch-size", "1024"]  # fmt: skip
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    spec = DatasetSpec.load(data)
    meta = json.loads((out / "sids" / "meta.json").read_text())
    assert list(meta["features"]) == spec.high_cardinality
    summaries = {m: json.loads((out / m / "summary.json").read_text()) for m in ("id", "store")}
    for s in summaries.values():
        assert 0.0 <= s["auc"] <= 1.0 and s["steps"] == 3
    # the arms differ by the tokenized tables only: raw-ID rows vs K codebooks (bigger for a catalog
    # of 80 items, as in Open Bandit, than its raw table)
    rows = meta["embedding_params"]
    raw, sid = sum(p["raw_id"] for p in rows.values()), sum(p["sid"] for p in rows.values())
    id_bytes, store_bytes = (summaries[m]["embedding_bytes_per_rank"][0] for m in ("id", "store"))
    assert id_bytes - store_bytes == (raw - sid) * 16 * 4  # D = 16, fp32
    assert (out / "report" / "report.md").is_file()


def test_a_model_without_any_tokenized_feature_trains_a_step(syn):
    """--drop item_id --high-card none leaves STORE's twin nothing to tokenize: static tokens only."""
    from data_pipeline.reader import ParquetBatchReader
    from store.models.config import ModelConfig
    from store.models.zoo import build_model

    spec = apply_high_card(DatasetSpec.load(syn), "none").without(["item_id"])
    assert spec.high_cardinality == [] and "hist_items" not in spec.sparse_names
    model = build_model("id", spec, ModelConfig(num_layers=1), None)
    assert model.items is None
    batch = next(iter(ParquetBatchReader(syn, "train", 32, spec=spec, shuffle=False)))
    out = model(batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, batch.labels.float())
    loss.backward()
    assert out.logits.shape == (32,) and torch.isfinite(loss)
    assert model.head.out.weight.grad is not None
