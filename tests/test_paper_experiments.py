"""benchmarks/paper_experiments.py's run order: where SIDs come from learned embeddings, the ID run
trains first and the tokenizer reads it (``--from-run``), as launch.compare does."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.synthetic import generate_dataset
from tests.benchmark_module import load_benchmark


@pytest.fixture(scope="module")
def paper():
    return load_benchmark("paper_experiments")


def _args(out: Path) -> argparse.Namespace:
    return argparse.Namespace(
        out=str(out), seeds=2, epochs=1, sweep_epochs=1, batch_size=64, max_steps=0, codebook_size=8,
        tokenizer_min_steps=10, trainer_args=[],
    )  # fmt: skip


def _record(monkeypatch, paper) -> list[list[str]]:
    """Commands paper_experiments would run, in order; each "run" writes the file the next step checks."""
    calls: list[list[str]] = []

    def fake_run(cmd, log, what):
        calls.append([str(c) for c in cmd])
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / ("meta.json" if "store.tokenizer" in cmd else "summary.json")).write_text("{}")

    monkeypatch.setattr(paper, "run_logged", fake_run)
    return calls


def test_learned_sources_put_the_id_run_before_the_tokenizer(tmp_path, monkeypatch, paper):
    args = _args(tmp_path / "exp")
    # the synthetic users have no content, text or history: their embeddings are learned
    generate_dataset(tmp_path / "exp" / "syn" / "data", 600, items=200, users=40, seed=0, progress=False)
    calls = _record(monkeypatch, paper)
    paper.execute(args, paper.Run("syn", "store", "store"), seed=1)
    kinds = ["tokenize" if "store.tokenizer" in c else c[c.index("--model") + 1] for c in calls]
    assert kinds == ["id", "tokenize", "store"]
    id_cmd, tok_cmd, store_cmd = calls
    id_dir = str(paper.run_dir(args, paper.Run("syn", "id", "id"), 0))
    assert id_cmd[id_cmd.index("--out") + 1] == id_dir and id_cmd[id_cmd.index("--seed") + 1] == "0"
    assert "--sids" not in id_cmd and id_cmd[id_cmd.index("--model.id_item_tokens") + 1] == "4"
    assert tok_cmd[tok_cmd.index("--from-run") + 1] == id_dir
    assert store_cmd[store_cmd.index("--sids") + 1] == tok_cmd[tok_cmd.index("--out") + 1]
    assert store_cmd[store_cmd.index("--seed") + 1] == "1"
    # the ID run of seed 0 is not trained twice, and the table is tokenized once
    calls.clear()
    paper.execute(args, paper.Run("syn", "id", "id"), seed=0)
    paper.execute(args, paper.Run("syn", "store", "store"), seed=0)
    assert [c[c.index("--model") + 1] for c in calls] == ["store"]


def test_content_only_sources_tokenize_without_an_id_run(tmp_path, monkeypatch, paper):
    args = _args(tmp_path / "exp")
    data = tmp_path / "exp" / "syn" / "data"
    generate_dataset(data, 600, items=200, users=40, seed=0, progress=False)
    spec_path = data / "spec.json"
    # no feature is high-cardinality any more: only the item (content embeddings) is tokenized
    spec_path.write_text(
        spec_path.read_text().replace('"high_cardinality": true', '"high_cardinality": false')
    )
    assert not paper.learned_embeddings(data)  # the item's source is its content
    calls = _record(monkeypatch, paper)
    paper.execute(args, paper.Run("syn", "store", "store"), seed=0)
    assert ["store.tokenizer" in c for c in calls] == [True, False]
    assert "--from-run" not in calls[0]


def _fake_run(folder: Path, seed: int, labels, logits, users) -> None:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "predictions").mkdir(parents=True)
    (folder / "summary.json").write_text(
        json.dumps({"dataset": {"fingerprint": "f"}, "config": {"seed": seed}})
    )
    table = {"row": np.arange(labels.size), "label": labels, "logit": logits, "user": users}
    pq.write_table(pa.table(table), folder / "predictions" / "test.parquet")


def test_table1_tests_each_model_against_dnn_on_the_test_users(tmp_path, paper):
    args = _args(tmp_path / "exp")
    rng = np.random.default_rng(0)
    n = 4000
    labels = (rng.random(n) < 0.3).astype(np.float32)
    users = rng.integers(0, 200, n)
    signal = labels * 2.0 - 1.0
    # dnn sees the label through noise, fm through less of it, gdcn through as much (other draws)
    dnn = [signal + rng.normal(0, 2.0, n) for _ in range(2)]
    arms = {"dnn": dnn, "fm": [signal + rng.normal(0, 1.0, n) for _ in range(2)],
            "gdcn": [signal + rng.normal(0, 2.0, n) for _ in range(2)]}  # fmt: skip
    for name, runs in arms.items():
        for k, logits in enumerate(runs):
            _fake_run(paper.seed_dir(args, "syn", name, k), k, labels, logits.astype(np.float32), users)
    # masknet finished one seed without a predictions file: no interval for it, the others unaffected
    (paper.seed_dir(args, "syn", "masknet", 0)).mkdir(parents=True)
    (paper.seed_dir(args, "syn", "masknet", 0) / "summary.json").write_text(
        '{"dataset": {"fingerprint": "f"}}'
    )
    vs = paper.versus_baseline(args, "syn", ["fm", "gdcn", "masknet", "pepnet"])
    assert set(vs) == {"fm", "gdcn"}

    def parse(text):  # "+0.0123 [+0.0100, +0.0150]"
        diff, rest = text.split(" [")
        low, high = rest.rstrip("]").split(", ")
        return float(diff), float(low), float(high)

    diff, low, high = parse(vs["fm"])
    assert 0 < low < diff < high  # clearly better than dnn
    diff, low, high = parse(vs["gdcn"])
    assert low < 0 < high and abs(diff) < 0.02  # as good as dnn: no significant difference
    # no finished DNN seed: nothing to test against
    assert paper.versus_baseline(args, "syn", ["fm"], baseline="widedeep") == {}
