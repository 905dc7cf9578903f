"""SASRec item embeddings: sequence building, learning a planted next-item rule, CLI and tokenizer source."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_pipeline.spec import DatasetSpec, ItemTable, SparseFeature
from data_pipeline.writer import ShardWriter, arrow_schema
from store.tokenizer import sasrec
from store.tokenizer.pipeline import main as tokenize_main

N_ITEMS = 30


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_build_sequences_keeps_last_items_and_pads_right():
    offsets = np.array([0, 3, 3, 8])
    values = np.array([1, 2, 3, 4, 5, 6, 7, 8])
    items = np.array([9, 10, 11])
    seq = sasrec.build_sequences(offsets, values, items, L=4, pad=99)
    assert seq.tolist() == [[1, 2, 3, 9, 99], [10, 99, 99, 99, 99], [5, 6, 7, 8, 11]]


def write_chain_dataset(root, rows: int = 1500, with_embedding: bool = True, seed: int = 0) -> DatasetSpec:
    """Users walk item IDs in steps of +1 (mod N): the next item is fully determined by the last one."""
    spec = DatasetSpec(
        name="chain",
        label="label",
        dense=[],
        sparse=[
            SparseFeature("item_id", N_ITEMS),
            SparseFeature("hist", N_ITEMS, multi=True, max_len=8, item_ref=True),
        ],
        item_id="item_id",
        user_id="user_id",
        timestamp="ts",
        item_table=ItemTable(num_items=N_ITEMS, embedding_dim=4 if with_embedding else 0,
                             embedding_column="embedding" if with_embedding else None),
    )  # fmt: skip
    spec.save(root)
    rng = np.random.default_rng(seed)
    start = rng.integers(0, N_ITEMS, rows)
    length = rng.integers(0, 8, rows)
    hist = [[(s + j) % N_ITEMS for j in range(n)] for s, n in zip(start, length)]
    item = (start + length) % N_ITEMS
    label = np.where(rng.random(rows) < 0.8, 1.0, 0.0).astype(np.float32)
    label[length == 0] = 1.0
    table = pa.table(
        {
            "label": label,
            "item_id": item.astype(np.int64),
            "hist": pa.array(hist, pa.list_(pa.int64())),
            "user_id": np.arange(rows, dtype=np.int64),
            "ts": np.arange(rows, dtype=np.int64),
        }
    )
    schema = arrow_schema(spec)
    with ShardWriter(root / "train", schema, rows_per_shard=rows // 2 + 1) as w:
        w.write(table.select(schema.names))
    if with_embedding:
        items_schema = pa.schema([("item_id", pa.int64()), ("embedding", pa.list_(pa.float32()))])
        emb = rng.normal(size=(N_ITEMS, 4)).astype(np.float32).tolist()
        with ShardWriter(root / "items", items_schema) as w:
            w.write(
                pa.table(
                    {"item_id": np.arange(N_ITEMS, dtype=np.int64), "embedding": emb}, schema=items_schema
                )
            )
    return spec


SMALL = sasrec.SASRecConfig(
    dim=16, max_len=8, layers=1, heads=2, dropout=0.0, epochs=4, batch_size=64, lr=5e-3
)


def test_sasrec_learns_planted_next_item_rule(tmp_path):
    write_chain_dataset(tmp_path)
    model = sasrec.train_sasrec(tmp_path, SMALL, progress=False)
    seq = torch.tensor([[(s + j) % N_ITEMS for j in range(4)] for s in range(N_ITEMS)])
    with torch.no_grad():
        h = model(seq)[:, -1]  # [N, d]
        scores = h @ model.item_embeddings().t()  # [N, N]
    truth = (torch.arange(N_ITEMS) + 4) % N_ITEMS
    top5 = scores.topk(5, dim=1).indices
    hit = (top5 == truth[:, None]).any(1).float().mean().item()
    assert hit > 0.6, hit  # chance is 5/30


def test_sasrec_cli_writes_item_embeddings(tmp_path, capsys):
    write_chain_dataset(tmp_path / "d", rows=300)
    out = tmp_path / "e" / "sasrec.parquet"
    rc = sasrec.main(["--data", str(tmp_path / "d"), "--out", str(out), "--dim", "8", "--epochs", "1",
                      "--layers", "1", "--max-len", "8", "--no-progress"])  # fmt: skip
    assert rc == 0
    t = pq.read_table(out)
    assert t.column("item_id").to_pylist() == list(range(N_ITEMS))
    assert all(len(e) == 8 for e in t.column("embedding").to_pylist())
    assert sasrec.main(["--data", str(tmp_path / "d"), "--out", str(out), "--heads", "3"]) == 2
    assert "--heads" in capsys.readouterr().err


def test_sasrec_cli_flag_spellings():
    from data_pipeline.cli import parse

    renames = {f"--{old}": f"--{new}" for old, new in sasrec.OLD_SPELLINGS.items()}
    argv = ["--data", "d", "--out", "e.parquet", "--seed", "4", "--max-len", "8", "--negatives", "3"]
    argv += ["--all-rows", "--batch_size", "16", "--no-progress"]
    run = parse(sasrec.SASRecRun, argv, prog="python -m store.tokenizer.sasrec", renames=renames)
    assert (run.seed, run.progress, run.model.batch_size, run.model.max_len) == (4, False, 16, 8)
    assert (run.model.num_negatives, run.model.positives_only) == (3, False)


def test_sasrec_needs_an_item_history_feature(tmp_path, capsys):
    spec = write_chain_dataset(tmp_path / "d", rows=50)
    spec.sparse = [SparseFeature("item_id", N_ITEMS), SparseFeature("hist", N_ITEMS, multi=True)]
    spec.save(tmp_path / "d")
    assert sasrec.main(["--data", str(tmp_path / "d"), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "item_ref" in capsys.readouterr().err


def test_tokenizer_on_content_plus_sasrec_embeddings(tmp_path):
    write_chain_dataset(tmp_path / "d", rows=300)
    out = tmp_path / "sids"
    rc = tokenize_main(["--data", str(tmp_path / "d"), "--out", str(out), "--embedding", "content+sasrec",
                        "--method", "rqvae", "--num-sids", "2", "--codebook-size", "4", "--min-steps", "20",
                        "--sasrec-dim", "8", "--sasrec-epochs", "1", "--sasrec-layers", "1", "--no-progress"])  # fmt: skip
    assert rc == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["embedding_source"] == "content+sasrec" and meta["embedding_dim"] == 4 + 8
    assert meta["items_tokenized"] == N_ITEMS
    assert (out / "sasrec_embeddings.parquet").is_file()
    assert pq.read_table(out / "sid_table.parquet").num_rows == N_ITEMS
