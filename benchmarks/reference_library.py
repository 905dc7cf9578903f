"""The zoo against a standard CTR library on the same splits: deepctr-torch's models and recipe.

    python benchmarks/reference_library.py --data DIR --out runs/reference [--seeds 0,1,2,3,4]
        [--models dnn,widedeep,deepfm,fm,dcn,autoint] [--epochs 3] [--batch-size 512] [--jobs 2]
        [--history shared|own] [-- TRAINER FLAGS]

For every model and seed, two runs on DIR's train / valid / test splits:

- ``ours``: ``python -m trainer --data DIR --model M --epochs E --batch-size B --seed S`` (plus the
  trainer flags after ``--``), the zoo with the trainer's defaults;
- ``library``: deepctr-torch's model of the same name with deepctr-torch's recipe: Adam 1e-3 on every
  parameter, its init (std 1e-4) and L2 (1e-5 on the embeddings and linear weights), a summed loss,
  one shuffled pass per epoch, ``batch_size`` rows a step.

Both read the rows through ``data_pipeline``'s reader, so the IDs, the list truncation and the dense
values are the trainer's. Both score the test split with the best validation epoch's weights (the
trainer's rule), and report AUC, GAUC and logloss. The library model gets the same parts and sizes
as the zoo's: embedding dim, the MLP (``ModelConfig.mlp_dims``), DCN-v2's full-rank cross layers,
AutoInt's layers and heads and no MLP on top, a first-order part only for Wide&Deep, DeepFM and FM.
FM is deepctr-torch's DeepFM without the deep tower (first order plus the pairwise term). A list
feature marked ``item_ref`` reads the item's table (``--history shared``, the library's convention
for behaviour sequences, and the zoo's for every model but FM) or a table of its own (``own``, the
zoo's FM; always for AutoInt, whose output layer counts the fields by their tables). Every other
hyper-parameter is the library's default.

Every run is resumable: one whose result exists is skipped. Prints a markdown table (mean +-
standard deviation over the seeds of test AUC, the per-seed figures, ours - library with Welch's 95%
interval over the seeds, validation AUC, test GAUC and logloss) and writes
it with the raw numbers to OUT/reference.md and OUT/reference.json, atomically. The library run
holds its splits in memory (tables of a few million rows). Needs deepctr-torch
(``pip install deepctr-torch==0.3.0``; in the dev extra).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from data_pipeline.reader import ParquetBatchReader
from data_pipeline.spec import DataError, DatasetSpec, atomic_write_text
from launch.compare import split_trainer_args
from launch.report import spread
from store.metrics import auc, gauc_and_users, logloss
from store.models.config import ModelConfig
from store.records import RunSummary

LABELS = {
    "dnn": "DNN",
    "widedeep": "Wide&Deep",
    "deepfm": "DeepFM",
    "fm": "FM",
    "dcn": "DCN-v2",
    "autoint": "AutoInt",
}
"""The zoo models the reference library reproduces (``library_model``), with their table labels."""
MODELS = tuple(LABELS)
EVAL_BATCH = 8192


# --------------------------------------------------------------------------------------------------
# The rows, as the trainer reads them
# --------------------------------------------------------------------------------------------------
def read_split(
    data: str, split: str, spec: DatasetSpec
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(inputs, labels, users) of one split: every sparse ID shifted by one (0 is the padding of the
    library's list pooling), list features padded to their longest list, each dense column by name."""
    reader = ParquetBatchReader(data, split, 65536, spec=spec, shuffle=False, drop_remainder=False)
    singles: dict[str, list[np.ndarray]] = {f.name: [] for f in spec.sparse if not f.multi}
    lists: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {f.name: [] for f in spec.sparse if f.multi}
    dense, labels, users = [], [], []
    for batch in reader:
        per_key = batch.sparse.to_dict()
        for name in singles:
            singles[name].append(per_key[name].values().numpy() + 1)
        for name in lists:
            jt = per_key[name]
            lists[name].append((jt.values().numpy() + 1, jt.lengths().numpy()))
        dense.append(batch.dense.numpy())
        labels.append(batch.labels.numpy())
        users.append(batch.user_ids.numpy())
    if not labels:
        raise DataError(f"{data}/{split}: no rows")
    x: dict[str, np.ndarray] = {name: np.concatenate(v) for name, v in singles.items()}
    for name, pieces in lists.items():
        values = np.concatenate([v for v, _ in pieces])
        lengths = np.concatenate([n for _, n in pieces]).astype(np.int64)
        width = max(1, int(lengths.max()))
        padded = np.zeros((len(lengths), width), dtype=np.int64)
        rows = np.repeat(np.arange(len(lengths)), lengths)
        cols = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        padded[rows, cols] = values
        x[name] = padded
    dense_all = np.concatenate(dense)
    for j, name in enumerate(spec.dense):
        x[name] = dense_all[:, j]
    return x, np.concatenate(labels), np.concatenate(users)


def feature_columns(spec: DatasetSpec, widths: dict[str, int], dim: int, history: str) -> list:
    """deepctr-torch feature columns for the spec: one table per feature (vocab + 1 rows: row 0 is
    padding), a list feature that refers to the item reading the item's table when ``history`` is
    'shared', and each dense column as a 1-wide DenseFeat."""
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat

    item = spec.item_id if spec.item_id in spec.sparse_names else ""
    columns: list = []
    for f in spec.sparse:
        if not f.multi:
            columns.append(SparseFeat(f.name, f.vocab_size + 1, embedding_dim=dim))
            continue
        shared = history == "shared" and f.item_ref and item
        table = item if shared else f.name
        vocab = spec.feature(item).vocab_size if shared else f.vocab_size
        columns.append(
            VarLenSparseFeat(
                SparseFeat(f.name, vocab + 1, embedding_dim=dim, embedding_name=table),
                maxlen=widths[f.name],
                combiner="mean",
            )
        )
    columns += [DenseFeat(name, 1) for name in spec.dense]
    return columns


def library_model(name: str, columns: list, seed: int, cfg: ModelConfig):
    from deepctr_torch.models import DCN, WDL, AutoInt, DeepFM

    mlp = tuple(cfg.mlp_dims)
    if name == "dnn":  # WDL without its wide part
        return WDL([], columns, dnn_hidden_units=mlp, seed=seed)
    if name == "widedeep":
        return WDL(columns, columns, dnn_hidden_units=mlp, seed=seed)
    if name == "deepfm":
        return DeepFM(columns, columns, dnn_hidden_units=mlp, seed=seed)
    if name == "fm":  # DeepFM without the deep tower: first order + pairwise
        return DeepFM(columns, columns, dnn_hidden_units=(), seed=seed)
    if name == "dcn":
        return DCN(
            [], columns, cross_num=cfg.dcn.cross_layers, cross_parameterization="matrix", dnn_hidden_units=mlp,
            seed=seed,
        )  # fmt: skip
    if name == "autoint":
        return AutoInt(
            [], columns, att_layer_num=cfg.autoint.layers, att_head_num=cfg.autoint.heads, dnn_hidden_units=(),
            seed=seed,
        )  # fmt: skip
    raise ValueError(f"unknown model {name!r}")


def scores(model, x: dict[str, np.ndarray], labels: np.ndarray, users: np.ndarray) -> dict:
    p = torch.from_numpy(model.predict(x, batch_size=EVAL_BATCH).reshape(-1)).double()
    y = labels.astype(np.float64)
    logits = torch.logit(p, eps=1e-7).numpy()
    g, n_users = gauc_and_users(users, logits, y)
    return {
        "auc": auc(logits, y),
        "gauc": g,
        "gauc_users": n_users,
        "logloss": logloss(logits, y),
        "rows": len(y),
    }


def run_library(data: str, model_name: str, seed: int, epochs: int, batch_size: int, history: str) -> dict:
    """Train deepctr-torch's model for ``epochs`` passes; the test scores of the best validation epoch."""
    spec = DatasetSpec.load(data)
    splits = {s: read_split(data, s, spec) for s in ("train", "valid", "test")}
    widths = {
        f.name: max(splits[s][0][f.name].shape[1] for s in splits) for f in spec.sparse if f.multi
    }  # fmt: skip
    for s in splits:  # every split padded to the same width
        for name, width in widths.items():
            arr = splits[s][0][name]
            if arr.shape[1] < width:
                splits[s][0][name] = np.pad(arr, ((0, 0), (0, width - arr.shape[1])))
    if model_name == "autoint":  # its output layer counts fields by tables: a shared table breaks it
        history = "own"
    cfg = ModelConfig()
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = library_model(model_name, feature_columns(spec, widths, cfg.embedding_dim, history), seed, cfg)
    model.compile("adam", "binary_crossentropy")
    x, y, _ = splits["train"]
    start = time.perf_counter()
    epochs_out, best = [], None
    for epoch in range(epochs):
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
        valid = scores(model, *splits["valid"])
        test = scores(model, *splits["test"])
        epochs_out.append({"epoch": epoch, "valid": valid, "test": test})
        if best is None or valid["auc"] > best["valid"]["auc"]:
            best = epochs_out[-1]
    import deepctr_torch

    return {
        "model": model_name, "seed": seed, "best_epoch": best["epoch"], "valid": best["valid"],
        "test": best["test"], "epochs": epochs_out, "wall_s": time.perf_counter() - start,
        "library": f"deepctr-torch {deepctr_torch.__version__}", "history": history,
        "batch_size": batch_size,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Runs and the table
# --------------------------------------------------------------------------------------------------
def ours_result(run: Path) -> dict | None:
    path = run / "summary.json"
    if not path.is_file():
        return None
    s = RunSummary.from_dict(json.loads(path.read_text()))
    best = s.best.value if s.best is not None else None
    return {"valid": {"auc": best}, "test": s.test.to_dict(), "best_epoch": s.best_epoch}


def library_result(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_job(job: tuple[str, str, int], args: argparse.Namespace, extra: list[str]) -> None:
    arm, model, seed = job
    out = Path(args.out) / arm / model / f"seed{seed}"
    if arm == "ours":
        if ours_result(out) is not None:
            return
        cmd = [sys.executable, "-m", "trainer", "--data", args.data, "--model", model, "--epochs",
               str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(seed), "--out", str(out),
               *extra]  # fmt: skip
    else:
        if library_result(out / "result.json") is not None:
            return
        cmd = [sys.executable, __file__, "--data", args.data, "--out", args.out, "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size), "--history", args.history,
               "--one", f"{model}:{seed}"]  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / f"{out.name}.log"
    print(f"# {arm} {model} seed {seed}", flush=True)
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"{arm} {model} seed {seed} failed (exit {rc}); see {log_path}")


def welch(a: list[float], b: list[float], level: float = 0.95) -> str:
    """mean(a) - mean(b) with Welch's t interval over the seeds ("" for the interval with one seed)."""
    diff = statistics.mean(a) - statistics.mean(b)
    if len(a) < 2 or len(b) < 2:
        return f"{diff:+.4f}"
    from scipy.stats import t

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return f"{diff:+.4f}"
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t.ppf(0.5 + level / 2, dof) * (va + vb) ** 0.5
    return f"{diff:+.4f} [{diff - half:+.4f}, {diff + half:+.4f}]"


def per_arm(arms: dict[str, list[dict]], split: str, metric: str) -> dict[str, list[float]]:
    """{arm: [the metric of that split, one per seed]}."""
    return {arm: [r[split][metric] for r in runs] for arm, runs in arms.items()}


def table(results: dict[str, dict[str, list[dict]]], seeds: list[int], history: str) -> str:
    lines = [
        f"| model | ours: test AUC | library: test AUC | ours - library [95%] | ours, seeds {','.join(map(str, seeds))} "
        "| library, per seed | valid AUC, ours / library | test GAUC, ours / library "
        "| test logloss, ours / library |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, arms in results.items():
        a, v = per_arm(arms, "test", "auc"), per_arm(arms, "valid", "auc")
        g, ll = per_arm(arms, "test", "gauc"), per_arm(arms, "test", "logloss")
        lines.append(
            f"| {LABELS[model]} | {spread(a['ours'])} | {spread(a['library'])} | {welch(a['ours'], a['library'])} "
            f"| {' '.join(f'{x:.4f}' for x in a['ours'])} | {' '.join(f'{x:.4f}' for x in a['library'])} "
            f"| {statistics.mean(v['ours']):.4f} / {statistics.mean(v['library']):.4f} "
            f"| {statistics.mean(g['ours']):.4f} / {statistics.mean(g['library']):.4f} "
            f"| {statistics.mean(ll['ours']):.4f} / {statistics.mean(ll['library']):.4f} |"
        )
    lines.append("")
    lines.append(
        f"Library list features that refer to the item: `--history {history}`. The interval of ours - library "
        "is Welch's t interval over the seeds (the two arms' seeds are not paired)."
    )
    return "\n".join(lines)


def parse_list(p: argparse.ArgumentParser, flag: str, text: str, cast=str) -> list:
    try:
        out = [cast(s.strip()) for s in text.split(",") if s.strip()]
    except ValueError:
        p.error(f"{flag}: expected a comma-separated list, got {text!r}")
    if not out:
        p.error(f"{flag}: empty")
    return out


def main(argv: list[str] | None = None) -> int:
    argv, extra = split_trainer_args(argv)
    p = argparse.ArgumentParser(prog="benchmarks/reference_library.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a dataset folder (with spec.json), as the trainer takes")
    p.add_argument("--out", default="runs/reference", help="output folder")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {','.join(MODELS)}")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--history", choices=("shared", "own"), default="shared")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--one", help=argparse.SUPPRESS)  # MODEL:SEED, the library run of one job
    args = p.parse_args(argv)
    if not Path(args.data, "spec.json").is_file():
        p.error(f"--data {args.data!r}: no spec.json there")
    if args.epochs < 1 or args.batch_size < 1 or args.jobs < 1:
        p.error("--epochs, --batch-size and --jobs must be >= 1")
    if args.one:
        model, _, seed = args.one.partition(":")
        result = run_library(args.data, model, int(seed), args.epochs, args.batch_size, args.history)
        out = Path(args.out) / "library" / model / f"seed{seed}" / "result.json"
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        print(f"test AUC {result['test']['auc']:.4f} (best epoch {result['best_epoch']})")
        return 0
    models = parse_list(p, "--models", args.models)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from {','.join(MODELS)}")
    seeds = parse_list(p, "--seeds", args.seeds, int)
    try:
        import deepctr_torch  # noqa: F401
    except ImportError:
        print("Error: deepctr-torch is not installed (pip install deepctr-torch==0.3.0)", file=sys.stderr)
        return 2
    jobs = [(arm, m, s) for m in models for s in seeds for arm in ("library", "ours")]
    with ThreadPoolExecutor(args.jobs) as pool:
        failed = [
            str(e) for e in (f.exception() for f in [pool.submit(run_job, j, args, extra) for j in jobs]) if e
        ]
    if failed:
        print("Error: " + "\n".join(failed), file=sys.stderr)
        return 1
    out = Path(args.out)
    results = {
        m: {
            "ours": [ours_result(out / "ours" / m / f"seed{s}") for s in seeds],
            "library": [library_result(out / "library" / m / f"seed{s}" / "result.json") for s in seeds],
        }
        for m in models
    }
    text = table(results, seeds, args.history)
    print(text, flush=True)
    atomic_write_text(out / "reference.md", text + "\n")
    atomic_write_text(out / "reference.json", json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'reference.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
