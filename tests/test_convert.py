"""Converters: the real files in shared/data, tiny original-layout files, and bad input."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from data_pipeline.__main__ import main
from data_pipeline.convert import convert
from data_pipeline.converters.common import ConvertConfig, hashed_ids
from data_pipeline.spec import SPLITS, DataError, DatasetSpec

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not available")
    return path


def cfg(src: Path, out: Path, **kw) -> ConvertConfig:
    return ConvertConfig(src=Path(src), out=Path(out), **kw)


def split(out: Path, s: str) -> pa.Table:
    return pq.read_table(out / s)


def all_rows(out: Path) -> pa.Table:
    return pa.concat_tables([split(out, s) for s in SPLITS])


def check_common(out: Path, spec: DatasetSpec) -> None:
    """Spec loads and validates, splits are monotone in time, item IDs are covered by the item table."""
    loaded = DatasetSpec.load(out)
    assert loaded.num_rows == {s: split(out, s).num_rows for s in SPLITS}
    ts = [split(out, s)[spec.timestamp].to_numpy() for s in SPLITS]
    for a, b in zip(ts, ts[1:]):
        if len(a) and len(b):
            assert a.max() <= b.min()
    items = pq.read_table(out / "items")
    n = loaded.item_table.num_items
    assert np.array_equal(np.sort(items["item_id"].to_numpy()), np.arange(n))
    rows = all_rows(out)
    assert 0 <= rows["item_id"].to_numpy().min() and rows["item_id"].to_numpy().max() < n
    for f in loaded.sparse:
        col = rows[f.name]
        vals = pa.compute.list_flatten(col).to_numpy() if f.multi else col.to_numpy()
        if len(vals):
            assert vals.min() >= 0 and vals.max() < f.vocab_size, f.name


# -- MovieLens ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    src = real("ml-100k")
    out = tmp_path_factory.mktemp("ml") / "ds"
    spec = convert("movielens", cfg(src, out))
    return src, out, spec


def test_movielens_100k_counts_labels_split(ml100k):
    src, out, spec = ml100k
    source = pacsv.read_csv(src / "ml-100k.inter", parse_options=pacsv.ParseOptions(delimiter="\t"))
    ratings = source.column(2).to_numpy()
    assert spec.num_rows == {"train": 80_000, "valid": 10_000, "test": 10_000}
    rows = all_rows(out)
    assert rows.num_rows == source.num_rows == 100_000
    assert int(rows["click"].to_numpy().sum()) == int((ratings >= 4).sum()) == 55_375
    check_common(out, spec)
    ts = np.concatenate([split(out, s)["timestamp"].to_numpy() for s in SPLITS])
    assert (np.diff(ts) >= 0).all()  # written in global time order
    assert spec.item_table.num_items == 1682
    assert spec.feature_groups["user"] == ["gender", "age", "occupation", "zip3"]


def test_movielens_100k_history_has_no_leakage(ml100k):
    src, out, spec = ml100k
    source = pacsv.read_csv(src / "ml-100k.inter", parse_options=pacsv.ParseOptions(delimiter="\t"))
    users, movies = source.column(0).to_numpy(), source.column(1).to_numpy()
    times = source.column(3).to_numpy().astype(np.int64)
    items = pq.read_table(out / "items")
    dense_of = dict(zip(items["movie_id"].to_pylist(), items["item_id"].to_pylist()))
    rated_at = {(u, dense_of[m]): t for u, m, t in zip(users.tolist(), movies.tolist(), times.tolist())}
    order = np.argsort(times, kind="stable")
    by_user: dict[int, list[tuple[int, int]]] = {}
    for i in order.tolist():
        by_user.setdefault(int(users[i]), []).append((int(times[i]), dense_of[int(movies[i])]))

    rows = all_rows(out)
    u, t = rows["user_id"].to_numpy(), rows["timestamp"].to_numpy()
    hist = rows["hist_items"].to_pylist()
    counts = np.expm1(rows["log_user_count"].to_numpy().astype(np.float64)).round().astype(int)
    for r in range(rows.num_rows):  # every history item was rated by this user strictly earlier
        assert all(rated_at[(int(u[r]), h)] < t[r] for h in hist[r])
        assert len(hist[r]) == min(20, counts[r])
    rng = np.random.default_rng(0)
    for r in rng.choice(rows.num_rows, 300, replace=False).tolist():  # exactly the last 20 earlier ones
        earlier = [item for ts, item in by_user[int(u[r])] if ts < t[r]]
        assert hist[r] == earlier[-20:]
        assert counts[r] == len(earlier)


def test_movielens_100k_item_table_and_user_features(ml100k):
    _, out, spec = ml100k
    items = pq.read_table(out / "items").to_pylist()
    toy = items[0]
    assert (toy["movie_id"], toy["title"]) == (1, "Toy Story")
    assert toy["genres"] == "Animation, Children's, Comedy" and len(toy["genre_ids"]) == 3
    assert set(spec.item_table.text_columns) == {"title", "genres"}
    assert set(spec.item_table.category_columns) <= set(items[0])
    rows = all_rows(out).to_pylist()
    r = next(r for r in rows if r["user_id"] == 1)  # user 1: 24, M, technician
    assert r["gender"] == 1 and r["age"] == 2
    r = next(r for r in rows if r["item_id"] == 0)
    assert r["genres"] == toy["genre_ids"] and r["year_bucket"] == toy["year_bucket"] == 20  # 1995
    # roles: the user ID is high-cardinality, item and history are item-valued, the rest is static
    assert spec.high_cardinality == ["item_id", "user_id"]
    roles = [f.name for f in spec.sparse if f.high_cardinality or f.item_ref]
    assert roles == ["user_id", "item_id", "hist_items"]
    assert {"gender", "age", "occupation", "zip3"} <= set(spec.feature_groups["user"])


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


# (user, movie, rating, unix seconds); user 1 rates movies 10 and 20 in the same second.
TINY_RATINGS = [(1, 10, 5, 100), (1, 20, 3, 100), (2, 10, 4, 150), (1, 30, 4, 200), (2, 30, 1, 300)]
TINY_RATINGS += [(3, 30, 5, 500), (1, 40, 4, 600), (2, 40, 2, 700), (3, 10, 3, 800)]


def check_tiny(out: Path, spec: DatasetSpec) -> None:
    rows = sorted(all_rows(out).to_pylist(), key=lambda r: (r["timestamp"], r["user_id"], r["item_id"]))
    assert len(rows) == len(TINY_RATINGS)
    assert [r["click"] for r in rows] == [float(x[2] >= 4) for x in sorted(TINY_RATINGS, key=lambda x: x[3])]
    dense = {10: 0, 20: 1, 30: 2, 40: 3}
    last = {r["user_id"]: r for r in rows}
    assert last[1]["hist_items"] == [dense[10], dense[20], dense[30]]  # movies 10 and 20 share a second
    same_second = [r for r in rows if r["user_id"] == 1 and r["timestamp"] == 100]
    assert [r["hist_items"] for r in same_second] == [[], []]
    assert spec.high_cardinality == ["item_id", "user_id"] and spec.feature("user_id").high_cardinality
    check_common(out, spec)


def test_movielens_grouplens_100k_layout(tmp_path):
    src = tmp_path / "src"
    write(src / "u.data", "".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in TINY_RATINGS))
    flags = lambda *on: "|".join("1" if i in on else "0" for i in range(19))  # noqa: E731
    write(
        src / "u.item",
        f"10|Toy Story (1995)|01-Jan-1995||http://x|{flags(3, 4, 5)}\n"
        f"20|GoldenEye (1995)|01-Jan-1995||http://x|{flags(1)}\n"
        f"30|Café (1971)|||http://x|{flags(8)}\n"
        f"40|unknown||||{flags(0)}\n",
        "latin-1",
    )
    write(src / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|E2A4H\n")
    spec = convert("movielens", cfg(src, tmp_path / "out", valid_frac=0.2, test_frac=0.2))
    check_tiny(tmp_path / "out", spec)
    items = pq.read_table(tmp_path / "out" / "items").to_pylist()
    assert items[2]["title"] == "Café (1971)" and items[2]["genres"] == "Drama"
    assert items[0]["genres"] == "Animation, Children's, Comedy"
    assert items[3]["year_bucket"] == 0  # no release date, no year in the title
    assert spec.num_rows == {"train": 5, "valid": 2, "test": 2}


def test_movielens_dat_layouts(tmp_path):
    src = tmp_path / "src"
    write(src / "ratings.dat", "".join(f"{u}::{m}::{r}.0::{t}\n" for u, m, r, t in TINY_RATINGS))
    write(
        src / "movies.dat",
        "10::Toy Story (1995)::Animation|Children's|Comedy\n20::Star Wars: Episode IV (1977)::Sci-Fi\n"
        "30::Amélie (2001)::Comedy|Romance\n40::Untitled::(no genres listed)\n",
        "latin-1",
    )
    write(src / "users.dat", "1::M::25::10::48067\n2::F::56::16::70072\n3::M::1::0::55117\n")
    spec = convert("movielens", cfg(src, tmp_path / "out", valid_frac=0.2, test_frac=0.2))
    check_tiny(tmp_path / "out", spec)
    items = pq.read_table(tmp_path / "out" / "items").to_pylist()
    assert items[1]["title"] == "Star Wars: Episode IV (1977)" and items[1]["year_bucket"] == 16
    assert items[2]["title"] == "Amélie (2001)" and items[3]["genre_ids"] == []
    ages = {r["user_id"]: r["age"] for r in all_rows(tmp_path / "out").to_pylist()}
    assert ages == {1: 3, 2: 7, 3: 1}  # the ML-1M codes 25, 56, 1 -> brackets 25-34, 56+, <18

    (src / "users.dat").unlink()  # the ML-10M layout has no users.dat
    spec = convert("movielens", cfg(src, tmp_path / "out10", valid_frac=0.2, test_frac=0.2))
    check_tiny(tmp_path / "out10", spec)
    assert "gender" not in spec.sparse_names and "user" not in spec.feature_groups


def test_movielens_csv_layout(tmp_path):
    src = tmp_path / "src"
    write(src / "ratings.csv", "userId,movieId,rating,timestamp\n")
    with open(src / "ratings.csv", "a") as f:
        f.write(
            "".join(
                f"{u},{m},{r}.5,{t}\n" if r == 3 else f"{u},{m},{r}.0,{t}\n" for u, m, r, t in TINY_RATINGS
            )
        )
    write(
        src / "movies.csv",
        'movieId,title,genres\n10,"American President, The (1995)",Comedy|Drama|Romance\n'
        "20,Heat (1995),Action\n30,Sabrina (1995),Comedy\n40,Nothing (2019),(no genres listed)\n",
    )
    spec = convert("movielens", cfg(src, tmp_path / "out", valid_frac=0.2, test_frac=0.2))
    check_tiny(tmp_path / "out", spec)  # 3.5 stars is not a click
    items = pq.read_table(tmp_path / "out" / "items").to_pylist()
    assert items[0]["title"] == "American President, The (1995)" and items[3]["genres"] == ""


# -- Criteo ------------------------------------------------------------------------------------------
def test_criteo_sample(tmp_path):
    src = real("criteo-sample")
    spec = convert("criteo", cfg(src, tmp_path / "out", num_items=1000))
    source = pacsv.read_csv(src / "criteo_sample.csv")
    assert spec.num_rows == {"train": 160, "valid": 20, "test": 20}
    check_common(tmp_path / "out", spec)
    rows = all_rows(tmp_path / "out")
    assert np.array_equal(rows["timestamp"].to_numpy(), np.arange(200))  # row order = time
    assert np.array_equal(rows["label"].to_numpy(), source["label"].to_numpy().astype(np.float32))
    i3 = source["I3"].to_numpy(zero_copy_only=False)
    expect = np.log1p(np.maximum(np.nan_to_num(i3, nan=0.0), 0)).astype(np.float32)
    assert np.allclose(rows["I3"].to_numpy(), expect)
    assert (rows["I2"].to_numpy() >= 0).all()  # I2 has negatives in the source
    missing = np.asarray([v in (None, "") for v in source["C19"].to_pylist()])
    assert 0 < missing.sum() < 200 and np.array_equal(rows["C19"].to_numpy() == 0, missing)
    same = np.asarray(source["C9"].to_pylist()) == "a73ee510"
    assert len(set(rows["C9"].to_numpy()[same].tolist())) == 1  # stable hash: same value, same ID
    assert "C3" not in spec.sparse_names and spec.item_table.num_items == 1000
    assert rows["user_id"].to_numpy().max() == 0
    assert spec.feature_groups == {"low_cardinality": ["C6", "C9", "C14", "C17", "C20", "C22", "C23"]}
    # roles: the columns big on the full data (their Kaggle counts), though the sample's are small
    big = ["C4", "C7", "C10", "C12", "C15", "C16", "C21", "C24", "C26"]
    assert spec.high_cardinality == ["item_id", *big]
    assert [f.name for f in spec.sparse if f.high_cardinality] == big
    assert len(set(rows["C4"].to_numpy().tolist())) < 200  # small on the sample all the same


def test_criteo_tsv_without_header_matches_csv(tmp_path):
    src = real("criteo-sample")
    lines = (src / "criteo_sample.csv").read_text().splitlines()[1:31]
    write(tmp_path / "tsv" / "train.txt", "".join(line.replace(",", "\t") + "\n" for line in lines))
    write(
        tmp_path / "csv" / "sample.csv", "\n".join((src / "criteo_sample.csv").read_text().splitlines()[:31])
    )
    a = convert("criteo", cfg(tmp_path / "tsv", tmp_path / "a", num_items=64, vocab_size=512))
    b = convert("criteo", cfg(tmp_path / "csv", tmp_path / "b", num_items=64, vocab_size=512))
    assert a.num_rows == b.num_rows == {"train": 24, "valid": 3, "test": 3}
    assert all_rows(tmp_path / "a").equals(all_rows(tmp_path / "b"))
    (tmp_path / "gz").mkdir()  # the 1TB logs: day_N files, gzip, read in day order
    with gzip.open(tmp_path / "gz" / "day_1.gz", "wt") as f:
        f.write("".join(line.replace(",", "\t") + "\n" for line in lines[15:]))
    with gzip.open(tmp_path / "gz" / "day_0.gz", "wt") as f:
        f.write("".join(line.replace(",", "\t") + "\n" for line in lines[:15]))
    c = convert("criteo", cfg(tmp_path / "gz", tmp_path / "c", num_items=64, vocab_size=512))
    assert c.num_rows == a.num_rows and all_rows(tmp_path / "c").equals(all_rows(tmp_path / "a"))


def test_criteo_vocab_sizes_and_stable_hash(tmp_path):
    spec = convert(
        "criteo",
        cfg(real("criteo-sample"), tmp_path / "o", vocab_size=1000, vocab_sizes={"C1": 7}, item_column="C12"),
    )
    assert spec.feature("C1").vocab_size == 7 and spec.feature("C4").vocab_size == 1000
    assert spec.feature("C9").vocab_size == 64 and "C12" not in spec.sparse_names
    assert spec.high_cardinality == ["item_id"]  # tables of <= 1000 rows: no column is high-cardinality
    big = convert(
        "criteo", cfg(real("criteo-sample"), tmp_path / "b", vocab_sizes={"C1": 50_000, "C7": 9_999})
    )
    assert not big.feature("C1").high_cardinality  # a big table alone does not count: C1 has ~1.5K values
    assert not big.feature("C7").high_cardinality and big.feature("C10").high_cardinality
    ids = hashed_ids(pa.array(["05db9164", None, "", "05db9164"]), 1000)
    assert ids[0] == ids[3] and ids[1] == ids[2] == 0 and 1 <= ids[0] < 1000
    # pinned: the hash must not change between runs, machines or releases (IDs are stored on disk)
    assert hashed_ids(pa.array(["05db9164", "a73ee510"]), 1000).tolist() == [641, 508]


# -- Avazu -------------------------------------------------------------------------------------------
AVAZU_HEADER = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,"
    "device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
)


def avazu_row(i: int, click: int, hour: int, device_id: str = "a99f214a", ip: str = "ddd2926e") -> str:
    return (
        f"{10000174058809263569 + i},{click},{hour},1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,"
        f"07d7df22,{device_id},{ip},44956a24,1,2,{15706 + i % 3},320,50,1722,0,35,-1,79"
    )


def test_avazu_original_layout(tmp_path):
    hours = [14102100] * 5 + [14102101] * 3 + [14102213, 14102223]  # 10 rows in 4 hours
    rows = [avazu_row(i, i % 2, h) for i, h in enumerate(hours)]
    rows[5] = avazu_row(5, 1, hours[5], device_id="abcd1234")
    write(tmp_path / "src" / "train.csv", AVAZU_HEADER + "\n" + "\n".join(rows) + "\n")
    spec = convert("avazu", cfg(tmp_path / "src", tmp_path / "out", valid_frac=0.2, test_frac=0.1))
    out = tmp_path / "out"
    assert spec.num_rows == {"train": 8, "valid": 1, "test": 1}  # whole hours per split
    check_common(out, spec)
    t = all_rows(out).to_pylist()
    assert [r["click"] for r in t] == [float(i % 2) for i in range(10)]
    first = t[0]
    assert first["hour"] == 0 and first["weekday"] == 1  # 2014-10-21 was a Tuesday
    assert first["timestamp"] == int(dt.datetime(2014, 10, 21, tzinfo=dt.UTC).timestamp())
    assert first["hour_sin"] == 0.0 and first["hour_cos"] == 1.0
    assert [(r["hour"], r["weekday"]) for r in split(out, "test").to_pylist()] == [(23, 2)]
    users = [r["user_id"] for r in t]
    assert len(set(users[:5] + users[6:])) == 1 and users[5] != users[0]  # placeholder device: ip+model
    assert len({r["item_id"] for r in t}) == 3 and "C14" not in spec.sparse_names
    assert all(r["C15"] == t[0]["C15"] for r in t) and t[0]["C15"] > 0
    ids = ["site_id", "site_domain", "app_id", "app_domain", "device_id", "device_ip", "device_model"]
    assert spec.high_cardinality == ["item_id", *ids]
    assert [f.name for f in spec.sparse if f.high_cardinality] == ids
    assert spec.feature_groups["user"] == ["device_type", "device_conn_type"]  # device_model left out
    grouped = {c for cols in spec.feature_groups.values() for c in cols}
    assert grouped <= set(spec.sparse_names) and not grouped & set(ids)
    small = convert("avazu", cfg(tmp_path / "src", tmp_path / "small", vocab_size=512, item_column="site_id"))
    assert small.high_cardinality == ["item_id", *ids[1:]]  # ID columns whatever the table size


def test_avazu_test_file_without_click_is_refused(tmp_path):
    header = AVAZU_HEADER.replace("click,", "")
    fields = avazu_row(0, 0, 14102100).split(",")
    write(tmp_path / "src" / "train", header + "\n" + ",".join(fields[:1] + fields[2:]) + "\n")
    with pytest.raises(DataError, match=r"train: missing column\(s\) \['click'\]"):
        convert("avazu", cfg(tmp_path / "src", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# -- Open Bandit -------------------------------------------------------------------------------------
def test_open_bandit_real(tmp_path):
    src = real("open-bandit")
    spec = convert("open-bandit", cfg(src, tmp_path / "out"))
    source = pacsv.read_csv(src / "all.csv")
    out = tmp_path / "out"
    assert sum(spec.num_rows.values()) == source.num_rows == 10_000
    assert min(spec.num_rows.values()) > 500
    check_common(out, spec)
    rows = all_rows(out)
    assert rows["click"].to_numpy().mean() == pytest.approx(source["click"].to_numpy().mean())
    assert spec.item_table.num_items == 80 and spec.dense == ["item_feature_0", "affinity"]
    assert spec.feature_groups["user"] == [f"user_feature_{i}" for i in range(4)]
    assert spec.high_cardinality == ["item_id"] and not any(f.high_cardinality for f in spec.sparse)
    # the log is in time order, so the splits in order are the file's rows in order
    assert np.array_equal(rows["item_id"].to_numpy(), source["item_id"].to_numpy())
    assert np.array_equal(rows["position"].to_numpy(), source["position"].to_numpy())
    affinity = np.stack([source[f"user-item_affinity_{i}"].to_numpy() for i in range(80)], axis=1)
    expect = affinity[np.arange(source.num_rows), source["item_id"].to_numpy()]
    assert np.allclose(rows["affinity"].to_numpy(), expect)
    seconds = source["timestamp"].cast(pa.int64()).to_numpy() // 10**9
    assert np.array_equal(rows["timestamp"].to_numpy(), seconds)


def test_open_bandit_large_user_feature_is_high_cardinality(tmp_path):
    write(
        tmp_path / "src" / "item_context.csv",
        ",item_id,item_feature_0,item_feature_1\n0,0,0.5,a\n1,1,-0.5,b\n",
    )
    n = 10_000  # user_feature_0 takes n distinct values: the size rule's threshold
    lines = [
        ",timestamp,item_id,position,click,propensity_score,"
        + ",".join(f"user_feature_{i}" for i in range(4))
    ]
    for i in range(n):  # 60 rows a second, in time order
        ts = f"2019-11-24 00:{i // 3600:02d}:{i // 60 % 60:02d}.000000+00:00"
        lines.append(f"{i},{ts},{i % 2},1,{int(i % 3 == 0)},0.5,u{i},x,y,z")
    write(tmp_path / "src" / "all.csv", "\n".join(lines) + "\n")
    spec = convert("open-bandit", cfg(tmp_path / "src", tmp_path / "out"))
    assert spec.feature("user_feature_0").vocab_size == n + 1
    assert spec.high_cardinality == ["item_id", "user_feature_0"]
    assert spec.feature_groups["user"] == ["user_feature_1", "user_feature_2", "user_feature_3"]


# -- bad input ---------------------------------------------------------------------------------------
def test_missing_src_folder_and_files(tmp_path):
    with pytest.raises(DataError, match="--src .*does not exist"):
        convert("movielens", cfg(tmp_path / "nope", tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    for name, what in [
        ("movielens", "ratings"),
        ("criteo", "Criteo"),
        ("avazu", "Avazu"),
        ("open-bandit", "item"),
    ]:
        with pytest.raises(DataError, match=what):
            convert(name, cfg(tmp_path / "empty", tmp_path / "out"))
    write(tmp_path / "ml" / "u.data", "1\t10\t5\t100\n")
    with pytest.raises(DataError, match=r"missing u\.item"):
        convert("movielens", cfg(tmp_path / "ml", tmp_path / "out"))
    with pytest.raises(DataError, match="--valid-frac"):
        convert("movielens", cfg(tmp_path / "ml", tmp_path / "out", valid_frac=1.5))


def test_bad_columns_and_values_name_file_and_column(tmp_path):
    write(tmp_path / "a" / "u.data", "1\t10\t5\t100\n2\t10\t4\n")
    write(tmp_path / "a" / "u.item", "10|X (1990)|||x|" + "|".join(["0"] * 19) + "\n")
    with pytest.raises(DataError, match=r"u\.data: .*Expected 4 columns, got 3"):
        convert("movielens", cfg(tmp_path / "a", tmp_path / "out"))
    write(tmp_path / "a" / "u.data", "1\t10\t5\t100\n2\t10\tfive\t200\n")
    with pytest.raises(DataError, match=r"u\.data: column 'rating'"):
        convert("movielens", cfg(tmp_path / "a", tmp_path / "out"))
    write(tmp_path / "a" / "u.data", "1\t11\t5\t100\n")
    with pytest.raises(DataError, match=r"movie ID\(s\) \[11\] are not in .*u\.item"):
        convert("movielens", cfg(tmp_path / "a", tmp_path / "out"))
    write(tmp_path / "b" / "x.csv", "label,I1\n0,1\n")
    with pytest.raises(DataError, match=r"x\.csv: missing column\(s\) \['I2', "):
        convert("criteo", cfg(tmp_path / "b", tmp_path / "out"))
    src = real("open-bandit")
    write(tmp_path / "c" / "item_context.csv", (src / "item_context.csv").read_text())
    write(tmp_path / "c" / "all.csv", (src / "all.csv").read_text().replace(",user_feature_2,", ",uf2,", 1))
    with pytest.raises(DataError, match=r"all\.csv: missing column\(s\) \['user_feature_2'\]"):
        convert("open-bandit", cfg(tmp_path / "c", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bad_value_mid_stream_keeps_shards_and_writes_no_spec(tmp_path):
    text = (real("criteo-sample") / "criteo_sample.csv").read_text().splitlines()
    bad = text[181].split(",")
    bad[3] = "abc"  # I3 of source row 181
    write(tmp_path / "src" / "s.csv", "\n".join(text[:181] + [",".join(bad)] + text[182:]) + "\n")
    c = cfg(tmp_path / "src", tmp_path / "out", rows_per_shard=50, block_size=4096, num_items=64)
    with pytest.raises(DataError, match=r"s\.csv: column 'I3': .*invalid value 'abc'"):
        convert("criteo", c)
    out = tmp_path / "out"
    assert not (out / "spec.json").exists()
    shards = sorted((out / "train").glob("part-*.parquet"))
    assert len(shards) >= 2 and all(pq.read_metadata(p).num_rows == 50 for p in shards)
    assert not list((out / "train").glob(".*tmp*"))  # the shard in progress was dropped


def test_out_folder_rules(tmp_path):
    src = real("criteo-sample")
    out = tmp_path / "out"
    convert("criteo", cfg(src, out, num_items=64))
    with pytest.raises(DataError, match="--overwrite"):
        convert("criteo", cfg(src, out, num_items=64))
    write(tmp_path / "bad" / "x.csv", "label,I1\n0,1\n")
    with pytest.raises(DataError, match="missing column"):  # checked before --out is touched
        convert("criteo", cfg(tmp_path / "bad", out, overwrite=True))
    assert DatasetSpec.load(out).item_table.num_items == 64
    spec = convert("criteo", cfg(src, out, num_items=32, rows_per_shard=100, overwrite=True))
    assert spec.item_table.num_items == 32 and len(list((out / "train").glob("*.parquet"))) == 2
    assert DatasetSpec.load(out).item_table.num_items == 32


def test_cli(tmp_path, capsys):
    src = real("criteo-sample")
    out = tmp_path / "out"
    argv = ["convert", "criteo", "--src", str(src), "--out", str(out), "--num-items", "50"]
    assert main([*argv, "--vocab-sizes", "C1=9,C2=10"]) == 0
    spec = DatasetSpec.load(out)
    assert spec.feature("C1").vocab_size == 9 and spec.item_table.num_items == 50
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # a malformed flag: tyro names it and exits with 2
        main([*argv, "--overwrite", "--vocab-sizes", "C1"])
    assert exit_.value.code == 2 and "--vocab-sizes" in capsys.readouterr().err
    assert main(["convert", "avazu", "--src", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


# -- issue 29: sources without data rows, MovieLens without its user file --------------------------------
def criteo_row(i: int) -> str:
    return ",".join([str(i % 2), *(str(i + k) for k in range(13)), *(f"{i:x}{k}" for k in range(26))])


def test_header_only_source_is_exit_2_naming_the_file_and_keeps_the_dataset(tmp_path, capsys):
    """A header-only Criteo file made a dataset of 0 rows with exit 0; now --src and the file are named,
    and an existing dataset in --out is not replaced (with --overwrite too)."""
    from data_pipeline.converters.criteo import COLUMNS

    out = tmp_path / "out"
    write(
        tmp_path / "good" / "a.csv",
        ",".join(COLUMNS) + "\n" + "\n".join(criteo_row(i) for i in range(20)) + "\n",
    )
    convert("criteo", cfg(tmp_path / "good", out, num_items=16, vocab_size=64))
    header_only = write(tmp_path / "src" / "a.csv", ",".join(COLUMNS) + "\n")
    argv = ["convert", "criteo", "--src", str(tmp_path / "src"), "--out", str(out), "--overwrite"]
    assert main(argv) == 2
    assert f"no data rows in {header_only}" in capsys.readouterr().err
    assert DatasetSpec.load(out).num_rows == {"train": 16, "valid": 2, "test": 2}  # the old one, intact
    write(tmp_path / "blank" / "a.csv", ",".join(COLUMNS) + "\n\n\n")  # lines counted, none of them rows
    with pytest.raises(DataError, match=r"--src .*blank: no data rows in .*a\.csv"):
        convert("criteo", cfg(tmp_path / "blank", tmp_path / "out2"))
    assert not (tmp_path / "out2" / "spec.json").exists()


def test_header_only_avazu_and_open_bandit_are_refused_before_out_is_touched(tmp_path):
    write(tmp_path / "avazu" / "train.csv", AVAZU_HEADER + "\n")
    with pytest.raises(DataError, match=r"no data rows in .*train\.csv"):
        convert("avazu", cfg(tmp_path / "avazu", tmp_path / "out"))
    src = real("open-bandit")
    write(tmp_path / "ob" / "item_context.csv", (src / "item_context.csv").read_text())
    write(tmp_path / "ob" / "all.csv", (src / "all.csv").read_text().splitlines()[0] + "\n")
    with pytest.raises(DataError, match=r"no data rows in .*all\.csv"):
        convert("open-bandit", cfg(tmp_path / "ob", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_movielens_without_user_file_warns_naming_it(tmp_path, caplog):
    src = tmp_path / "src"
    write(src / "u.data", "".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in TINY_RATINGS))
    write(
        src / "u.item",
        "".join(f"{m}|M{m} (1990)|||x|" + "|".join(["0"] * 19) + "\n" for m in (10, 20, 30, 40)),
    )
    with caplog.at_level("WARNING", logger="data_pipeline.convert"):
        spec = convert("movielens", cfg(src, tmp_path / "out", valid_frac=0.2, test_frac=0.2))
    assert "gender" not in spec.sparse_names
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("no u.user" in m and "gender, age, occupation, zip3" in m for m in warned), warned
