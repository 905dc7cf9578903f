"""MovieLens -> dataset. Layouts (found in --src in this order):

* RecBole atomic files: ``*.inter`` (+ the ``.item`` and ``.user`` of the same name), tab-separated
  with typed headers (``user_id:token`` ...);
* GroupLens ML-100K: ``u.data`` (user, item, rating, ts; tabs), ``u.item`` / ``u.user`` (``|``);
* GroupLens ML-1M / ML-10M: ``ratings.dat``, ``movies.dat``, ``users.dat`` (``::``; ML-10M has no
  users.dat, so its rows have no user features);
* GroupLens ML-20M / ML-25M: ``ratings.csv``, ``movies.csv`` (with headers; no user file).

Rows (one per rating): label ``click`` = rating >= 4; sparse ``user_id`` (raw), ``item_id`` (movies
remapped to 0..N-1 in movie-ID order, the item table's order), ``hist_items`` (the user's last
``hist_len`` movies rated strictly before this rating's second: same-second ratings are not in each
other's history), ``genres`` (multi), ``year_bucket`` (5-year release bucket), user ``gender``,
``age`` (the ML-1M brackets), ``occupation``, ``zip3`` (zip prefix), context ``hour`` / ``weekday``
(UTC); dense ``log_user_count`` / ``log_item_count`` = log1p of the ratings the user / the movie had
strictly earlier. Categorical features reserve ID 0 for unknown; ``id_mapping`` is ``mod`` (IDs are
dense). Split by global time order: the first (1 - valid - test) of the ratings are train, etc.
(ties at a boundary may straddle it, so max(train ts) <= min(valid ts)).

Feature roles: ``user_id`` is ``high_cardinality`` (STORE replaces its table by semantic IDs);
``item_id`` and ``hist_items`` are item-valued (``item_ref``), so they are too; every other feature
(genres, year, the user's demographics, hour, weekday) is a low-cardinality static feature.

Memory: the ratings are streamed from the file, but sorting by time and by (user, time) for the
histories keeps about 50 bytes per rating in numpy at the peak (int32 user and movie, int64
second, the label, sort orders and int32 positions). Measured peak RSS (synthetic ``ratings.dat``,
interpreter included): 2M ratings 370 MB, 6M ratings 560 MB, so ~0.75 GB for ML-10M and ~1.5 GB
for ML-25M. The rows are then written in chunks of 128K.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from data_pipeline.converters.checks import require_rows
from data_pipeline.converters.common import (
    ConvertConfig,
    SplitSink,
    column,
    csv_batches,
    finish,
    hour_and_weekday,
    ints,
    log,
    make_table,
    numbers,
    prepare_out,
    read_header,
    write_items,
)
from data_pipeline.spec import DataError, DatasetSpec, ItemTable, SparseFeature
from data_pipeline.writer import arrow_schema

CHUNK = 131_072
YEAR_BUCKETS = 32  # 0 unknown, 1..31: 5-year buckets from 1900 (clipped)
AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])  # the ML-1M age brackets; 0 = unknown
GENRES_100K = (
    "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy Film-Noir "
    "Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")
USER_FEATURES = ("gender", "age", "occupation", "zip3")
"""The features of the user file (the ``user`` feature group); without the file the rows have none."""
USER_FILES = {"u.data": "u.user", "dat": "users.dat"}
"""The user file of each GroupLens layout that has one (RecBole: the ``.user`` beside the ``.inter``)."""


@dataclass
class Layout:
    """Which files hold the ratings, movies and users, and how they are written."""

    kind: str
    """'recbole', 'u.data', 'dat' or 'csv'."""
    ratings: Path
    movies: Path
    users: Path | None


def find_layout(src: Path) -> Layout:
    inter = sorted(src.glob("*.inter"))
    if inter:
        r = inter[0]
        movies, users = r.with_suffix(".item"), r.with_suffix(".user")
        if not movies.is_file():
            raise DataError(f"--src {src}: missing {movies.name} (the movies of {r.name})")
        return Layout("recbole", r, movies, users if users.is_file() else None)
    for ratings, movies, users, kind in (
        ("u.data", "u.item", "u.user", "u.data"),
        ("ratings.dat", "movies.dat", "users.dat", "dat"),
        ("ratings.csv", "movies.csv", None, "csv"),
    ):
        if (src / ratings).is_file():
            if not (src / movies).is_file():
                raise DataError(f"--src {src}: missing {movies} (the movies of {ratings})")
            u = src / users if users and (src / users).is_file() else None
            return Layout(kind, src / ratings, src / movies, u)
    raise DataError(
        f"--src {src}: no MovieLens ratings file (expected *.inter, u.data, ratings.dat or ratings.csv)"
    )


# -- small files: movies and users, parsed line by line ---------------------------------------------
def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of non-empty lines; UTF-8, falling back to Latin-1 (the GroupLens files)."""
    with open(path, "rb") as f:
        for no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("latin-1")
            line = line.rstrip("\r\n")
            if line:
                yield no, line


def _fields(path: Path, no: int, line: str, sep: str, n: int) -> list[str]:
    parts = line.split(sep)
    if len(parts) < n:
        raise DataError(
            f"{path}: line {no}: expected {n} {sep!r}-separated fields, got {len(parts)}: {line!r}"
        )
    return parts


def _typed_header(path: Path, required: list[str]) -> dict[str, int]:
    """RecBole header ``name:type ...`` -> {name: position}; DataError naming missing columns."""
    names = [h.split(":")[0] for h in next(_lines(path), (0, ""))[1].split("\t")]
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} in the header (found {names})")
    return {c: names.index(c) for c in names}


def _int(path: Path, no: int, name: str, s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise DataError(f"{path}: line {no}: column {name!r}: not an integer: {s!r}") from None


def _year(s: str, title: str) -> int:
    s = s.strip()[-4:]
    if s.isdigit():
        return int(s)
    m = _YEAR_IN_TITLE.search(title)
    return int(m.group(1)) if m else 0


@dataclass
class Movies:
    """The movie file, in movie-ID order (row i = item i)."""

    ids: np.ndarray
    titles: list[str]
    years: np.ndarray
    genres: list[list[str]]


def read_movies(layout: Layout) -> Movies:
    path, rows = layout.movies, []  # (id, title, year, genres)
    if layout.kind == "recbole":
        col = _typed_header(path, ["item_id", "movie_title", "release_year", "class"])
        n = max(col[c] for c in ("item_id", "movie_title", "release_year", "class")) + 1
        for no, line in list(_lines(path))[1:]:
            f = _fields(path, no, line, "\t", n)
            title = f[col["movie_title"]]
            mid = _int(path, no, "item_id", f[col["item_id"]])
            rows.append((mid, title, _year(f[col["release_year"]], title), f[col["class"]].split()))
    elif layout.kind == "u.data":
        names = GENRES_100K
        genre_file = path.with_name("u.genre")
        if genre_file.is_file():
            names = [_fields(genre_file, no, line, "|", 2)[0] for no, line in _lines(genre_file)]
        for no, line in _lines(path):
            f = _fields(path, no, line, "|", 5 + len(names))
            flags = f[5 : 5 + len(names)]
            genres = [g for g, flag in zip(names, flags) if flag.strip() == "1"]
            rows.append((_int(path, no, "movie id", f[0]), f[1], _year(f[2], f[1]), genres))
    elif layout.kind == "dat":
        for no, line in _lines(path):
            f = _fields(path, no, line, "::", 3)
            title = "::".join(f[1:-1])
            genres = [g for g in f[-1].split("|") if g and g != "(no genres listed)"]
            rows.append((_int(path, no, "MovieID", f[0]), title, _year("", title), genres))
    else:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            missing = [c for c in ("movieId", "title", "genres") if c not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing} in the header (found {header})")
            i_id, i_t, i_g = header.index("movieId"), header.index("title"), header.index("genres")
            for no, f in enumerate(reader, 2):
                if len(f) < len(header):
                    raise DataError(f"{path}: line {no}: expected {len(header)} fields, got {len(f)}")
                genres = [g for g in f[i_g].split("|") if g and g != "(no genres listed)"]
                rows.append((_int(path, no, "movieId", f[i_id]), f[i_t], _year("", f[i_t]), genres))
    if not rows:
        raise DataError(f"{path}: no movies")
    rows.sort(key=lambda r: r[0])
    ids = np.array([r[0] for r in rows], np.int64)
    if (np.diff(ids) == 0).any():
        raise DataError(f"{path}: duplicate movie IDs, e.g. {ids[1:][np.diff(ids) == 0][0]}")
    return Movies(ids, [r[1] for r in rows], np.array([r[2] for r in rows], np.int64), [r[3] for r in rows])


@dataclass
class Users:
    """The user file: raw IDs (sorted) and their encoded features (0 = unknown)."""

    ids: np.ndarray
    features: dict[str, np.ndarray]
    vocab: dict[str, int]


def _age_bucket(age: str) -> int:
    return int(1 + np.searchsorted(AGE_EDGES, int(age), side="right")) if age.strip().isdigit() else 0


def read_users(layout: Layout) -> Users | None:
    path = layout.users
    if path is None:
        return None
    rows = []  # (id, gender, age, occupation, zip)
    if layout.kind == "recbole":
        col = _typed_header(path, ["user_id", "age", "gender", "occupation", "zip_code"])
        n = max(col[c] for c in ("user_id", "age", "gender", "occupation", "zip_code")) + 1
        for no, line in list(_lines(path))[1:]:
            f = _fields(path, no, line, "\t", n)
            uid = _int(path, no, "user_id", f[col["user_id"]])
            rows.append((uid, f[col["gender"]], f[col["age"]], f[col["occupation"]], f[col["zip_code"]]))
    elif layout.kind == "u.data":
        for no, line in _lines(path):
            f = _fields(path, no, line, "|", 5)
            rows.append((_int(path, no, "user id", f[0]), f[2], f[1], f[3], f[4]))
    else:
        for no, line in _lines(path):
            f = _fields(path, no, line, "::", 5)
            rows.append((_int(path, no, "UserID", f[0]), f[1], f[2], f[3], f[4]))
    rows.sort(key=lambda r: r[0])
    occupations = {o: i + 1 for i, o in enumerate(sorted({r[3] for r in rows}))}
    zips = {z: i + 1 for i, z in enumerate(sorted({r[4][:3].upper() for r in rows if r[4]}))}
    features = {
        "gender": np.array([{"M": 1, "F": 2}.get(r[1].strip().upper(), 0) for r in rows], np.int64),
        "age": np.array([_age_bucket(r[2]) for r in rows], np.int64),
        "occupation": np.array([occupations[r[3]] for r in rows], np.int64),
        "zip3": np.array([zips.get(r[4][:3].upper(), 0) for r in rows], np.int64),
    }
    vocab = {
        "gender": 3,
        "age": len(AGE_EDGES) + 2,
        "occupation": len(occupations) + 1,
        "zip3": len(zips) + 1,
    }
    return Users(np.array([r[0] for r in rows], np.int64), features, vocab)


# -- ratings: streamed in chunks ----------------------------------------------------------------------
def read_ratings(layout: Layout, cfg: ConvertConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user, movie ID, click, second) of every rating, in file order."""
    path = layout.ratings
    if layout.kind == "recbole":
        raw = read_header(path, "\t", [])
        names = [h.split(":")[0] for h in raw]
        missing = [c for c in ("user_id", "item_id", "rating", "timestamp") if c not in names]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing} in the header (found {names})")
        cols, opts = ("user_id", "item_id", "rating", "timestamp"), dict(delimiter="\t", header=True)
    elif layout.kind == "csv":
        names = read_header(path, ",", ["userId", "movieId", "rating", "timestamp"])
        cols, opts = ("userId", "movieId", "rating", "timestamp"), dict(delimiter=",", header=True)
    elif layout.kind == "u.data":
        names = ["user_id", "item_id", "rating", "timestamp"]
        cols, opts = tuple(names), dict(delimiter="\t", header=False)
    else:  # '::' is read as ':' with an empty column between fields
        names = ["UserID", "_1", "MovieID", "_2", "Rating", "_3", "Timestamp"]
        cols, opts = ("UserID", "MovieID", "Rating", "Timestamp"), dict(delimiter=":", header=False)
    types = {cols[0]: pa.int64(), cols[1]: pa.int64(), cols[2]: pa.float64(), cols[3]: pa.float64()}
    parts: list[tuple[np.ndarray, ...]] = []
    for b in tqdm(
        csv_batches(path, names, types=types, block_size=cfg.block_size, **opts),
        desc=f"read {path.name}",
        unit="chunk",
        leave=False,
    ):
        u, m = ints(column(b, cols[0]), path, cols[0]), ints(column(b, cols[1]), path, cols[1])
        r_arr, t_arr = column(b, cols[2]), column(b, cols[3])
        for name, a in ((cols[2], r_arr), (cols[3], t_arr)):
            if a.null_count:
                raise DataError(f"{path}: column {name!r} has {a.null_count} missing value(s)")
        if (u < 0).any() or (m < 0).any():
            raise DataError(f"{path}: columns {cols[:2]} must be non-negative IDs")
        if max(u.max(initial=0), m.max(initial=0)) >= 2**31:
            raise DataError(f"{path}: columns {cols[:2]} must be IDs below 2**31")
        # int32 IDs: the ratings stay in memory for sorting, so every byte per rating counts.
        parts.append(
            (u.astype(np.int32), m.astype(np.int32), numbers(r_arr) >= 4.0, numbers(t_arr).astype(np.int64))
        )
    require_rows(sum(len(p[0]) for p in parts), [path], cfg.src)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))  # type: ignore[return-value]


def _sorted_groups(key: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by (key, ts); for each sorted position: where its (key, ts) run starts, and how many
    rows of the same key come strictly earlier in time. Returns (order, run_start, prior)."""
    n = len(key)
    order = np.lexsort((ts, key))
    k, t = key[order], ts[order]
    new_key = np.ones(n, bool)
    new_key[1:] = k[1:] != k[:-1]
    new_run = new_key.copy()
    new_run[1:] |= t[1:] != t[:-1]
    del k, t
    pos = np.arange(n, dtype=np.int32 if n < 2**31 - 1 else np.int64)
    key_start = np.maximum.accumulate(np.where(new_key, pos, 0))
    run_start = np.maximum.accumulate(np.where(new_run, pos, 0))
    return order, run_start, run_start - key_start


def _to_file_order(order: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    out[order] = values
    return out


def _warn_no_users(layout: Layout) -> None:
    """Say which user file is missing and what the dataset goes without (ML-20M / ML-25M have no user
    file at all: said at INFO)."""
    src = layout.ratings.parent
    expected = (
        layout.ratings.with_suffix(".user").name if layout.kind == "recbole" else USER_FILES.get(layout.kind)
    )
    if expected is None:
        log.info("%s: %s has no user file: the rows have no user features", src, layout.ratings.name)
        return
    log.warning(
        "%s: no %s (the users of %s%s): the user features %s (feature group 'user') are left out; "
        "user_id is kept",
        src, expected, layout.ratings.name, ", as in ML-10M" if layout.kind == "dat" else "",
        ", ".join(USER_FEATURES),
    )  # fmt: skip


def convert(cfg: ConvertConfig) -> DatasetSpec:
    layout = find_layout(cfg.src)
    movies = read_movies(layout)
    users = read_users(layout)
    if users is None:
        _warn_no_users(layout)
    user, movie, click, ts = read_ratings(layout, cfg)
    n, L = len(user), cfg.hist_len

    item = np.searchsorted(movies.ids, movie)
    known = movies.ids[np.minimum(item, len(movies.ids) - 1)] == movie
    if not known.all():
        bad = np.unique(movie[~known])[:5].tolist()
        raise DataError(f"{layout.ratings}: movie ID(s) {bad} are not in {layout.movies}")
    item = item.astype(np.int32)
    del movie, known
    prepare_out(cfg.out, cfg.overwrite)

    # Histories: in (user, time) order a rating's history is the run of that user's earlier items.
    order, run_start, prior = _sorted_groups(user, ts)
    items_by_user = item[order]
    hist_end, user_prior = _to_file_order(order, run_start), _to_file_order(order, prior)
    del order, run_start, prior
    order, _, prior = _sorted_groups(item, ts)
    item_prior = _to_file_order(order, prior)
    del order, prior
    time_order = np.argsort(ts, kind="stable")

    genre_names = sorted({g for gs in movies.genres for g in gs})
    genre_id = {g: i + 1 for i, g in enumerate(genre_names)}  # 0 = no genre
    genre_lists = pa.array([[genre_id[g] for g in gs] for gs in movies.genres], pa.list_(pa.int64()))
    year_bucket = np.where(movies.years > 0, np.clip((movies.years - 1900) // 5, 0, YEAR_BUCKETS - 2) + 1, 0)
    num_items = len(movies.ids)

    user_vocab = int(max(user.max(), users.ids.max() if users else 0)) + 1
    sparse = [
        SparseFeature("user_id", user_vocab, high_cardinality=True),
        SparseFeature("item_id", num_items, item_ref=True),
    ]
    if L > 0:
        sparse.append(SparseFeature("hist_items", num_items, multi=True, max_len=L, item_ref=True))
    sparse += [
        SparseFeature("genres", len(genre_names) + 1, multi=True),
        SparseFeature("year_bucket", YEAR_BUCKETS),
    ]
    groups = {"item": ["genres", "year_bucket"], "context": ["hour", "weekday"]}
    if users:
        sparse += [SparseFeature(name, v) for name, v in users.vocab.items()]
        groups = {"user": list(users.vocab), **groups}
    sparse += [SparseFeature("hour", 24), SparseFeature("weekday", 7)]
    spec = DatasetSpec(
        name=f"movielens-{cfg.src.name}",
        label="click",
        dense=["log_user_count", "log_item_count"],
        sparse=sparse,
        item_id="item_id",
        user_id="user_id",
        timestamp="timestamp",
        id_mapping="mod",
        item_table=ItemTable(
            num_items=num_items,
            id_column="item_id",
            embedding_column=None,
            embedding_dim=0,
            category_columns=("genre", "year_bucket"),
            text_columns=("title", "genres"),
        ),
        feature_groups=groups,
    )
    schema = arrow_schema(spec)

    n_test, n_valid = round(n * cfg.test_frac), round(n * cfg.valid_frac)
    n_train = n - n_valid - n_test
    with SplitSink(cfg.out, schema, cfg) as sink:
        for start in tqdm(range(0, n, CHUNK), desc="write movielens", unit="chunk", leave=False):
            r = time_order[start : start + CHUNK]
            pos = np.arange(start, start + len(r))
            codes = (pos >= n_train).astype(np.int8) + (pos >= n_train + n_valid).astype(np.int8)
            hour, weekday = hour_and_weekday(ts[r])
            cols: dict[str, np.ndarray | pa.Array] = {
                "click": click[r].astype(np.float32),
                "log_user_count": np.log1p(user_prior[r]).astype(np.float32),
                "log_item_count": np.log1p(item_prior[r]).astype(np.float32),
                "user_id": user[r],
                "item_id": item[r].astype(np.int64),
                "genres": genre_lists.take(pa.array(item[r])),
                "year_bucket": year_bucket[item[r]],
                "hour": hour,
                "weekday": weekday,
                "timestamp": ts[r],
            }
            if L > 0:
                end = hist_end[r].astype(np.int64)
                k = np.minimum(user_prior[r], L).astype(np.int64)
                offsets = np.concatenate([[0], np.cumsum(k)])
                idx = np.repeat(end - k - offsets[:-1], k) + np.arange(offsets[-1])
                cols["hist_items"] = pa.ListArray.from_arrays(
                    pa.array(offsets, pa.int32()), pa.array(items_by_user[idx].astype(np.int64))
                )
            if users:
                j = np.searchsorted(users.ids, user[r])
                found = users.ids[np.minimum(j, len(users.ids) - 1)] == user[r]
                for name, values in users.features.items():
                    cols[name] = np.where(found, values[np.minimum(j, len(users.ids) - 1)], 0)
            sink.write(make_table(cols, schema), codes)
        rows = sink.close()

    genres_text = [", ".join(gs) for gs in movies.genres]
    items = pa.table(
        {
            "item_id": pa.array(np.arange(num_items, dtype=np.int64)),
            "movie_id": pa.array(movies.ids),
            "title": pa.array(movies.titles, pa.string()),
            "genres": pa.array(genres_text, pa.string()),
            "genre_ids": genre_lists,
            "genre": pa.array([genre_id[gs[0]] if gs else 0 for gs in movies.genres], pa.int64()),
            "year_bucket": pa.array(year_bucket.astype(np.int64)),
        }
    )
    write_items(cfg.out, items, cfg)
    log.info(
        "movielens (%s layout): %d ratings, %d movies, click rate %.4f",
        layout.kind,
        n,
        num_items,
        click.mean(),
    )
    return finish(spec, cfg.out, rows)
