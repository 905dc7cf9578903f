"""The ``--embedding`` source the tokenizer quantizes, opened by name (``open_source``): the item table's
content embeddings and MiniLM text embeddings (``store.tokenizer.embeddings``), SASRec's item
embeddings (``store.tokenizer.sasrec``, trained first), or content and SASRec concatenated."""

from __future__ import annotations

import os
from pathlib import Path

from data_pipeline.spec import DataError, DatasetSpec
from store.tokenizer import sasrec
from store.tokenizer.embeddings import (
    SASREC_FILE,
    SOURCES,
    TEXT_FILE,
    ItemEmbeddings,
    concat,
    content_embeddings,
    embeddings_file,
    load_table,
    num_items_of,
    text_embeddings,
)


def open_source(
    data_dir: str | os.PathLike,
    spec: DatasetSpec,
    source: str,
    out_dir: str | os.PathLike,
    sasrec_config=None,
    progress: bool = True,
) -> ItemEmbeddings:
    """Build the ``--embedding`` source; text and SASRec embeddings are computed into out_dir first."""
    if source not in SOURCES:
        raise DataError(f"--embedding must be one of {SOURCES}, got {source!r}")
    out_dir = Path(out_dir)
    if source == "content":
        return content_embeddings(data_dir, spec)
    if source == "text":
        return text_embeddings(data_dir, spec, out_dir / TEXT_FILE, progress=progress)
    # Check the cheap requirement before spending time on SASRec.
    content = content_embeddings(data_dir, spec) if source == "content+sasrec" else None
    cfg = sasrec_config or sasrec.SASRecConfig()
    model = sasrec.train_sasrec(data_dir, cfg, progress=progress)
    path = sasrec.write_item_embeddings(model, out_dir / SASREC_FILE)
    sas = embeddings_file(path, num_items_of(spec), "sasrec")
    if content is None:
        return sas
    return concat(content, load_table(sas), "content+sasrec")
