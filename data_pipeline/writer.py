"""Writing parquet shards: bounded memory, atomic (temp name, renamed when the shard is complete;
on an object store, one upload per shard: see ``data_pipeline.fs``)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline import fs


class ShardWriter:
    """Appends tables to ``folder/part-NNNNN.parquet`` shards of at most ``rows_per_shard`` rows.

    Each shard is written under a hidden temp name and renamed when closed, so a crash never leaves
    a truncated file that looks like a shard; shards already completed are kept. ``folder`` may be an
    object-store URI: a shard is then streamed to its key as a multipart upload, which the store
    makes visible only when the shard is closed.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        schema: pa.Schema,
        rows_per_shard: int = 1_000_000,
        row_group_size: int = 65_536,
        compression: str = "zstd",
        **parquet_options,
    ) -> None:
        if rows_per_shard <= 0 or row_group_size <= 0:
            raise ValueError("rows_per_shard and row_group_size must be > 0")
        self.folder = fs.location(folder)
        fs.makedirs(self.folder)
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.row_group_size = row_group_size
        self.compression = compression
        self.parquet_options = parquet_options  # e.g. use_dictionary=[...], write_statistics=False
        self.shards: list[str] = []
        self.rows_written = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp: str | None = None
        self._final: str | None = None
        self._rows_in_shard = 0

    def _open(self) -> None:
        self._final = fs.join(self.folder, f"part-{len(self.shards):05d}.parquet")
        self._tmp = fs.staging(self._final)
        self._writer = fs.parquet_writer(
            self._tmp, self.schema, compression=self.compression, **self.parquet_options
        )
        self._rows_in_shard = 0

    def _close_shard(self) -> None:
        if self._writer is None:
            return
        with fs.guard(self._final):
            self._writer.close()
        fs.commit(self._tmp, self._final)
        self.shards.append(self._final)
        self._writer = None

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        table = table.cast(self.schema) if table.schema != self.schema else table
        offset = 0
        while offset < table.num_rows:
            if self._writer is None:
                self._open()
            take = min(table.num_rows - offset, self.rows_per_shard - self._rows_in_shard)
            self._writer.write_table(table.slice(offset, take), row_group_size=self.row_group_size)
            self._rows_in_shard += take
            self.rows_written += take
            offset += take
            if self._rows_in_shard >= self.rows_per_shard:
                self._close_shard()

    def close(self) -> list[str]:
        self._close_shard()
        return self.shards

    def abort(self) -> None:
        """Drop the shard in progress (its temp file); completed shards stay."""
        if self._writer is not None:
            self._writer.close()
            fs.delete_file(self._tmp)  # on an object store: the upload the close just completed
            self._writer = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def arrow_schema(spec) -> pa.Schema:
    """The parquet schema of a split's shards for a ``DatasetSpec``."""
    fields = [pa.field(spec.label, pa.float32())]
    fields += [pa.field(c, pa.float32()) for c in spec.dense]
    for f in spec.sparse:
        fields.append(pa.field(f.name, pa.list_(pa.int64()) if f.multi else pa.int64()))
    names = {f.name for f in fields}
    for col in (spec.user_id, spec.item_id, spec.timestamp):
        if col not in names:
            fields.append(pa.field(col, pa.int64()))
            names.add(col)
    if spec.prob and spec.prob not in names:
        fields.append(pa.field(spec.prob, pa.float32()))
    return pa.schema(fields)
