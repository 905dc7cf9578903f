"""Semantic-ID tables: feature ID -> K codes, and the transform that swaps raw IDs for SIDs.

A SID folder (written by the tokenizer, ``store.tokenizer``)::

    SIDS_DIR/sid_table.parquet      the item feature: item_id int64, sid_0 .. sid_{K-1} int64, one row per item
    SIDS_DIR/sids_<feature>.parquet every other high-cardinality feature: id, sid_0 .. sid_{K-1}, one row
                                    per table row 0..vocab_size-1
    SIDS_DIR/meta.json              {"method": "opmq|rqvae|opq", "num_sids": K, "codebook_size": C,
                                     "num_items": N, "features": {feature: {"rows": V, "file": ...}},
                                     "dataset": {"name", "fingerprint", "vocab"}, ...stats}

STORE never sees raw IDs of a high-cardinality feature (``DatasetSpec.high_cardinality``): every such
feature ``f`` becomes K features ``f_sid0 .. f_sid{K-1}`` holding its ID's k-th code; every item-valued
feature (``item_ref``: ``item_id``, ``hist_items``) uses the item's codes. ``SidTable.transform`` does
this at data time (on any rank, before the batch reaches the model, so TorchRec can pipeline the
lookup).

The SID features travel in their own KeyedJaggedTensor (``Batch.sid``), apart from the static
features (``Batch.sparse``): the SID codebook collection then receives exactly the keys it serves,
which is what TorchRec's data-parallel (replicated) EmbeddingCollection needs.

``codebook_size`` is the rows of each codebook table. A tokenizer that reserves a code for IDs it has
no embedding for (``learned`` IDs absent from the train split or rarer there than ``--min-count``) writes that code as
``meta["unseen_code"]`` (= the last row).

In memory each feature's codes are held once, SID-major ([K, rows] contiguous: the layout the batch
lookup gathers from), in the narrowest dtype that holds ``codebook_size`` (``code_dtype``: int16 up to
32,767 codewords, else int32); ``tables[f]`` is the [rows, K] view of that same storage. At 10M items
and K = 4 that is 80 MB per rank instead of 640 MB (an int64 [rows, K] table plus an int64 transposed
copy). Lookups widen to int64 (``sid_features``), the KJT values TorchRec's tables take. On disk the
codes stay int64 columns; files with any integer column type load.

SIDS_DIR may be a path or an object-store URI (``s3://bucket/sids``; see ``data_pipeline.fs``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from data_pipeline import fs
from data_pipeline.batch import Batch
from data_pipeline.spec import DataError, DatasetSpec, atomic_write_text
from store.records import SidTableMeta

SID_TABLE_FILE = "sid_table.parquet"
SID_META_FILE = "meta.json"
METHODS = ("opmq", "rqvae", "opq")
"""The tokenizers (``store.tokenizer.quantizers``) a SID table can come from."""
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
"""The dtypes a SidTable is built from (held as ``code_dtype``)."""


def code_dtype(codebook_size: int) -> torch.dtype:
    """The narrowest signed dtype that holds every code of a codebook of ``codebook_size`` rows (codes
    are in [0, codebook_size), reserved codes included), and ``codebook_size`` itself: int16 up to
    32,767 rows, int32 up to 2**31 - 1, else int64."""
    for dtype in (torch.int16, torch.int32):
        if codebook_size <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def sid_feature_name(feature: str, k: int) -> str:
    """Key of the k-th SID feature replacing feature ``feature``."""
    return f"{feature}_sid{k}"


def feature_file(feature: str) -> str:
    """File of a non-item feature's codes in a SID folder."""
    return f"sids_{feature}.parquet"


def fold_file(file: str, fold: int) -> str:
    """File of a feature's out-of-fold codes of fold ``fold`` (beside its codes file ``file``)."""
    return file.removesuffix(".parquet") + f".fold{fold}.parquet"


FOLD_MIX = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64: SplitMix64's increment


def _mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 (wrapping; arithmetic shifts): the same bits on every machine."""
    x = x ^ (x >> 30)
    x = x * -4658895280553007687  # 0xBF58476D1CE4E5B9
    x = x ^ (x >> 27)
    x = x * -7723592293110705685  # 0x94D049BB133111EB
    return x ^ (x >> 31)


def row_folds(kjt: KeyedJaggedTensor, keys: tuple[str, ...], num_folds: int) -> torch.Tensor:
    """(B,) the fold in [0, num_folds) of each row of a batch: a hash of the row's values of the
    sparse features ``keys`` (every value of a multi-valued one, in any order). The same row lands in
    the same fold in every reader, batch size, epoch, process and run, so the tokenizer's fold models
    leave out exactly the rows that take their codes in training. ValueError naming a missing key."""
    missing = [k for k in keys if k not in kjt.keys()]
    if missing:
        raise ValueError(
            f"the out-of-fold SID codes are assigned by features {missing}, which these batches lack "
            "(tokenize with the same features as the trainer: the same --high-card, no --drop)"
        )
    b = kjt.stride()
    acc = torch.zeros(b, dtype=torch.int64)
    for i, key in enumerate(keys):
        jt = kjt[key]
        rows = torch.repeat_interleave(torch.arange(b), jt.lengths())
        salt = ((i + 1) * FOLD_MIX + (1 << 63)) % (1 << 64) - (1 << 63)  # wrapped into int64
        acc.index_add_(0, rows, _mix(jt.values().to(torch.int64) * 1_000_003 + salt))
    return torch.remainder(_mix(acc), num_folds)


def item_ref_features(spec: DatasetSpec) -> list[str]:
    """Sparse features whose values are item IDs (they use the item's SIDs), in spec order."""
    return [f.name for f in spec.sparse if f.item_ref]


def sid_sources(spec: DatasetSpec) -> dict[str, list[str]]:
    """{tokenized feature: the batch features that take its codes}: the item feature serves every
    item-valued feature, each other high-cardinality feature serves itself. In token order."""
    return {f: (item_ref_features(spec) if f == spec.item_id else [f]) for f in spec.high_cardinality}


def sid_feature_names(spec: DatasetSpec, num_sids: int) -> list[str]:
    """Keys of ``Batch.sid`` after ``SidTable.transform``: per tokenized feature (in
    ``spec.high_cardinality`` order), for k = 0..K-1, each of its batch features' ``<f>_sid<k>``."""
    return [
        sid_feature_name(f, k)
        for served in sid_sources(spec).values()
        for k in range(num_sids)
        for f in served
    ]


@dataclass
class SidTable:
    """The codes of every tokenized feature. ``tables[f][i, k]`` is ID i's k-th semantic ID of
    feature f, in [0, codebook_size); ``codes`` is the item feature's.

    Built from integer [rows, K] tensors of any dtype; afterwards ``tables[f]`` is a [rows, K] view
    (dtype ``code_dtype(codebook_size)``, not contiguous) of the one [K, rows] copy held per feature
    (``codes_by_sid``)."""

    tables: dict[str, torch.Tensor]
    """{feature: integer tensor [rows, K]}, the item feature first (key ``item_feature``)."""
    codebook_size: int
    """Rows of each SID embedding table."""
    method: str = "opmq"
    """Tokenizer that produced the codes (opmq / rqvae / opq)."""
    item_feature: str = "item_id"
    """Key of the item feature's codes in ``tables`` ("" when there is none)."""
    meta: dict = field(default_factory=dict)
    """The rest of meta.json (dataset record, tokenizer stats), kept for checks and logging."""
    folds: dict[str, torch.Tensor] = field(default_factory=dict)
    """Out-of-fold codes: {feature: integer tensor [F, rows, K]}, fold j's codes learned without the
    train rows of fold j (``row_folds``). Train rows take their fold's codes (``transform(...,
    train=True)``); valid and test rows, and features without folds, take ``tables``. Empty: none."""
    fold_keys: tuple[str, ...] = ()
    """The sparse features whose values decide a row's fold (``row_folds``)."""
    _by_sid: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)
    """{feature: its codes [K, rows] contiguous, dtype code_dtype(codebook_size)}: the only copy."""
    _folds_by_sid: dict[str, torch.Tensor] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """{feature: its fold codes [F, K, rows] contiguous, dtype code_dtype(codebook_size)}."""

    def __post_init__(self) -> None:
        ks = set()
        for name, codes in self.tables.items():
            if codes.dim() != 2 or codes.dtype not in INTEGER_DTYPES:
                raise DataError(
                    f"SID codes of {name!r} must be an integer [N, K] tensor, got {codes.dtype} "
                    f"{tuple(codes.shape)}"
                )
            if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
                raise DataError(f"SID codes of {name!r} must lie in [0, codebook_size={self.codebook_size})")
            ks.add(int(codes.shape[1]))
        if len(ks) > 1:
            raise DataError(f"every feature needs the same number of SIDs, got {sorted(ks)}")
        dtype = code_dtype(self.codebook_size)
        for name, codes in self.tables.items():
            by_sid = codes.t()
            if by_sid.dtype != dtype or not by_sid.is_contiguous():
                by_sid = by_sid.to(dtype, memory_format=torch.contiguous_format)  # values checked in range
            self._by_sid[name] = by_sid
        self.tables = {name: by_sid.t() for name, by_sid in self._by_sid.items()}
        for name, codes in self.folds.items():
            if name not in self.tables or codes.dim() != 3 or codes.shape[1:] != self.tables[name].shape:
                raise DataError(
                    f"out-of-fold codes of {name!r} must be [F, rows, K] over a feature of the table, got "
                    f"{tuple(codes.shape)}"
                )
            if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
                raise DataError(
                    f"out-of-fold codes of {name!r} must lie in [0, codebook_size={self.codebook_size})"
                )
            self._folds_by_sid[name] = codes.transpose(1, 2).to(dtype, memory_format=torch.contiguous_format)
        if len({len(c) for c in self._folds_by_sid.values()}) > 1:
            raise DataError("every feature with out-of-fold codes needs the same number of folds")
        if self.folds and not self.fold_keys:
            raise DataError("out-of-fold codes need fold_keys, the features that decide a row's fold")
        self.folds = {name: by_sid.transpose(1, 2) for name, by_sid in self._folds_by_sid.items()}

    @property
    def num_folds(self) -> int:
        """F: the out-of-fold tables per feature (0: none)."""
        return len(next(iter(self._folds_by_sid.values()))) if self._folds_by_sid else 0

    @property
    def nbytes(self) -> int:
        """Bytes of the codes held in memory (every feature's one copy, and its fold copies)."""
        held = [*self._by_sid.values(), *self._folds_by_sid.values()]
        return sum(t.untyped_storage().nbytes() for t in held)

    @property
    def codes(self) -> torch.Tensor:
        """The item feature's codes [N, K]."""
        if self.item_feature not in self.tables:
            raise DataError("this SID table has no item feature")
        return self.tables[self.item_feature]

    @property
    def features(self) -> list[str]:
        return list(self.tables)

    @property
    def num_items(self) -> int:
        return int(self.codes.shape[0]) if self.item_feature in self.tables else 0

    @property
    def num_sids(self) -> int:
        """K: codes per ID."""
        return int(next(iter(self.tables.values())).shape[1])

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        codebook_size: int | None = None,
        method: str = "opmq",
        features: dict[str, torch.Tensor] | None = None,
    ) -> SidTable:
        """In-memory table (tests, tools): the item codes, plus ``features``' codes (other
        high-cardinality features). codebook_size defaults to max code + 1."""
        tables = {"item_id": torch.as_tensor(codes, dtype=torch.int64)}
        tables |= {f: torch.as_tensor(c, dtype=torch.int64) for f, c in (features or {}).items()}
        size = max(int(c.max()) for c in tables.values()) + 1 if codebook_size is None else codebook_size
        return cls(tables=tables, codebook_size=int(size), method=method)

    # -- io ------------------------------------------------------------------------------------
    def save(self, sids_dir: str | os.PathLike) -> str:
        """Write SIDS_DIR/sid_table.parquet, sids_<feature>.parquet and meta.json (atomically, tables first)."""
        root = fs.location(sids_dir)
        fs.makedirs(root)
        for name, codes in self.tables.items():
            cols = {
                ("item_id" if name == self.item_feature else "id"): pa.array(range(len(codes)), pa.int64())
            }
            for k in range(self.num_sids):
                cols[f"sid_{k}"] = pa.array(codes[:, k].numpy(), pa.int64())
            file = SID_TABLE_FILE if name == self.item_feature else feature_file(name)
            fs.write_parquet(fs.join(root, file), pa.table(cols))
            for j, fold in enumerate(self.folds.get(name, ())):
                fold_cols = dict(cols) | {
                    f"sid_{k}": pa.array(fold[:, k].numpy(), pa.int64()) for k in range(self.num_sids)
                }
                fs.write_parquet(fs.join(root, fold_file(file, j)), pa.table(fold_cols))
        meta = {
            **self.meta,
            "method": self.method,
            "num_sids": self.num_sids,
            "codebook_size": self.codebook_size,
            "num_items": self.num_items,
            "item_feature": self.item_feature,
            "features": {
                name: {
                    **self.meta.get("features", {}).get(name, {}),
                    "rows": len(codes),
                    "file": SID_TABLE_FILE if name == self.item_feature else feature_file(name),
                    "oof": name in self.folds,
                }
                for name, codes in self.tables.items()
            },
            "oof_folds": self.num_folds,
            "fold_keys": list(self.fold_keys),
        }
        record = SidTableMeta.from_dict(meta)  # meta.json is written and read through its record
        record.version = SidTableMeta.VERSION
        atomic_write_text(fs.join(root, SID_META_FILE), json.dumps(record.to_dict(), indent=2) + "\n")
        return root

    @classmethod
    def load(cls, sids_dir: str | os.PathLike, spec: DatasetSpec | None = None) -> SidTable:
        """Read a SID folder; DataError naming the file/column if missing or malformed.

        With ``spec``, also check that the table fits the dataset (``check_fits``).
        """
        root = fs.location(sids_dir)
        meta_path = fs.join(root, SID_META_FILE)
        if not fs.is_file(meta_path):
            if not fs.is_dir(root):
                raise fs.missing(root, "SID folder does not exist")
            raise DataError(f"{meta_path}: missing (is {root} a SID folder written by the tokenizer?)")
        try:
            meta = json.loads(fs.read_text(meta_path))
            k, c = int(meta["num_sids"]), int(meta["codebook_size"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{meta_path}: needs integer num_sids and codebook_size ({e})") from None
        method = str(meta.get("method", ""))
        if method not in METHODS:
            raise DataError(f"{meta_path}: method must be one of {METHODS}, got {method!r}")
        if k <= 0 or c <= 0:
            raise DataError(f"{meta_path}: num_sids and codebook_size must be > 0")
        item_feature = str(meta.get("item_feature", "item_id"))
        # Tables written before per-feature SIDs hold the item feature only.
        files = {n: str(v.get("file", "")) for n, v in meta.get("features", {}).items()}
        if not files:
            files = {item_feature: SID_TABLE_FILE}
        tables, folds = {}, {}
        num_folds = int(meta.get("oof_folds") or 0)
        for name, file in files.items():
            id_col = "item_id" if name == item_feature else "id"
            tables[name] = _read_codes(root, file, id_col, k, c)
            if num_folds and meta["features"][name].get("oof"):
                folds[name] = torch.stack(
                    [_read_codes(root, fold_file(file, j), id_col, k, c) for j in range(num_folds)]
                )
        rest = {key: v for key, v in meta.items() if key not in ("method", "num_sids", "codebook_size")}
        sids = cls(
            tables=tables, codebook_size=c, method=method, item_feature=item_feature, meta=rest, folds=folds,
            fold_keys=tuple(meta.get("fold_keys") or ()),
        )  # fmt: skip
        if spec is not None:
            sids.check_fits(spec, where=root)
        return sids

    def check_fits(self, spec: DatasetSpec, where: str = "SID table") -> None:
        """DataError unless this table was built for ``spec``'s dataset and covers its tokenized
        features: the recorded dataset fingerprint matches (tables that record one), the features
        are ``spec.high_cardinality`` (as overridden by --high-card), and each covers its vocab."""
        record = self.meta.get("dataset")
        if record and record.get("fingerprint") != spec.fingerprint:
            raise DataError(
                f"{where}: built for dataset {record.get('name')!r} (fingerprint {record.get('fingerprint')}), "
                f"not for dataset {spec.name!r} (fingerprint {spec.fingerprint}); "
                "tokenize this dataset with python -m store.tokenizer"
            )
        wanted = [self.item_feature if f == spec.item_id else f for f in spec.high_cardinality]
        missing = [
            f
            for f in spec.high_cardinality
            if (self.item_feature if f == spec.item_id else f) not in self.tables
        ]
        extra = [f for f in self.tables if f not in wanted]
        if missing or extra:
            raise DataError(
                f"{where}: has SIDs for {self.features} but dataset {spec.name!r} tokenizes "
                f"{spec.high_cardinality} (missing {missing}, extra {extra}); tokenize with the same "
                "--high-card as the trainer"
            )
        for f in spec.high_cardinality:
            name = self.item_feature if f == spec.item_id else f
            needed = spec.table_rows(f)
            have = len(self.tables[name])
            if have < needed:
                what = "items" if f == spec.item_id else f"rows of {f!r}"
                raise DataError(
                    f"{where}: covers {have} {what} but dataset {spec.name!r} has {needed} "
                    "(was it built for another dataset?)"
                )

    # -- the data-time transform -----------------------------------------------------------------
    def transform(self, batch: Batch, spec: DatasetSpec, train: bool = False) -> Batch:
        """Move each tokenized feature ``f`` of ``batch.sparse`` into ``batch.sid`` as ``f_sid0..K-1``
        (item-valued features through the item's codes).

        ``sparse`` keeps the other features (same order); ``sid`` has keys ``sid_feature_names``, the
        lengths of ``f`` and values ``codes[id, k]``. ``item_ids`` stays the raw item ID. ``train``: a
        train batch, whose rows take their fold's codes where the table has out-of-fold codes.
        """
        kjt = batch.sparse
        keys = kjt.keys()
        moved = {f for served in sid_sources(spec).values() for f in served}
        keep = [i for i, key in enumerate(keys) if key not in moved]
        sparse = kjt if len(keep) == len(keys) else kjt.permute(keep)
        folds = None
        if train and self.num_folds:
            folds = (row_folds(kjt, self.fold_keys, self.num_folds), self.folds_by_sid(spec))
        return Batch(
            dense=batch.dense,
            sparse=sparse,
            labels=batch.labels,
            user_ids=batch.user_ids,
            item_ids=batch.item_ids,
            sid=sid_features(kjt, spec, self.codes_by_sid(spec), folds),
        )

    def folds_by_sid(self, spec: DatasetSpec) -> dict[str, torch.Tensor]:
        """{tokenized feature of spec with out-of-fold codes: its fold codes [F, K, rows]}."""
        out = {}
        for f in spec.high_cardinality:
            name = self.item_feature if f == spec.item_id else f
            if name in self._folds_by_sid:
                out[f] = self._folds_by_sid[name]
        return out

    def codes_by_sid(self, spec: DatasetSpec) -> dict[str, torch.Tensor]:
        """{tokenized feature of spec: its codes [K, rows] contiguous, dtype ``code_dtype``}: one row
        per SID, so a batch's lookup is one gather per feature. The table's own storage, not a copy."""
        return {f: self._by_sid[self.item_feature if f == spec.item_id else f] for f in spec.high_cardinality}


def _read_codes(root: str, file: str, id_col: str, k: int, c: int) -> torch.Tensor:
    """One codes file -> [rows, K] (a view of [K, rows] contiguous, dtype ``code_dtype(c)``), rows
    0..N-1 each exactly once. Reads one column at a time, so the peak is the narrow codes plus one
    int64 column. DataError naming file and column."""
    path = fs.join(root, file)
    if not fs.is_file(path):
        raise DataError(f"{path}: missing (is {root} a SID folder written by the tokenizer?)")

    def column(col: str) -> pa.ChunkedArray:
        try:
            return parquet.read(columns=[col]).column(0)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: column {col!r} is not readable ({e})") from None

    try:
        parquet = fs.parquet_file(path)
        schema = parquet.schema_arrow
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    wanted = [id_col, *(f"sid_{i}" for i in range(k))]
    missing = [col for col in wanted if col not in schema.names]
    if missing:
        raise DataError(f"{path}: missing columns {missing} (meta.json says num_sids={k})")
    for col in wanted:
        if not pa.types.is_integer(schema.field(col).type):
            raise DataError(f"{path}: column {col!r} must be non-null integer, got {schema.field(col).type}")
    ids_col = column(id_col)
    if ids_col.null_count:
        raise DataError(f"{path}: column {id_col!r} must be non-null integer")
    ids = ids_col.to_numpy()
    del ids_col
    n = len(ids)
    if n == 0 or not np.array_equal(np.sort(ids), np.arange(n)):
        raise DataError(f"{path}: column {id_col!r} must hold each of 0..{max(n - 1, 0)} exactly once")
    in_order = np.array_equal(ids, np.arange(n))  # the tokenizer writes rows in ID order
    by_sid = torch.empty(k, n, dtype=code_dtype(c))
    rows = by_sid.numpy()  # the same memory: numpy assignment narrows each int64 column in place
    for i in range(k):
        col = column(f"sid_{i}")
        if col.null_count:
            raise DataError(f"{path}: column 'sid_{i}' must be non-null integer")
        bounds = pc.min_max(col)  # checked before narrowing, so that no code wraps around
        if bounds["min"].as_py() < 0 or bounds["max"].as_py() >= c:
            raise DataError(f"{path}: sid_* values must lie in [0, codebook_size={c})")
        if in_order:
            rows[i] = col.to_numpy()
        else:
            rows[i, ids] = col.to_numpy()
    return by_sid.t()


def sid_features(
    kjt: KeyedJaggedTensor,
    spec: DatasetSpec,
    codes_t: dict[str, torch.Tensor],
    folds: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None,
) -> KeyedJaggedTensor:
    """The SID features of the tokenized features in ``kjt`` (keys ``sid_feature_names``).

    codes_t: {tokenized feature: its codes by SID, [K, rows], any integer dtype}
    (``SidTable.codes_by_sid``): one gather per tokenized feature serves all its batch features and
    every SID. The values are int64 whatever the dtype of ``codes_t``. ``folds``: (each row's fold (B,),
    {tokenized feature: its out-of-fold codes [F, K, rows]}): those features' values take the codes of
    their row's fold."""
    keys = kjt.keys()
    sources = sid_sources(spec)
    missing = [f for served in sources.values() for f in served if f not in keys]
    if missing:
        raise ValueError(f"the batch has no feature(s) {missing} to map to semantic IDs")
    values = torch.split(kjt.values(), kjt.length_per_key())
    lengths = kjt.lengths().view(len(keys), -1)
    out_values, out_lengths, num_sids = [], [], 1
    for src, served in sources.items():
        idx = [keys.index(f) for f in served]
        table = codes_t[src]
        num_sids = int(table.shape[0])
        ids = torch.cat([values[i] for i in idx])
        if folds is not None and src in folds[1]:
            # each value's row's fold: row r of key i repeated lengths[i, r] times
            fold_of = torch.cat([torch.repeat_interleave(folds[0], lengths[i]) for i in idx])
            picked = folds[1][src][fold_of, :, ids]  # (N, K)
            out_values.append(picked.t().reshape(-1).to(torch.int64))
        else:
            # row k of table[:, ids] holds every served feature's k-th SID: already in key order; the
            # (narrow) codes widen to the int64 KJT values the embedding tables take
            out_values.append(table[:, ids].reshape(-1).to(torch.int64))
        out_lengths.append(torch.cat([lengths[i] for i in idx]).repeat(num_sids))
    if not out_values:
        return KeyedJaggedTensor.from_lengths_sync(
            keys=[], values=torch.empty(0, dtype=torch.long), lengths=torch.empty(0, dtype=torch.int32)
        )
    return KeyedJaggedTensor.from_lengths_sync(
        keys=sid_feature_names(spec, num_sids),
        values=torch.cat(out_values),
        lengths=torch.cat(out_lengths),
    )
