"""Semantic-ID tables: item ID -> K codes, and the feature transform that swaps items for SIDs.

A SID table folder (written by the tokenizer, ``store.tokenize``)::

    SIDS_DIR/sid_table.parquet   columns item_id int64, sid_0 .. sid_{K-1} int64; one row per item
    SIDS_DIR/meta.json           {"method": "opmq|rqvae|opq", "num_sids": K, "codebook_size": C,
                                  "num_items": N, ...stats}

STORE never sees raw item IDs in its embeddings: every item-valued feature ``f`` (``item_ref=True`` in
the spec, e.g. ``item_id`` and ``hist_items``) becomes K features ``f_sid0 .. f_sid{K-1}`` holding the
item's k-th code. ``SidTable.transform`` does this at data time (on any rank, before the batch reaches
the model, so TorchRec can pipeline the lookup); ``SidLookup`` does the same inside a model.

The SID features travel in their own KeyedJaggedTensor (``Batch.sid``), apart from the static
features (``Batch.sparse``): the SID codebook collection then receives exactly the keys it serves,
which is what TorchRec's data-parallel (replicated) EmbeddingCollection needs.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from data_pipeline.batch import Batch
from data_pipeline.spec import DataError, DatasetSpec, atomic_write_text

SID_TABLE_FILE = "sid_table.parquet"
SID_META_FILE = "meta.json"
METHODS = ("opmq", "rqvae", "opq")


def sid_feature_name(feature: str, k: int) -> str:
    """Key of the k-th SID feature replacing item-valued feature ``feature``."""
    return f"{feature}_sid{k}"


def item_ref_features(spec: DatasetSpec) -> list[str]:
    """Sparse features whose values are item IDs (the ones SIDs replace), in spec order."""
    return [f.name for f in spec.sparse if f.item_ref]


def sid_feature_names(spec: DatasetSpec, num_sids: int) -> list[str]:
    """Keys of ``Batch.sid`` after ``SidTable.transform``: for k = 0..K-1, every item_ref feature's
    ``<f>_sid<k>`` (the feature order of STORE's SID EmbeddingCollection, table t_sid<k> per k)."""
    items = item_ref_features(spec)
    return [sid_feature_name(f, k) for k in range(num_sids) for f in items]


@dataclass
class SidTable:
    """The codes of every item. ``codes[i, k]`` is item i's k-th semantic ID, in [0, codebook_size)."""

    codes: torch.Tensor
    """LongTensor[N, K]."""
    codebook_size: int
    """C: rows of each SID embedding table."""
    method: str = "opmq"
    """Tokenizer that produced the codes (opmq / rqvae / opq)."""
    meta: dict = field(default_factory=dict)
    """The rest of meta.json (tokenizer stats), kept for logging."""

    def __post_init__(self) -> None:
        if self.codes.dim() != 2 or self.codes.dtype != torch.int64:
            raise DataError(
                f"SID codes must be an int64 [N, K] tensor, got {self.codes.dtype} {tuple(self.codes.shape)}"
            )
        if self.codes.numel() and (int(self.codes.min()) < 0 or int(self.codes.max()) >= self.codebook_size):
            raise DataError(f"SID codes must lie in [0, codebook_size={self.codebook_size})")

    @property
    def num_items(self) -> int:
        return int(self.codes.shape[0])

    @property
    def num_sids(self) -> int:
        """K: codes per item."""
        return int(self.codes.shape[1])

    @classmethod
    def from_codes(
        cls, codes: torch.Tensor, codebook_size: int | None = None, method: str = "opmq"
    ) -> SidTable:
        """In-memory table (tests, tools). codebook_size defaults to max code + 1."""
        codes = torch.as_tensor(codes, dtype=torch.int64)
        size = int(codes.max()) + 1 if codebook_size is None else int(codebook_size)
        return cls(codes=codes, codebook_size=size, method=method)

    # -- io ------------------------------------------------------------------------------------
    def save(self, sids_dir: str | os.PathLike) -> Path:
        """Write SIDS_DIR/sid_table.parquet and meta.json (atomically, table first)."""
        root = Path(sids_dir)
        root.mkdir(parents=True, exist_ok=True)
        cols = {"item_id": pa.array(range(self.num_items), pa.int64())}
        for k in range(self.num_sids):
            cols[f"sid_{k}"] = pa.array(self.codes[:, k].numpy(), pa.int64())
        tmp = root / f".{SID_TABLE_FILE}.tmp-{os.getpid()}"
        pq.write_table(pa.table(cols), tmp)
        os.replace(tmp, root / SID_TABLE_FILE)
        meta = {
            **self.meta,
            "method": self.method,
            "num_sids": self.num_sids,
            "codebook_size": self.codebook_size,
            "num_items": self.num_items,
        }
        atomic_write_text(root / SID_META_FILE, json.dumps(meta, indent=2) + "\n")
        return root

    @classmethod
    def load(cls, sids_dir: str | os.PathLike, spec: DatasetSpec | None = None) -> SidTable:
        """Read a SID folder; DataError naming the file/column if missing or malformed.

        With ``spec``, also check that the table covers every item the spec's item features can hold.
        """
        root = Path(sids_dir)
        table_path, meta_path = root / SID_TABLE_FILE, root / SID_META_FILE
        for path in (table_path, meta_path):
            if not path.is_file():
                raise DataError(f"{path}: missing (is {root} a SID folder written by the tokenizer?)")
        try:
            meta = json.loads(meta_path.read_text())
            k, c, n = int(meta["num_sids"]), int(meta["codebook_size"]), int(meta["num_items"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{meta_path}: needs integer num_sids, codebook_size, num_items ({e})") from None
        method = str(meta.get("method", ""))
        if method not in METHODS:
            raise DataError(f"{meta_path}: method must be one of {METHODS}, got {method!r}")
        if k <= 0 or c <= 0 or n <= 0:
            raise DataError(f"{meta_path}: num_sids, codebook_size and num_items must be > 0")
        try:
            table = pq.read_table(table_path)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{table_path}: not a readable parquet file ({e})") from None
        wanted = ["item_id", *(f"sid_{i}" for i in range(k))]
        missing = [col for col in wanted if col not in table.column_names]
        if missing:
            raise DataError(f"{table_path}: missing columns {missing} (meta.json says num_sids={k})")
        cols = {}
        for col in wanted:
            if not pa.types.is_integer(table.schema.field(col).type) or table.column(col).null_count:
                raise DataError(f"{table_path}: column {col!r} must be non-null int64")
            cols[col] = torch.from_numpy(table.column(col).to_numpy().astype("int64"))
        item_ids = cols["item_id"]
        if len(item_ids) != n or not torch.equal(torch.sort(item_ids).values, torch.arange(n)):
            raise DataError(f"{table_path}: column 'item_id' must hold each of 0..{n - 1} exactly once")
        codes = torch.empty(n, k, dtype=torch.int64)
        for i in range(k):
            codes[item_ids, i] = cols[f"sid_{i}"]
        if int(codes.min()) < 0 or int(codes.max()) >= c:
            raise DataError(f"{table_path}: sid_* values must lie in [0, codebook_size={c})")
        rest = {key: v for key, v in meta.items() if key not in ("method", "num_sids", "codebook_size")}
        sids = cls(codes=codes, codebook_size=c, method=method, meta=rest)
        if spec is not None:
            sids.check_covers(spec, where=str(table_path))
        return sids

    def check_covers(self, spec: DatasetSpec, where: str = "SID table") -> None:
        """DataError unless every item ID the spec's item features can hold has codes."""
        needed = spec.item_table.num_items if spec.item_table is not None else 0
        for name in item_ref_features(spec):
            needed = max(needed, spec.feature(name).vocab_size)
        if self.num_items < needed:
            raise DataError(
                f"{where}: covers {self.num_items} items but dataset {spec.name!r} has {needed} "
                "(was it built for another dataset?)"
            )

    # -- the data-time transform -----------------------------------------------------------------
    def transform(self, batch: Batch, spec: DatasetSpec) -> Batch:
        """Move each item_ref feature ``f`` of ``batch.sparse`` into ``batch.sid`` as ``f_sid0..K-1``.

        ``sparse`` keeps the other features (same order); ``sid`` has keys ``sid_feature_names``, the
        lengths of ``f`` and values ``codes[item, k]``. ``item_ids`` stays the raw item ID.
        """
        kjt = batch.sparse
        keys = kjt.keys()
        items = set(item_ref_features(spec))
        keep = [i for i, key in enumerate(keys) if key not in items]
        sparse = kjt if len(keep) == len(keys) else kjt.permute(keep)
        return Batch(
            dense=batch.dense,
            sparse=sparse,
            labels=batch.labels,
            user_ids=batch.user_ids,
            item_ids=batch.item_ids,
            sid=sid_features(kjt, spec, self.codes_by_sid),
        )

    @functools.cached_property
    def codes_by_sid(self) -> torch.Tensor:
        """codes transposed, [K, N] contiguous: one row per SID, so a batch's lookup is one gather."""
        return self.codes.t().contiguous()


def sid_features(kjt: KeyedJaggedTensor, spec: DatasetSpec, codes_t: torch.Tensor) -> KeyedJaggedTensor:
    """The SID features of the item_ref features in ``kjt`` (keys ``sid_feature_names``).

    codes_t: the codes by SID, [K, N] (``SidTable.codes_by_sid``): one gather serves every item
    feature and every SID."""
    items = item_ref_features(spec)
    keys = kjt.keys()
    missing = [f for f in items if f not in keys]
    if missing:
        raise ValueError(f"the batch has no item feature(s) {missing} to map to semantic IDs")
    idx = [keys.index(f) for f in items]
    values = torch.split(kjt.values(), kjt.length_per_key())
    lengths = kjt.lengths().view(len(keys), -1)
    item_values = torch.cat([values[i] for i in idx])
    num_sids = int(codes_t.shape[0])
    return KeyedJaggedTensor.from_lengths_sync(
        keys=sid_feature_names(spec, num_sids),
        # row k of codes_t[:, items] holds every item feature's k-th SID: already in key order
        values=codes_t[:, item_values].reshape(-1),
        lengths=torch.cat([lengths[i] for i in idx]).repeat(num_sids),
    )


class SidLookup(nn.Module):
    """Model-time version of ``SidTable.transform``: holds the codes [N, K] as a buffer by SID, [K, N].

    forward(kjt) -> the SID features (what ``SidTable.transform`` puts in ``Batch.sid``). Use it only
    where the batch cannot be transformed at data time: it is KJT surgery before the embedding lookup,
    which TorchRec's pipelined input distribution cannot overlap.
    """

    def __init__(self, codes: torch.Tensor, spec: DatasetSpec) -> None:
        super().__init__()
        codes_t = torch.as_tensor(codes, dtype=torch.int64).t().contiguous()
        self.register_buffer("codes_by_sid", codes_t, persistent=False)
        self.spec = spec

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        return sid_features(kjt, self.spec, self.codes_by_sid)
