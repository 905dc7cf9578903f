"""The typed records the stages exchange (store/records.py): each round-trips through its JSON, reads
older files (no version key, fields missing), keeps keys it does not know, and a trainer run's
summary.json and metrics.json parse into them with the scores the run reported."""

from __future__ import annotations

import json

from store.records import (
    BestRecord,
    DatasetRef,
    EvalEntry,
    PlanEntry,
    RunConfig,
    RunSummary,
    SidFeature,
    SidSelection,
    SidTableMeta,
    read_metrics,
)


def a_summary() -> RunSummary:
    valid = [EvalEntry("valid", 10 * (e + 1), e, {"auc": 0.6 + 0.01 * e, "logloss": 0.5}) for e in range(2)]
    test = EvalEntry(metrics={"auc": 0.7, "logloss": 0.4, "rows": 120, "bucket_auc": [None, 0.6]})
    return RunSummary(
        scores={"auc": 0.7, "logloss": 0.4}, test=test, test_last=EvalEntry(metrics={"auc": 0.69}),
        best=BestRecord("auc", 0.61, 1, 20, False), best_epoch=1, valid=valid, steps=20, samples_per_s=1e3,
        world_size=1, device="cpu", pipeline=True, peak_memory_bytes_per_rank=[2**20],
        embedding_params_per_rank=[100], sharding_plan=[PlanEntry("t_item", "table_wise", "fused", [0])],
        versions={"torch": "2"},
        config=RunConfig.from_dict({"data": "/d", "seed": 3, "eval": {"restore_best": True, "every_steps": 0},
                                    "model_config": {"embedding_dim": 8, "mlp_dims": [4]}, "logging": {}}),
        dataset=DatasetRef.from_dict({"name": "syn", "fingerprint": "abc", "vocab": {"item_id": 5}}),
    )  # fmt: skip


def test_records_round_trip():
    summary = a_summary()
    d = summary.to_dict()
    assert list(d)[:3] == ["version", "auc", "logloss"] and d["version"] == RunSummary.VERSION
    assert d["test"] == {"auc": 0.7, "logloss": 0.4, "rows": 120, "bucket_auc": [None, 0.6]}
    assert d["valid"][0] == {"split": "valid", "step": 10, "epoch": 0, "auc": 0.6, "logloss": 0.5}
    assert d["config"]["model_config"] == {"embedding_dim": 8, "mlp_dims": [4]}  # unknown keys kept
    assert d["dataset"]["vocab"] == {"item_id": 5}
    back = RunSummary.from_dict(json.loads(json.dumps(d)))
    assert back == summary and back.to_dict() == d and list(back.to_dict()) == list(d)
    assert back.test_scores() == {"auc": 0.7, "logloss": 0.4, "rows": 120, "bucket_auc": [None, 0.6]}
    assert back.test_scores("last") == {"auc": 0.69} and back.auc() == 0.7 and back.seed == 3

    entry = EvalEntry("valid", 3, 0, {"auc": 0.5, "gauc": None})
    assert EvalEntry.from_dict(entry.to_dict()) == entry and entry.scores() == {"auc": 0.5, "gauc": None}
    assert read_metrics([entry.to_dict()]) == [entry]

    meta = {
        "method": "opmq", "num_sids": 4, "codebook_size": 17, "codewords": 16, "tokenizer_config": {"x": 1},
        "dataset": {"name": "syn", "fingerprint": "abc"}, "learned_from": "run x",
        "embedding_params": {"item_id": {"sid": 68, "raw_id": 501}},
        "features": {"item_id": {"rows": 501, "items_tokenized": 400, "test_coverage": None,
                                 "collision_rate": 0.1, "absent_rows": 3}},
        "selection": {"forced": False, "chosen": "reserved@5", "candidates": [{"name": "reserved@5",
                      "valid_auc": 0.6, "chosen": True, "min_count": 5}]},
        "unseen_code": 16, "min_count": 5, "rare": "reserved", "version": SidTableMeta.VERSION,
    }  # fmt: skip
    table = SidTableMeta.from_dict(meta)
    assert table.to_dict() == meta and SidTableMeta.from_dict(table.to_dict()) == table
    item = table.tokenized()["item_id"]
    assert item.extra == {"absent_rows": 3} and item.real_sids and item.test_coverage_of is None
    assert table.selection.candidates[0].extra == {"min_count": 5} and table.codeword_count == 16
    assert table.embedding_params["item_id"].raw_id == 501 and table.dataset.fingerprint == "abc"
    built = SidTableMeta(method="opq", num_sids=2, codebook_size=8, selection=SidSelection("x", True))
    assert SidTableMeta.from_dict(built.to_dict()) == built


def test_old_files_without_a_version():
    old = {"auc": 0.7, "test": {"auc": 0.7}, "valid": [{"split": "valid", "epoch": 0, "auc": 0.6}],
           "steps": 5, "config": {"seed": 1}, "load_before": 0.5}  # fmt: skip
    summary = RunSummary.from_dict(old)
    assert summary.version == 1 and summary.scores == {"auc": 0.7} and summary.extra == {"load_before": 0.5}
    assert summary.test_last is None and summary.best is None and summary.dataset is None
    assert summary.test_scores("last") == {} and summary.config.eval.restore_best is None
    assert summary.peak_memory_bytes_per_rank == [] and summary.valid[0].value("auc") == 0.6
    assert RunSummary.from_dict(summary.to_dict()) == summary
    assert RunSummary.from_dict({}).version == 1 and RunSummary().version == RunSummary.VERSION

    # the oldest SID tables: the item's figures at the top level, no per-feature record
    oldest = {"method": "opq", "num_sids": 2, "codebook_size": 8, "num_items": 50, "coverage": 1.0,
              "collision_rate": 0.5, "unique_sids": 25}  # fmt: skip
    meta = SidTableMeta.from_dict(oldest)
    assert meta.version == 1 and meta.codeword_count == 8 and meta.unseen_code is None
    item = meta.tokenized()["item_id"]
    assert (item.coverage, item.collision_rate, item.unique_sids, item.rows) == (1.0, 0.5, 25, None)
    assert item.real_sids and item.test_coverage_of is None
    assert meta.to_dict() == {**oldest, "version": 1}
    # a feature without test coverage and without real SIDs: coverage 0
    assert SidFeature.from_dict({"items_tokenized": 0}).test_coverage_of == 0.0


def test_a_trainer_run_parses_into_its_records(run, tiny_data, tmp_path):
    out = tmp_path / "run"
    flags = ["--data", str(tiny_data), "--model", "dnn", "--out", str(out), "--epochs", "2"]
    assert run("-m", "trainer", *flags, "--batch-size", "256", "--seed", "4").returncode == 0
    raw = json.loads((out / "summary.json").read_text())
    summary = RunSummary.from_dict(raw)
    assert summary.version == RunSummary.VERSION == raw["version"]
    assert summary.to_dict() == raw and list(summary.to_dict()) == list(raw) and summary.extra == {}
    assert set(summary.scores) >= {"auc", "gauc", "logloss"}
    assert summary.scores == summary.test.scores() and summary.auc() == raw["auc"] == raw["test"]["auc"]
    assert summary.test_last is not None and summary.test_last.value("auc") == raw["test_last"]["auc"]
    assert [(e.split, e.epoch) for e in summary.valid] == [("valid", 0), ("valid", 1)]
    assert summary.best.metric == "auc" and summary.best_epoch == summary.best.epoch
    assert summary.best.value == max(e.value("auc") for e in summary.valid)
    assert summary.config.seed == 4 and summary.config.model == "dnn" and summary.config.epochs == 2
    assert summary.config.eval.restore_best is True and summary.config.batch_size == 256
    assert summary.dataset.fingerprint and summary.world_size == 1 and summary.device == "cpu"
    assert summary.sharding_plan and all(p.table and p.ranks == [0] for p in summary.sharding_plan)
    assert len(summary.embedding_params_per_rank) == 1 and summary.samples_per_s > 0
    metrics = read_metrics(json.loads((out / "metrics.json").read_text()))
    assert [e for e in metrics if e.split == "valid"] == summary.valid
    assert [e.to_dict() for e in metrics] == json.loads((out / "metrics.json").read_text())


def test_a_tokenizer_run_writes_its_meta_through_the_record(run, tiny_data, tmp_path):
    """meta.json is written through SidTableMeta (version 2) and reads back to the same JSON."""
    out = tmp_path / "sids"
    flags = ["--data", str(tiny_data), "--out", str(out), "--num-sids", "2", "--codebook-size", "8"]
    assert run("-m", "store.tokenizer", *flags, "--min-steps", "5", "--no-progress").returncode == 0
    raw = json.loads((out / "meta.json").read_text())
    meta = SidTableMeta.from_dict(raw)
    assert raw["version"] == meta.version == SidTableMeta.VERSION and meta.extra.keys() <= set(raw)
    assert meta.to_dict() == raw and (meta.num_sids, meta.codeword_count) == (2, 8)
    assert set(meta.tokenized()) >= {"item_id"} and meta.dataset.fingerprint
