"""The tokenizer's choice for learned IDs, made by validation on the data at hand
(``store.tokenizer.select``): co-occurrence factors, the neighbours' rows, the proxy, and what
meta.json records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from data_pipeline.spec import DatasetSpec
from data_pipeline.synthetic import generate_dataset
from store.sid import SidTable
from store.tokenizer import select
from store.tokenizer.pipeline import main as tokenize_main


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    """Synthetic data with one extra 2,000-ID column besides the item (content) and the user."""
    root = tmp_path_factory.mktemp("select") / "data"
    generate_dataset(
        root, 3000, items=300, users=200, seed=0, progress=False, high_card_columns=1, high_card_size=2000
    )
    return root


def test_candidate_rules_and_their_names():
    names = [r.name for r in select.candidate_rules((20, 5, 5))]
    assert names == ["all", "reserved@5", "neighbours@5", "reserved@20", "neighbours@20"]
    assert [r.name for r in select.candidate_rules((5,), rare="neighbours")] == ["all", "neighbours@5"]


def test_neighbour_rows_never_read_a_rare_rows_own_values():
    gen = torch.Generator().manual_seed(0)
    learned = torch.randn(50, 6, generator=gen)
    factors = torch.randn(50, 4, generator=gen)
    counts = torch.cat([torch.full((30,), 40), torch.full((15,), 2), torch.zeros(5, dtype=torch.long)])
    out = select.neighbour_rows(learned, factors, counts, min_count=10)
    assert torch.equal(out[:30], learned[:30])  # frequent rows keep their learned values
    assert torch.equal(out[45:], learned[45:])  # absent rows are left alone (they get the reserved code)
    assert not torch.allclose(out[30:45], learned[30:45])
    poisoned = learned.clone()
    poisoned[30:45] = 1e6  # a rare row's own (label-bearing) values must not move its new row
    assert torch.allclose(select.neighbour_rows(poisoned, factors, counts, min_count=10)[30:45], out[30:45])
    # a linear map fitted on the frequent rows: a rare ID at the frequent IDs' mean factors gets their
    # mean row, and its row moves with its factors
    factors2 = factors.clone()
    factors2[30] = factors[:30].mean(0)
    out2 = select.neighbour_rows(learned, factors2, counts, min_count=10)
    assert torch.allclose(out2[30], learned[:30].mean(0), atol=1e-5)
    assert not torch.allclose(out2[31], out2[30], atol=1e-3)


def test_cooccurrence_factors_group_ids_that_share_their_rows(syn):
    spec = DatasetSpec.load(syn)
    train = select.read_sample(syn, spec, "train", 10_000)
    factors = select.cooccurrence_factors(train, spec, "user_id", 8, seed=0)
    assert factors.shape == (spec.table_rows("user_id"), 8)
    seen = torch.zeros(spec.table_rows("user_id"), dtype=torch.bool)
    for b in train:
        seen[b.sparse["user_id"].values()] = True
    assert torch.all(factors[~seen] == 0) and factors[seen].abs().sum(1).gt(0).all()
    # a user's static features (age, gender, region, device) are part of every one of its rows: users
    # with the same static values are closer in co-occurrence space than users without
    vals = {}
    for b in train:
        d = b.sparse.to_dict()
        for u, a, g in zip(
            d["user_id"].values().tolist(), d["age"].values().tolist(), d["gender"].values().tolist()
        ):
            vals[u] = (a, g)
    users = sorted(vals)
    f = torch.nn.functional.normalize(factors[users], dim=1)
    sim = f @ f.T
    same = torch.tensor([[vals[a] == vals[b] for b in users] for a in users])
    off_diag = ~torch.eye(len(users), dtype=torch.bool)
    assert sim[same & off_diag].mean() > sim[~same].mean() + 0.05


def test_proxy_scores_real_codes_above_random_codes(syn):
    spec = DatasetSpec.load(syn)
    cfg = select.SelectConfig(proxy_epochs=2)
    train = select.read_sample(syn, spec, "train", 10_000, 256)
    valid = select.read_sample(syn, spec, "valid", 10_000)
    raw = select.proxy_auc(train, valid, spec, None, cfg, seed=0)
    assert 0.55 < raw < 1
    rows = {f: spec.table_rows(f) for f in spec.high_cardinality}
    gen = torch.Generator().manual_seed(0)
    noise = SidTable({f: torch.randint(0, 8, (n, 2), generator=gen) for f, n in rows.items()}, 8)
    one_code = SidTable({f: torch.zeros(n, 2, dtype=torch.long) for f, n in rows.items()}, 8)
    # the item's topic as its codes: what a good tokenizer would find
    items = DatasetSpec.load(syn).table_rows("item_id")
    topics = torch.zeros(items, 2, dtype=torch.long)
    for b in train + valid:
        d = b.sparse.to_dict()
        topics[d["item_id"].values(), 0] = d["item_topic_l1"].values() % 8
        topics[d["item_id"].values(), 1] = d["item_topic_l2"].values() % 8
    topical = SidTable(
        {**{f: torch.zeros(n, 2, dtype=torch.long) for f, n in rows.items()}, "item_id": topics}, 8
    )
    scores = {
        name: select.proxy_auc(train, valid, spec, table, cfg, seed=0)
        for name, table in (("noise", noise), ("one_code", one_code), ("topical", topical))
    }
    assert all(math.isfinite(v) for v in scores.values())
    assert scores["topical"] > scores["one_code"] - 0.01


def tokenize(data: Path, out: Path, *flags: str) -> dict:
    """The tokenizer CLI with small sizes (K = 2, C = 8, 30 steps, a one-epoch FM); its meta.json."""
    argv = ["--data", str(data), "--out", str(out), "--num-sids", "2", "--codebook-size", "8"]
    assert tokenize_main([*argv, "--min-steps", "30", "--fm-epochs", "1", "--no-progress", *flags]) == 0
    return json.loads((out / "meta.json").read_text())


def test_default_chooses_by_validation_and_records_every_candidate(syn, tmp_path):
    meta = tokenize(syn, tmp_path / "sids", "--select.min-counts", "3,10", "--select.proxy-epochs", "1")
    sel = meta["selection"]
    assert not sel["forced"] and sel["train_rows"] > 0 and math.isfinite(sel["raw_id_valid_auc"])
    names = [c["name"] for c in sel["candidates"]]
    assert names == ["all", "reserved@3", "neighbours@3", "reserved@10", "neighbours@10", "out-of-fold all"]
    assert [c["oof"] for c in sel["candidates"]] == [False] * 5 + [True]
    # the best valid AUC among the rules that keep every feature's valid coverage >= 0.5
    for c in sel["candidates"]:
        low = [v for v in c["valid_coverage"].values() if v is not None and v < select.COVERAGE_FLOOR]
        assert c["eligible"] == (not low)
    assert by_rule(sel, "neighbours@10")["eligible"]  # every seen ID has real SIDs
    best = max((c for c in sel["candidates"] if c["eligible"]), key=lambda c: c["valid_auc"])
    assert sel["chosen"] == best["name"] and [c["chosen"] for c in sel["candidates"]].count(True) == 1
    rule = next(c for c in sel["candidates"] if c["chosen"])
    assert meta["oof_folds"] == (4 if rule["oof"] else 0)  # out-of-fold tables only when chosen
    for f in ("user_id", "hc_id_0"):  # the learned features follow the chosen rule
        m = meta["features"][f]
        assert m["min_count"] == rule["min_count"] and m["rare"] == rule["rare"]
        assert m["items_tokenized"] == rule["ids_tokenized"][f]
        assert m["test_coverage"] is None or 0 <= m["test_coverage"] <= 1
        assert 0 <= m["collision_rate_rows"] <= 1
    # neighbours@m tokenizes every seen ID; reserved@m only the frequent ones
    by_name = {c["name"]: c for c in sel["candidates"]}
    assert by_name["neighbours@10"]["ids_tokenized"]["hc_id_0"] == by_name["all"]["ids_tokenized"]["hc_id_0"]
    assert by_name["reserved@10"]["ids_tokenized"]["hc_id_0"] < by_name["all"]["ids_tokenized"]["hc_id_0"]
    assert meta["features"]["item_id"]["embedding_source"] == "content"


def by_rule(sel: dict, name: str) -> dict:
    return next(c for c in sel["candidates"] if c["name"] == name)


def test_a_given_min_count_forces_the_rule(syn, tmp_path):
    meta = tokenize(syn, tmp_path / "sids", "--min-count", "4", "--rare", "neighbours")
    assert meta["selection"] == {"forced": True, "chosen": "neighbours@4", "candidates": []}
    m = meta["features"]["hc_id_0"]
    assert m["neighbour_rows"] == m["rare_rows"] > 0 and m["unseen_rows"] == m["absent_rows"]


@pytest.mark.parametrize("flag", [["--rare", "nope"], ["--min-count", "-1"], ["--select.min-counts", "1"]])
def test_bad_selection_flags_exit_2(syn, tmp_path, flag, capsys):
    argv = ["--data", str(syn), "--out", str(tmp_path / "sids"), "--no-progress", *flag]
    assert tokenize_main(argv) == 2
    err = capsys.readouterr().err
    assert flag[0].lstrip("-").split(".")[-1].split("-")[0] in err


def test_disambiguation_code_makes_shared_tuples_unique_by_frequency():
    from store.tokenizer.pipeline import disambiguate

    codes = torch.tensor([[1, 2], [1, 2], [1, 2], [3, 4], [8, 8], [5, 6]])
    real = torch.tensor([True, True, True, True, False, True])
    count = torch.tensor([5, 9, 5, 1, 0, 2])
    out, stats = disambiguate(codes, real, count, codebook_size=8)
    assert out.shape == (6, 3) and torch.equal(out[:, :2], codes)
    # the tuple (1, 2): ID 1 (9 rows) first, then IDs 0 and 2 (5 rows each) by ID
    assert out[:4, 2].tolist() == [1, 0, 2, 0] and out[5, 2] == 0
    assert out[4, 2] == 8  # no real SIDs: the reserved code again
    assert stats["collision_rate_before_disambiguation"] == 0.6 and stats["collision_rate"] == 0.0
    assert stats["unique_sids"] == 5 and stats["collision_rate_rows"] == 0.0
    # a group larger than the codebook keeps colliding past the last code
    many = torch.zeros(5, 2, dtype=torch.long)
    out, stats = disambiguate(many, torch.ones(5, dtype=torch.bool), torch.arange(5), codebook_size=3)
    assert sorted(out[:, 2].tolist()) == [0, 1, 2, 2, 2] and stats["collision_rate"] == 0.6


def test_longtail_table_is_a_long_tail_that_convert_table_reads(tmp_path):
    from data_pipeline.__main__ import main as data_main
    from tests.benchmark_module import load_benchmark

    lt = load_benchmark("longtail_table")
    path = tmp_path / "lt.parquet"
    assert lt.main(["--out", str(path), "--rows", "6000", "--items", "3000", "--users", "300"]) == 0
    first = path.read_bytes()
    assert lt.main(["--out", str(path), "--rows", "6000", "--items", "3000", "--users", "300"]) == 0
    assert path.read_bytes() == first  # same seed, same bytes
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    assert table.column_names == ["ts", "user", "item", *lt.CONTEXT, "click"]
    per_item = table.group_by("item").aggregate([("click", "count")]).column("click_count").to_numpy()
    assert (per_item <= 2).mean() > 0.5  # most items have a row or two
    assert 0.1 < table.column("click").to_numpy().mean() < 0.3
    out = tmp_path / "data"
    argv = ["convert", "table", "--src", str(path), "--out", str(out), "--label", "click"]
    assert data_main([*argv, "--user", "user", "--item", "item", "--time", "ts"]) == 0
    spec = DatasetSpec.load(out)
    assert spec.item_id == "item" and "user" in spec.high_cardinality


def test_propensity_projection_finds_the_direction_that_carries_the_click_rate(syn):
    from tests.benchmark_module import load_benchmark

    prop = load_benchmark("propensity_sids")
    spec = DatasetSpec.load(syn)
    rows = spec.table_rows("item_id")
    counts = torch.zeros(rows, dtype=torch.float64)
    clicks = torch.zeros(rows, dtype=torch.float64)
    for b in select.read_sample(syn, spec, "train", 10**9):
        counts.index_add_(0, b.item_ids, torch.ones(b.batch_size, dtype=torch.float64))
        clicks.index_add_(0, b.item_ids, b.labels.double())
    rate = ((clicks + 1) / (counts + 2)).float()
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(rows, 3, generator=gen)
    carried = torch.cat([noise, torch.log(rate / (1 - rate))[:, None] + noise[:, :1]], 1)
    proj, corr = prop.propensity_projection(str(syn), spec, carried, fit_rows=5)
    assert proj.shape == (rows,) and corr > 0.9
    _, corr_noise = prop.propensity_projection(str(syn), spec, noise, fit_rows=5)  # no click rate there
    assert corr_noise < corr - 0.3
