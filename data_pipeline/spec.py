"""The dataset spec: what each parquet column is.

A dataset is a folder, local or in object storage (``s3://``, ``gs://``, ``hdfs://``: see
``data_pipeline.fs``)::

    DIR/spec.json          this spec
    DIR/train/*.parquet    splits, separated by time (train < valid < test)
    DIR/valid/*.parquet
    DIR/test/*.parquet
    DIR/items/*.parquet    item side-information: item ID, pretrained/content embedding, categories

Column kinds: one float label, dense float features, single-valued sparse int64 features,
multi-valued sparse features (list<int64>, e.g. a user's recent item IDs), the item-ID column,
the user-ID column (for GAUC) and a timestamp. Optionally the true click probability (synthetic
data only), which gives the Bayes-optimal metrics on the test split.

Sparse IDs are non-negative integers. The reader maps them into each table's ``vocab_size`` with
``id_mapping``: ``"mod"`` (``id % vocab_size``; identity for IDs that are already dense) or
``"hash"`` (a 64-bit mix, then modulo; for raw, sparse ID spaces). Item IDs are dense indices into
the item table (``0 <= item_id < num_items``) so semantic-ID tables can be indexed by them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data_pipeline import fs
from data_pipeline.errors import DataError as DataError  # defined apart so that fs can raise it too

SPEC_FILE = "spec.json"
SPLITS = ("train", "valid", "test")
ITEMS_DIR = "items"
ID_MAPPINGS = ("mod", "hash")


@dataclass(frozen=True)
class SparseFeature:
    """One categorical feature, i.e. one embedding table's worth of IDs."""

    name: str
    """Column name; also the key in the batch's KeyedJaggedTensor."""
    vocab_size: int
    """Rows of its embedding table; raw IDs are mapped into [0, vocab_size)."""
    multi: bool = False
    """True for a list<int64> column (several IDs per row), False for a single int64 column."""
    max_len: int = 0
    """Multi-valued only: keep the last max_len values of each list (0 keeps all)."""
    item_ref: bool = False
    """Its values are item IDs (the item column, item-history lists): SIDs can replace them."""
    high_cardinality: bool = False
    """A high-cardinality feature (user ID, site/app/device IDs, large categorical columns): STORE
    replaces its raw-ID table by K semantic IDs; False marks a low-cardinality static feature
    (grouped and rotated in STORE). Item-valued features (``item_ref``) always count as high."""


@dataclass(frozen=True)
class ItemTable:
    """Where item side-information lives and what its columns are."""

    num_items: int
    """Item IDs are 0..num_items-1."""
    id_column: str = "item_id"
    """Column holding the item ID."""
    embedding_column: str | None = "embedding"
    """list<float32> column of fixed length: the content / pretrained item embedding (None if absent)."""
    embedding_dim: int = 0
    """Length of each embedding (0 if there is no embedding column)."""
    category_columns: tuple[str, ...] = ()
    """int64 category columns (topic, genre ...)."""
    text_columns: tuple[str, ...] = ()
    """String columns (title, genres as text) that a text encoder may embed."""


@dataclass
class DatasetSpec:
    """What the columns of a dataset's shards are. Saved as DIR/spec.json."""

    name: str
    label: str
    dense: list[str]
    sparse: list[SparseFeature]
    item_id: str
    """The item-ID column ("" when the data has none: no item tokens, no tail-item metrics)."""
    user_id: str
    """The user-ID column ("" when the data has none: no GAUC)."""
    timestamp: str
    prob: str | None = None
    """Column with the true click probability (synthetic data), or None."""
    id_mapping: str = "mod"
    """How raw sparse IDs become table rows: 'mod' or 'hash'."""
    item_table: ItemTable | None = None
    feature_groups: dict[str, list[str]] = field(default_factory=dict)
    """Semantic groups of low-cardinality sparse features (e.g. user / context / item), for STORE."""
    num_rows: dict[str, int] = field(default_factory=dict)
    """Rows per split, as written (informational; the reader counts from the shards)."""
    fingerprint: str = ""
    """``content_hash`` of the dataset as written (set by ``save``): SID tables and runs record it,
    and the trainer and tokenizer refuse ones made from other data."""

    # -- derived -------------------------------------------------------------------------------
    @property
    def sparse_names(self) -> list[str]:
        """KeyedJaggedTensor keys, in order."""
        return [f.name for f in self.sparse]

    def feature(self, name: str) -> SparseFeature:
        for f in self.sparse:
            if f.name == name:
                return f
        raise KeyError(f"no sparse feature {name!r} in spec {self.name!r}")

    @property
    def columns(self) -> list[str]:
        """Every column the reader needs from a shard."""
        cols = [self.label, *self.dense, *self.sparse_names, self.user_id, self.item_id, self.timestamp]
        if self.prob:
            cols.append(self.prob)
        return [c for c in dict.fromkeys(cols) if c]

    def table_rows(self, name: str) -> int:
        """Rows of feature ``name``'s raw-ID table. Item-valued features share the item table: the
        item table's size or the largest item-feature vocab, whichever is larger."""
        if not self.feature(name).item_ref:
            return self.feature(name).vocab_size
        rows = [f.vocab_size for f in self.sparse if f.item_ref]
        if self.item_table is not None:
            rows.append(self.item_table.num_items)
        return max(rows)

    @property
    def high_cardinality(self) -> list[str]:
        """The features STORE tokenizes, each with its own SIDs: the item feature first (every
        item-valued feature uses its SIDs), then the other high-cardinality features in spec order."""
        items = [self.item_id] if self.item_id else []
        return items + [f.name for f in self.sparse if f.high_cardinality and not f.item_ref]

    def with_high_cardinality(self, names: list[str], flag: str = "--high-card") -> DatasetSpec:
        """A copy whose high-cardinality features are exactly ``names`` (plus the item-valued ones,
        which always are): the ``--high-card`` override of the tokenizer and the trainer."""
        known = self.sparse_names
        unknown = [n for n in names if n not in known]
        if unknown:
            raise DataError(f"{flag}: unknown sparse feature(s) {unknown}; the dataset has {known}")
        sparse = [dataclasses.replace(f, high_cardinality=f.name in names) for f in self.sparse]
        return dataclasses.replace(self, sparse=sparse)

    def without(self, names: list[str], flag: str = "--drop") -> DatasetSpec:
        """A copy without the sparse features ``names`` (an ablation: e.g. a model without the item).
        Dropping the item drops every item-valued feature with it (their SIDs are the item's)."""
        unknown = [n for n in names if n not in self.sparse_names]
        if unknown:
            raise DataError(
                f"{flag}: unknown sparse feature(s) {unknown}; the dataset has {self.sparse_names}"
            )
        drop = set(names)
        if self.item_id in drop:
            drop |= {f.name for f in self.sparse if f.item_ref}
        return dataclasses.replace(
            self,
            sparse=[f for f in self.sparse if f.name not in drop],
            item_id="" if self.item_id in drop else self.item_id,
            feature_groups={g: [c for c in cols if c not in drop] for g, cols in self.feature_groups.items()},
        )

    def content_hash(self, root: str | os.PathLike | None = None) -> str:
        """A short hash of what SID tables and learned embeddings depend on: the dataset's name, its
        sparse features (name, vocab, kind), item count, split sizes and, with ``root``, the name and
        byte size of every shard. Feature roles are left out (a flag may override them)."""
        key: dict = {
            "name": self.name,
            "sparse": [(f.name, f.vocab_size, f.multi, f.item_ref) for f in self.sparse],
            "items": self.item_table.num_items if self.item_table is not None else 0,
            "rows": {k: self.num_rows[k] for k in sorted(self.num_rows)},
        }
        if root is not None:
            for split in (*SPLITS, ITEMS_DIR):
                folder = fs.join(root, split)
                entries = fs.list_dir(folder)
                if entries or fs.is_dir(folder):
                    files = [e for e in entries if e.is_file and e.base_name.endswith(".parquet")]
                    key[split] = sorted((e.base_name, e.size) for e in files)
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def record(self) -> dict:
        """What a SID table or a finished run records about the dataset it was built from."""
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "high_cardinality": self.high_cardinality,
            "vocab": {f: self.feature(f).vocab_size for f in self.high_cardinality},
        }

    # -- validation ----------------------------------------------------------------------------
    def validate(self, where: str = SPEC_FILE) -> None:
        def bad(msg: str) -> DataError:
            return DataError(f"{where}: {msg}")

        if self.id_mapping not in ID_MAPPINGS:
            raise bad(f"id_mapping must be one of {ID_MAPPINGS}, got {self.id_mapping!r}")
        names = self.sparse_names
        if len(set(names)) != len(names):
            raise bad(f"duplicate sparse feature names in {names}")
        for f in self.sparse:
            if f.vocab_size <= 0:
                raise bad(f"sparse feature {f.name!r}: vocab_size must be > 0, got {f.vocab_size}")
            if f.max_len < 0:
                raise bad(f"sparse feature {f.name!r}: max_len must be >= 0, got {f.max_len}")
        if self.item_id and self.item_id not in names:
            raise bad(f"item_id column {self.item_id!r} must also be a sparse feature")
        if self.item_id and self.feature(self.item_id).multi:
            raise bad(f"item_id column {self.item_id!r} must be single-valued")
        if not self.item_id and any(f.item_ref for f in self.sparse):
            raise bad("item_ref features need an item_id column (their SIDs are the item's)")
        overlap = set(self.dense) & set(names)
        if overlap:
            raise bad(f"columns {sorted(overlap)} are both dense and sparse")
        for group, cols in self.feature_groups.items():
            unknown = [c for c in cols if c not in names]
            if unknown:
                raise bad(f"feature_groups[{group!r}] names unknown sparse features {unknown}")

    # -- io --------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, root: str | os.PathLike) -> str:
        """Write DIR/spec.json atomically (after the shards: its fingerprint covers them)."""
        self.validate()
        self.fingerprint = self.content_hash(root)
        path = fs.join(root, SPEC_FILE)
        atomic_write_text(path, self.to_json() + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict, where: str = SPEC_FILE) -> DatasetSpec:
        try:
            d = dict(d)
            d["sparse"] = [SparseFeature(**f) for f in d["sparse"]]
            if d.get("item_table") is not None:
                it = dict(d["item_table"])
                it["category_columns"] = tuple(it.get("category_columns", ()))
                it["text_columns"] = tuple(it.get("text_columns", ()))
                d["item_table"] = ItemTable(**it)
            spec = cls(**d)
            if not spec.fingerprint:  # a spec written by hand or before fingerprints
                spec.fingerprint = spec.content_hash()
        except (KeyError, TypeError) as e:
            raise DataError(f"{where}: malformed spec ({e})") from None
        spec.validate(where)
        return spec

    @classmethod
    def load(cls, root: str | os.PathLike) -> DatasetSpec:
        """DIR/spec.json of a dataset folder or object-store prefix."""
        root = fs.location(root)
        kind = fs.info(root).type
        if kind == pafs.FileType.File:
            raise DataError(
                f"{root}: is a file, not a dataset folder (a dataset is a folder with spec.json, "
                f"{', '.join(s + '/' for s in SPLITS)})"
            )
        if kind != pafs.FileType.Directory:
            raise fs.missing(root, "dataset folder does not exist")
        path = fs.join(root, SPEC_FILE)
        if not fs.is_file(path):
            raise DataError(f"{path}: missing spec file (is {root} a dataset folder?)")
        try:
            d = json.loads(fs.read_text(path))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, where=str(path))


def apply_high_card(spec: DatasetSpec, flag: str) -> DatasetSpec:
    """The spec with a ``--high-card`` flag applied (tokenizer and trainer alike): '' keeps its roles,
    'none' leaves only the item-valued features, 'f1,f2' makes exactly those (and the item) high."""
    if not flag.strip():
        return spec
    return spec.with_high_cardinality([] if flag.strip() == "none" else feature_list(flag))


def feature_list(flag: str) -> list[str]:
    """'f1, f2,' -> ['f1', 'f2']: the feature names of a comma-separated flag value."""
    return [n.strip() for n in flag.split(",") if n.strip()]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a whole text file so that readers never see half of it (a local temp name renamed into
    place; on an object store, one upload). Creates the parent folder."""
    fs.write_text(path, text)


def split_dir(root: str | os.PathLike, split: str) -> str:
    """The location of one split's (or the item table's) shards."""
    if split not in SPLITS and split != ITEMS_DIR:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    return fs.join(root, split)


def list_shards(folder: str | os.PathLike) -> list[str]:
    """The parquet shards of one split (locations: paths or URIs), sorted by name. Clear errors for
    missing/empty folders, missing buckets and refused credentials."""
    if not fs.is_dir(folder):
        raise fs.missing(folder, "folder does not exist")
    names = [e.base_name for e in fs.list_dir(folder) if e.is_file]
    shards = [fs.join(folder, n) for n in names if n.endswith(".parquet") and not n.startswith(".")]
    if not shards:
        raise DataError(f"{fs.location(folder)}: no .parquet shards in folder")
    return shards


def open_shard(path: str | os.PathLike) -> pq.ParquetFile:
    """A parquet shard opened for reading (its footer read, no data): a DataError naming the file when
    it is not valid parquet (truncated, corrupt, not parquet at all), the store's own StorageError
    when the store cannot be reached or refuses the credentials. Every reader of shards opens them
    here (the trainer's reader, inspect, the train-split stats)."""
    try:
        return fs.parquet_file(path)
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, OSError) and (err := fs.explain(path, e)) is not None:
            raise err from None  # the store, not the file: credentials, connection
        raise DataError(
            f"{fs.location(path)}: not a readable parquet file, corrupt or truncated ({' '.join(str(e).split())})"
        ) from None
