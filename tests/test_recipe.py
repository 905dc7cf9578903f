"""The training recipe: early stopping with the best validation's weights restored for the test split,
the test predictions file, the output bias at the train click rate, and embedding weight decay."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from data_pipeline.spec import DatasetSpec
from store import metrics as store_metrics
from store.tokenizer.learned import from_run
from tests.test_trainer import _run_in_process, small_flags
from trainer.metrics import evaluate_predictions, train_positive_rate


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from data_pipeline.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("recipe") / "data"
    generate_dataset(root, 3000, items=300, users=200, seed=1, progress=False)
    return root


# A recipe that overfits within a few epochs (big sparse LR, no decay): the best epoch is not the last.
OVERFIT = ["--epochs", "4", "--optim.sparse_lr", "0.3", "--model.embedding_init_std", "0.1"]


def test_early_stopping_scores_the_test_split_with_the_best_validation_weights(data, tmp_path):
    best = _run_in_process(small_flags(data, tmp_path / "best", *OVERFIT, "--eval.patience", "1"))
    last = _run_in_process(small_flags(data, tmp_path / "last", *OVERFIT, "--eval.patience", "1",
                                       "--eval.restore_best", "false"))  # fmt: skip
    aucs = [v["auc"] for v in best["valid"]]
    assert best["best"]["epoch"] == best["best_epoch"] == int(np.argmax(aucs))
    assert best["best"]["value"] == max(aucs)
    # patience 1: the run stops at the first validation that is not better
    first_worse = next((i for i in range(1, len(aucs)) if aucs[i] <= max(aucs[:i])), None)
    assert first_worse is not None, f"the recipe did not overfit: valid AUCs {aucs}"
    assert len(aucs) == first_worse + 1 and best["best"]["early_stopped"]
    assert best["steps"] == len(aucs) * (2400 // 32)
    # the same run without the restore: its test metrics are the last weights' ones
    assert last["auc"] == last["test_last"]["auc"] == best["test_last"]["auc"]
    assert best["auc"] != best["test_last"]["auc"]
    # the best weights are kept under OUT/best/step_<best step>
    assert (tmp_path / "best" / "best" / f"step_{best['best']['step']}" / ".metadata").is_file()


def test_test_predictions_file_holds_the_reported_weights_predictions(data, tmp_path):
    summary = _run_in_process(small_flags(data, tmp_path / "run", *OVERFIT, "--eval.patience", "1"))
    table = pq.read_table(tmp_path / "run" / "predictions" / "test.parquet")
    assert table.column_names == [
        "row",
        "label",
        "logit",
        "user",
        "item",
        "tail",
        "item_train_count",
        "item_slice",
    ]
    spec = DatasetSpec.load(data)
    labels = np.concatenate(
        [
            pq.read_table(p, columns=[spec.label]).column(0).to_numpy()
            for p in sorted((data / "test").glob("*.parquet"))
        ]
    )
    assert table.num_rows == len(labels)
    np.testing.assert_array_equal(table["row"].to_numpy(), np.arange(len(labels)))
    np.testing.assert_array_equal(table["label"].to_numpy(), labels.astype(np.float32))
    col = {k: torch.from_numpy(table[k].to_numpy().copy()) for k in table.column_names}
    metrics = evaluate_predictions(col["logit"], col["label"], col["user"], col["item"], None, 0)
    assert metrics["auc"] == pytest.approx(summary["auc"], abs=1e-6)
    assert metrics["logloss"] == pytest.approx(summary["logloss"], abs=1e-5)
    tail = table["tail"].to_numpy()  # the rows tail AUC was computed on
    assert 0 < tail.sum() < len(tail)
    tail_auc = store_metrics.auc(table["logit"].to_numpy()[tail], labels[tail])
    assert tail_auc == pytest.approx(summary["tail_auc"], abs=1e-6, nan_ok=True)
    # the frequency slices: the file's item_slice gives the summary's slice AUCs (as the report reads them)
    rows = store_metrics.Rows.of(table["logit"].to_numpy(), labels, item_slice=table["item_slice"].to_numpy())
    for name in ("auc_head", "auc_torso", "auc_tail", "auc_unseen"):
        got = store_metrics.METRICS[name].fn(rows)
        assert got == pytest.approx(
            summary[name] if summary[name] is not None else math.nan, abs=1e-6, nan_ok=True
        )
    assert (table["item_train_count"].to_numpy()[table["item_slice"].to_numpy() == 0] == 0).all()


def test_output_bias_starts_every_run_at_the_train_click_rate(data, tmp_path):
    rate = train_positive_rate(data, DatasetSpec.load(data))
    assert 0.01 < rate < 0.5
    summary = _run_in_process(small_flags(data, tmp_path / "run", "--max-steps", "1"))
    assert summary["train_positive_rate"] == pytest.approx(rate)
    # after one step from a base-rate start the mean prediction is near the base rate, not near 0.5
    table = pq.read_table(tmp_path / "run" / "predictions" / "test.parquet")
    mean_p = float(np.mean(1 / (1 + np.exp(-table["logit"].to_numpy()))))
    assert abs(mean_p - rate) < 0.05, (mean_p, rate)
    assert summary["logloss"] < 0.6 * math.log(2)


@pytest.mark.parametrize("sharding", ["table_wise", "data_parallel"])
def test_embedding_weight_decay_shrinks_fused_and_replicated_tables(data, tmp_path, sharding):
    spec = DatasetSpec.load(data)
    norms = {}
    for wd in ("0", "1.0"):
        out = tmp_path / f"wd{wd}"
        _run_in_process(small_flags(data, out, "--sharding.default", sharding, "--optim.embedding_weight_decay", wd,
                                    "--eval.restore_best", "false"))  # fmt: skip
        norms[wd] = float(from_run(out, spec, ["item_id"])["item_id"].norm())
    assert norms["1.0"] < 0.7 * norms["0"], norms


def test_row_decay_touches_only_the_rows_with_a_gradient():
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    from trainer.optim import with_row_decay

    w = torch.nn.Parameter(torch.ones(4, 3))
    opt = with_row_decay(RowWiseAdagrad([w], lr=0.1), weight_decay=0.5)
    w.grad = torch.zeros(4, 3)
    w.grad[1] = 1.0  # only row 1 was in the batch
    opt.step()
    torch.testing.assert_close(w.detach()[[0, 2, 3]], torch.ones(3, 3))  # torch's weight_decay moves them
    assert bool((w.detach()[1] < 1).all())
    # the decay is in the gradient the inner optimizer saw: its row-1 state holds (1 + 0.5 * 1)^2
    assert float(opt.state[w]["sum"][1].squeeze()) == pytest.approx(1.5**2)
