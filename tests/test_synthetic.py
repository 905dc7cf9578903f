"""The synthetic generator: layout, determinism, and the statistical structure the ID-vs-SID study needs."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from data_pipeline import synthetic
from data_pipeline.cli import parse
from data_pipeline.spec import ITEMS_DIR, SPLITS, DataError, DatasetSpec
from data_pipeline.writer import arrow_schema

SMALL = dict(items=2_000, users=1_000, seed=7)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "ds"
    synthetic.generate_dataset(out, 60_000, rows_per_shard=20_000, progress=False, **SMALL)
    return out


def read(root: Path, split: str):
    return pq.read_table(root / split)


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_and_schema_match_spec(dataset):
    spec = DatasetSpec.load(dataset)
    schema = arrow_schema(spec)
    assert spec.num_rows == {"train": 48_000, "valid": 6_000, "test": 6_000}
    for split in SPLITS:
        shards = sorted((dataset / split).glob("*.parquet"))
        assert len(shards) >= 1
        t = read(dataset, split)
        assert t.num_rows == spec.num_rows[split]
        assert t.schema.names == schema.names
        assert [f.type for f in t.schema] == [f.type for f in schema]
        for f in spec.sparse:
            col = t[f.name].combine_chunks()
            values = col.flatten() if f.multi else col
            v = values.to_numpy()
            assert v.min() >= 0 and v.max() < f.vocab_size, f.name
    assert len(spec.dense) == 8 and spec.prob == "click_prob" and spec.user_id == "user_id"
    assert spec.feature("item_id").item_ref and spec.feature("hist_items").item_ref
    assert spec.feature("hist_items").multi and spec.feature("hist_items").max_len == 20
    assert spec.feature("user_id").vocab_size == SMALL["users"]
    assert set(spec.feature_groups) == {"user", "context", "item"}


def test_item_table_and_row_categories_agree(dataset):
    spec = DatasetSpec.load(dataset)
    it = spec.item_table
    items = pq.read_table(dataset / ITEMS_DIR)
    assert items.num_rows == it.num_items == SMALL["items"]
    assert np.array_equal(items[it.id_column].to_numpy(), np.arange(it.num_items))
    emb = np.stack(items[it.embedding_column].to_numpy(zero_copy_only=False))
    assert emb.shape == (it.num_items, it.embedding_dim) and emb.dtype == np.float32
    for c in it.category_columns:
        assert items[c].type == "int64"
    rows = read(dataset, "train")
    ids = rows["item_id"].to_numpy()
    assert np.array_equal(rows["item_topic_l1"].to_numpy(), items["topic_l1"].to_numpy()[ids])
    assert np.array_equal(rows["item_topic_l2"].to_numpy(), items["topic_l2"].to_numpy()[ids])


def test_click_rate_and_calibration(dataset):
    t = read(dataset, "train")
    y, p = t["click"].to_numpy(), t["click_prob"].to_numpy().astype(np.float64)
    assert set(np.unique(y)) == {0.0, 1.0}
    assert 0.05 < y.mean() < 0.25
    assert abs(p.mean() - 0.1) < 0.01  # the intercept is calibrated to --ctr 0.1
    se = np.sqrt(p.mean() * (1 - p.mean()) / len(y))
    assert abs(y.mean() - p.mean()) < 4 * se
    # Calibrated in bins too, not only on average.
    bins = np.digitize(p, [0.05, 0.15, 0.3])
    for b in range(4):
        m = bins == b
        if m.sum() > 2_000:
            assert abs(y[m].mean() - p[m].mean()) < 0.03


def test_bayes_auc_is_informative_but_not_perfect(dataset):
    t = read(dataset, "test")
    auc = roc_auc_score(t["click"].to_numpy(), t["click_prob"].to_numpy())
    assert 0.7 < auc < 0.92


def test_item_popularity_is_zipf_like(dataset):
    items = read(dataset, "train")["item_id"].to_numpy()
    counts = np.sort(np.bincount(items, minlength=SMALL["items"]))[::-1]
    top1 = counts[: SMALL["items"] // 100].sum() / counts.sum()
    assert top1 > 0.2, top1
    assert (counts == 0).sum() > 0 or counts[-1] < counts[0] / 100  # a long, thin tail
    bucket = pq.read_table(dataset / ITEMS_DIR)["pop_bucket"].to_numpy()
    per_item = np.bincount(items, minlength=SMALL["items"])
    assert per_item[bucket == bucket.min()].mean() > 20 * per_item[bucket == bucket.max()].mean()


def test_embeddings_reflect_topics(dataset):
    items = pq.read_table(dataset / ITEMS_DIR)
    emb = np.stack(items["embedding"].to_numpy(zero_copy_only=False))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    l1, l2 = items["topic_l1"].to_numpy(), items["topic_l2"].to_numpy()
    cos = emb @ emb.T
    off_diag = ~np.eye(len(emb), dtype=bool)
    same_l2 = (l2[:, None] == l2[None]) & off_diag
    same_l1 = (l1[:, None] == l1[None]) & ~same_l2 & off_diag
    other = l1[:, None] != l1[None]
    assert cos[same_l2].mean() > cos[same_l1].mean() + 0.1
    assert cos[same_l1].mean() > cos[other].mean() + 0.3


def test_history_lists_are_valid_and_follow_preferences(dataset):
    t = read(dataset, "train")
    hist = t["hist_items"].combine_chunks()
    lengths = np.diff(hist.offsets.to_numpy())
    values = hist.values.to_numpy()
    assert lengths.max() <= 20 and lengths.min() < lengths.max()
    assert values.min() >= 0 and values.max() < SMALL["items"]
    # History comes from the same user's tastes as the impression: topics overlap beyond chance.
    topic = pq.read_table(dataset / ITEMS_DIR)["topic_l1"].to_numpy()
    rows = np.repeat(np.arange(len(lengths)), lengths)
    same = topic[values] == topic[t["item_id"].to_numpy()][rows]
    chance = np.sum(np.bincount(topic[values]) ** 2) / len(values) ** 2
    assert same.mean() > 2 * chance


def test_history_drifts_with_time(dataset):
    # A user's history is a window sliding along their item sequence: rows close in time share
    # more items than rows far apart.
    t = read(dataset, "train")
    users = t["user_id"].to_numpy()
    rows = np.flatnonzero(users == np.bincount(users).argmax())
    hist = t["hist_items"].to_pylist()
    sets = [set(hist[r]) for r in rows]

    def overlap(a, b):
        return len(a & b) / max(1, min(len(a), len(b)))

    near = np.mean([overlap(a, b) for a, b in zip(sets, sets[1:])])
    far = np.mean([overlap(a, b) for a, b in zip(sets, sets[len(sets) // 2 :])])
    assert near > far + 0.2, (near, far)


def test_timestamps_increase_and_splits_are_ordered(dataset):
    ts = {s: read(dataset, s)["ts"].to_numpy() for s in SPLITS}
    for s in SPLITS:
        assert np.all(np.diff(ts[s]) >= 0), s
    assert ts["train"].max() < ts["valid"].min()
    assert ts["valid"].max() < ts["test"].min()
    t = read(dataset, "train")
    assert np.array_equal(t["hour"].to_numpy(), (ts["train"] // 3600) % 24)
    assert set(np.unique(t["weekday"].to_numpy())) == set(range(7))


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(items=500, users=300, progress=False)
    synthetic.generate_dataset(tmp_path / "a", 5_000, seed=1, **kw)
    synthetic.generate_dataset(tmp_path / "b", 5_000, seed=1, **kw)
    synthetic.generate_dataset(tmp_path / "c", 5_000, seed=2, **kw)
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_shard_size_does_not_change_the_data(tmp_path):
    kw = dict(items=500, users=300, seed=3, progress=False)
    synthetic.generate_dataset(tmp_path / "a", 9_000, rows_per_shard=1_000, **kw)
    synthetic.generate_dataset(tmp_path / "b", 9_000, **kw)
    assert len(list((tmp_path / "a" / "train").glob("*.parquet"))) == 8
    for s in SPLITS:
        assert read(tmp_path / "a", s).equals(read(tmp_path / "b", s))


def test_dense_flag_adds_noise_columns(tmp_path):
    spec = synthetic.generate_dataset(tmp_path / "d", 2_000, dense=10, items=500, users=100, progress=False)
    assert spec.dense[-2:] == ["noise_0", "noise_1"] and len(spec.dense) == 10
    t = read(tmp_path / "d", "train")
    assert abs(float(np.std(t["noise_1"].to_numpy())) - 1.0) < 0.1


def test_power_law_sampler_matches_its_pmf():
    rng = np.random.default_rng(0)
    n, a = 50, 1.05
    ranks = synthetic._power_rank(rng.random(400_000), n, a, synthetic._power_scale(n, a))
    freq = np.bincount(ranks, minlength=n) / len(ranks)
    pmf = synthetic._power_pmf(np.arange(n), n, a)
    assert abs(pmf.sum() - 1) < 1e-9
    assert np.abs(freq - pmf).max() < 0.004


def _cli(argv: list[str]):
    return synthetic.run(parse(synthetic.GenerateConfig, argv, prog="python -m data_pipeline generate"))


def test_cli_generates_a_loadable_dataset(tmp_path):
    out = tmp_path / "cli"
    _cli(["--out", str(out), "--rows", "3000", "--items", "400", "--users", "50", "--no-progress"])
    spec = DatasetSpec.load(out)
    assert sum(spec.num_rows.values()) == 3000


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--rows", "0"], "--rows"),
        (["--rows", "100", "--valid-frac", "1.5"], "--valid-frac"),
        (["--rows", "100", "--history-len", "0"], "--history-len"),
        (["--rows", "100", "--items", "10"], "--items"),
        (["--rows", "100", "--ctr", "0"], "--ctr"),
        (["--rows", "3"], "--rows"),  # a split would be empty
        (["--rows", "100", "--seed", "-1"], "--seed"),
        (["--rows", "100", "--high-card-columns", "-1"], "--high-card-columns"),
        (["--rows", "100", "--high-card-columns", "1", "--high-card-size", "1"], "--high-card-size"),
    ],
)
def test_bad_flags_are_named(tmp_path, flags, named):
    with pytest.raises(DataError, match=named):
        _cli(["--out", str(tmp_path / "x"), *flags, "--no-progress"])
    assert not (tmp_path / "x").exists()


def test_non_empty_out_needs_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(DataError, match="--overwrite"):
        synthetic.generate_dataset(out, 1_000, items=200, users=50, progress=False)
    assert (out / "precious.txt").read_text() == "keep"
    synthetic.generate_dataset(out, 1_000, items=200, users=50, progress=False, overwrite=True)
    # --overwrite replaces a dataset, not the user's files
    assert (out / "precious.txt").read_text() == "keep"
    assert DatasetSpec.load(out).num_rows["train"] == 800
    with pytest.raises(DataError, match="earlier dataset .* pass --overwrite"):
        synthetic.generate_dataset(out, 1_000, items=200, users=50, progress=False)
    synthetic.generate_dataset(out, 500, items=200, users=50, progress=False, overwrite=True)
    assert DatasetSpec.load(out).num_rows["train"] == 400
    left = sorted(p.name for p in out.iterdir())
    mine = [".store-output.json", "generator.json", "items", "precious.txt", "spec.json"]
    assert left == mine + sorted(SPLITS)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temp folders left behind


def test_failed_run_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_to_table", boom)
    with pytest.raises(RuntimeError):
        synthetic.generate_dataset(tmp_path / "ds", 1_000, items=200, users=50, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_memory_is_bounded_in_rows(tmp_path):
    kw = dict(items=500, users=200, chunk_rows=4_096, progress=False)

    def peak(rows: int) -> int:
        tracemalloc.start()
        synthetic.generate_dataset(tmp_path / f"m{rows}", rows, **kw)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(20_000), peak(80_000)
    assert large < 1.3 * small, (small, large)


# -- roles and the extra high-cardinality columns ------------------------------------------------------
def content_digest(root: Path) -> str:
    """sha256 of every split's and the item table's values: integers exactly, floats to 4 decimals (so
    a last-bit difference of a platform's exp or BLAS does not count), independent of parquet bytes."""
    h = hashlib.sha256()
    for part in (*SPLITS, ITEMS_DIR):
        t = pq.read_table(root / part)
        for name in t.column_names:
            col = t[name].combine_chunks()
            h.update(name.encode())
            if col.type.num_fields:  # a list column: its offsets, then its values
                h.update(np.asarray(col.offsets).astype(np.int64).tobytes())
                col = col.flatten()
            v = col.to_numpy()
            if v.dtype.kind == "f":
                v = np.round(v.astype(np.float64) * 1e4).astype(np.int64)
            h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


# The default data as it was before the extra columns existed (recorded with the earlier generator).
DEFAULT_DIGEST = "bf5e3161ca8316b16b41394df3cd366248d8844601cf95c01ea0355090bd99cf"


def test_default_data_is_unchanged_and_user_id_is_high_cardinality(tmp_path):
    kw = dict(items=500, users=300, seed=3, chunk_rows=1000, dense=10, progress=False)
    spec = synthetic.generate_dataset(tmp_path / "d", 3000, **kw)
    assert content_digest(tmp_path / "d") == DEFAULT_DIGEST
    assert spec.high_cardinality == ["item_id", "user_id"]
    assert [f.name for f in spec.sparse if f.high_cardinality] == ["user_id"]
    assert not [c for c in spec.sparse_names if c.startswith("hc_id")]


def test_high_card_columns_carry_click_signal(tmp_path):
    kw = dict(rows_per_shard=20_000, progress=False, **SMALL)
    v = 5_000
    spec = synthetic.generate_dataset(tmp_path / "hc", 40_000, high_card_columns=2, high_card_size=v, **kw)
    synthetic.generate_dataset(tmp_path / "plain", 40_000, **kw)
    names = ["hc_id_0", "hc_id_1"]
    assert spec.high_cardinality == ["item_id", "user_id", *names]
    for c in names:
        f = spec.feature(c)
        assert f.high_cardinality and not f.item_ref and not f.multi and f.vocab_size == v
    assert not set(names) & {c for cols in spec.feature_groups.values() for c in cols}
    assert DatasetSpec.load(tmp_path / "hc").high_cardinality == spec.high_cardinality

    t, plain = read(tmp_path / "hc", "train"), read(tmp_path / "plain", "train")
    for c in names:
        ids = t[c].to_numpy()
        assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < v
        by_id = np.bincount(ids, minlength=v)
        head = np.argsort(-by_id, kind="stable")[: v // 100]
        assert by_id[head].sum() > 0.2 * by_id.sum()  # Zipf-like popularity
        assert abs(head.mean() - v / 2) < 0.2 * v  # the popular IDs are spread over the range
    # Their own random stream: every other column is the one of the same data without them.
    for c in plain.column_names:
        if c not in ("click", "click_prob"):
            assert t[c].equals(plain[c]), c

    # The signal is in the true probability, exactly: logit(p) - logit(p without) = the columns' effects
    # (plus the change of the calibrated intercept).
    cfg = synthetic.SyntheticConfig(rows=40_000, high_card_columns=2, high_card_size=v, **SMALL)
    model = synthetic.HiddenModel(cfg)
    intercept = {
        d: json.loads((tmp_path / d / synthetic.GENERATOR_FILE).read_text())["intercept"]
        for d in ("hc", "plain")
    }
    assert model.intercept == pytest.approx(intercept["hc"])
    l1 = t["item_topic_l1"].to_numpy()
    effect = sum(model.high_card_effect(j, t[c].to_numpy(), l1) for j, c in enumerate(names))
    assert np.std(effect) > 0.3

    def logit(p):
        p = p.astype(np.float64)
        return np.log(p / (1 - p))

    diff = logit(t["click_prob"].to_numpy()) - logit(plain["click_prob"].to_numpy())
    ok = np.abs(plain["click_prob"].to_numpy() - 0.5) < 0.45  # float32 probabilities: skip the extremes
    assert np.allclose(diff[ok], (effect + intercept["hc"] - intercept["plain"])[ok], atol=1e-3)
    # ... and in the clicks: rows whose hc_id_0 has a high effect click more.
    y, e0 = t["click"].to_numpy(), model.high_card_effect(0, t["hc_id_0"].to_numpy(), l1)
    high = e0 > np.median(e0)
    assert y[high].mean() > 1.3 * y[~high].mean()
    # and the mean click probability is still calibrated to --ctr
    assert abs(t["click_prob"].to_numpy().mean() - 0.1) < 0.01


def test_high_card_cli_flags(tmp_path):
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--rows", "3000", "--items", "400", "--users", "50", "--no-progress"]
    _cli([*argv, "--high-card-columns", "3", "--high-card-size", "777"])
    spec = DatasetSpec.load(out)
    assert spec.high_cardinality == ["item_id", "user_id", "hc_id_0", "hc_id_1", "hc_id_2"]
    assert {spec.feature(f"hc_id_{j}").vocab_size for j in range(3)} == {777}
    t = read(out, "train")
    assert all(
        0 <= t[f"hc_id_{j}"].to_numpy().min() and t[f"hc_id_{j}"].to_numpy().max() < 777 for j in range(3)
    )
    config = json.loads((out / synthetic.GENERATOR_FILE).read_text())["config"]
    assert config["high_card_columns"] == 3 and config["high_card_size"] == 777
