"""Output folders (data_pipeline/outdir.py) through every command that writes one: nothing the user
wrote is deleted, an earlier output is never restarted over or served for other inputs, object-store
locations are refused by name where the output must be local. Each case was a bug (issue 29)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from data_pipeline import outdir
from data_pipeline.errors import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tiny_data) -> Path:
    return tiny_data


@pytest.fixture(scope="module")
def other_data(tmp_path_factory) -> Path:
    from data_pipeline.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("outputs") / "other"
    generate_dataset(root, 1000, items=200, users=60, seed=5, progress=False)
    return root


# -- the helper ------------------------------------------------------------------------------------
def test_claim_rules(tmp_path):
    out = tmp_path / "o"
    first = outdir.claim(out, "cmd")
    first.add("result.txt")
    (out / "result.txt").write_text("1")
    (out / "mine.txt").write_text("user")
    with pytest.raises(DataError, match=r"holds an earlier cmd output \(result.txt\); pass --overwrite"):
        outdir.claim(out, "cmd")
    kept = outdir.claim(out, "cmd", resume=True)
    assert kept.previous is not None and (out / "result.txt").exists()
    again = outdir.claim(out, "cmd", overwrite=True)
    assert not (out / "result.txt").exists() and (out / "mine.txt").read_text() == "user"
    assert again.kept == ["mine.txt"]
    with pytest.raises(DataError, match=r"files other did not write \(written by cmd\): mine.txt"):
        outdir.claim(out, "other")
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="exists and is a file"):
        outdir.claim(tmp_path / "f", "cmd")
    with pytest.raises(DataError, match="must be a local folder"):
        outdir.claim("s3://bucket/x", "cmd", local=True)
    # written before records: known by its marker and owned names; the rest is the user's
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("spec.json", "train", "notes.md"):
        (legacy / name).write_text("")
    replaced = outdir.claim(legacy, "dataset", overwrite=True, legacy="spec.json", owned=("train",))
    assert sorted(p.name for p in legacy.iterdir()) == [".store-output.json", "notes.md"]
    assert replaced.kept == ["notes.md"]
    derived = outdir.claim(tmp_path / "r", "report", replace=True)
    derived.add("report.md")
    (tmp_path / "r" / "report.md").write_text("old")
    outdir.claim(tmp_path / "r", "report", replace=True)  # an earlier report is simply replaced
    assert not (tmp_path / "r" / "report.md").exists()


def test_claim_refuses_a_folder_it_cannot_write(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes anywhere: ask as a user would be answered
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked)
    with pytest.raises(DataError, match=f"cannot write there \\({locked}: permission denied"):
        outdir.claim(locked / "out", "cmd", local=True)
    assert not (locked / "out").exists()


def test_differences_name_each_changed_leaf():
    before = {"flags": {"epochs": 2, "dims": [64, 32]}, "data": "a"}
    now = {"flags": {"epochs": 3, "dims": (64, 32)}, "data": "a"}
    assert outdir.differences(before, now) == ["flags.epochs: 2 -> 3"]


# -- generate / convert --------------------------------------------------------------------------------
def test_generate_overwrite_keeps_files_it_did_not_write(run, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "notes.txt").write_text("keep")
    gen = (
        "-m",
        "data_pipeline",
        "generate",
        "--rows",
        "500",
        "--items",
        "200",
        "--users",
        "50",
        "--no-progress",
    )
    refused = run(*gen, "--out", ".", cwd=work)
    assert refused.returncode == 2 and "notes.txt" in refused.stderr
    assert run(*gen, "--out", ".", "--overwrite", cwd=work).returncode == 0
    assert run(*gen, "--out", ".", "--overwrite", cwd=work).returncode == 0  # replaces its own dataset
    assert (work / "notes.txt").read_text() == "keep" and (work / "spec.json").is_file()
    assert oct(work.stat().st_mode & 0o777) == "0o755"  # the folder's mode is left alone
    assert not [p for p in tmp_path.iterdir() if p.name != "cwd"]  # no temp folders left


# -- trainer -------------------------------------------------------------------------------------------
def train_flags(data: Path, out: Path | str, *extra: str) -> list[str]:
    return [
        "-m", "trainer", "--data", str(data), "--out", str(out), "--batch-size", "64", "--max-steps", "3",
        "--model.mlp_dims", "8", "--model.embedding_dim", "8", "--logging.progress", "false",
        "--logging.tensorboard", "false", "--eval.max_batches", "1", *extra,
    ]  # fmt: skip


def test_trainer_never_restarts_over_a_run(run, data, other_data, tmp_path):
    out = tmp_path / "run"
    assert run(*train_flags(data, out)).returncode == 0
    summary = (out / "summary.json").read_text()
    (out / "notes.md").write_text("mine")
    again = run(*train_flags(data, out))
    assert again.returncode == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr
    assert (out / "summary.json").read_text() == summary  # untouched
    # --resume with another model or other data: a checkpoint that does not fit (4), named
    other = run(*train_flags(data, out, "--model", "deepfm", "--resume"))
    assert other.returncode == 4 and 'model: "dnn" -> "deepfm"' in other.stderr
    moved = run(*train_flags(other_data, out, "--resume"))
    assert moved.returncode == 4 and "checkpoint.data" not in moved.stderr and "data:" in moved.stderr
    # --overwrite: the old run's files go (no stale checkpoint to resume later), the user's stay
    assert run(*train_flags(data, out, "--model", "deepfm", "--overwrite")).returncode == 0
    assert (out / "notes.md").read_text() == "mine"
    assert json.loads((out / "summary.json").read_text())["config"]["model"] == "deepfm"
    assert run(*train_flags(data, out, "--model", "deepfm", "--resume", "--max-steps", "5")).returncode == 0


def test_object_store_out_is_refused_by_name(run, data, tmp_path):
    for cmd in (
        train_flags(data, "s3://bucket/run"),
        ["-m", "store.tokenizer", "--data", str(data), "--out", "s3://bucket/sids"],
        ["-m", "launch.compare", "--data", str(data), "--out", "s3://bucket/cmp"],
    ):
        done = run(*cmd, cwd=tmp_path)
        assert done.returncode == 2 and "s3://bucket" in done.stderr and "local folder" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no ./s3:/bucket/... folder


def test_out_that_is_a_file(run, data, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for cmd in (
        train_flags(data, f),
        ["-m", "store.tokenizer", "--data", str(data), "--out", str(f)],
        ["-m", "launch.compare", "--data", str(data), "--out", str(f)],
        ["-m", "data_pipeline", "generate", "--out", str(f), "--rows", "100"],
    ):
        done = run(*cmd)
        assert done.returncode == 2 and "is a file" in done.stderr, done.stderr[-500:]
    assert f.read_text() == "x"


# -- tokenizer -----------------------------------------------------------------------------------------
def test_tokenizer_keeps_sids_that_runs_were_trained_on(run, data, tmp_path):
    sids, runs = tmp_path / "sids", tmp_path / "store"
    tok = ["-m", "store.tokenizer", "--data", str(data), "--out", str(sids), "--num-sids", "2"]
    tok += ["--codebook-size", "8", "--min-steps", "5", "--min-count", "1", "--no-progress"]
    assert run(*tok).returncode == 0
    table = (sids / "sid_table.parquet").read_bytes()
    again = run(*tok)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert (sids / "sid_table.parquet").read_bytes() == table
    assert run(*train_flags(data, runs, "--model", "store", "--sids", str(sids))).returncode == 0
    assert run(*tok, "--overwrite", "--seed", "1").returncode == 0
    resumed = run(*train_flags(data, runs, "--model", "store", "--sids", str(sids), "--resume"))
    assert resumed.returncode == 4 and "sids:" in resumed.stderr  # the codes changed under the run


# -- report --------------------------------------------------------------------------------------------
def test_report_refuses_duplicates_and_foreign_sids(run, data, other_data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert run(*train_flags(data, out, "--seed", "0" if out == a else "1")).returncode == 0
    report = ["-m", "launch.report", "--out", str(tmp_path / "rep")]
    twice = run(*report, "--run", f"id={a}", "--run", f"id={a}", "--run", f"store={b}")
    assert twice.returncode == 2 and "given twice" in twice.stderr
    sids = tmp_path / "sids"
    tok = ["-m", "store.tokenizer", "--data", str(other_data), "--out", str(sids), "--num-sids", "2"]
    assert (
        run(*tok, "--codebook-size", "8", "--min-steps", "5", "--min-count", "1", "--no-progress").returncode
        == 0
    )
    foreign = run(*report, "--run", f"id={a}", "--run", f"store={b}", "--sids", str(sids))
    assert foreign.returncode == 2 and f"--sids {sids}: built for dataset" in foreign.stderr
    assert run(*report, "--run", f"id={a}", "--run", f"store={b}").returncode == 0
    assert run(*report, "--run", f"id={a}", "--run", f"store={b}").returncode == 0  # its report: replaced
    (tmp_path / "rep" / "mine.txt").write_text("x")
    refused = run(*report, "--run", f"id={a}", "--run", f"store={b}")
    assert refused.returncode == 2 and "mine.txt" in refused.stderr
    assert run(*report, "--run", f"id={a}", "--run", f"store={b}", "--overwrite").returncode == 0
    assert (tmp_path / "rep" / "mine.txt").read_text() == "x"


# -- one path per kind of input --------------------------------------------------------------------------
PARQUET_IO = re.compile(
    r"\bpq\.(ParquetFile|read_table|read_schema|read_metadata|ParquetDataset|write_table|ParquetWriter)\("
    r"|\bpd\.read_parquet\(|\.to_parquet\("
)
"""Opening or writing parquet with pyarrow / pandas directly, not through data_pipeline/fs.py."""


def test_parquet_is_opened_only_through_fs():
    """Shards and run files are opened through data_pipeline/fs.py (spec.open_shard, fs.parquet_file,
    fs.read_table, fs.parquet_writer, ShardWriter), so every command takes URIs and names a broken
    file the same way. A direct pyarrow call elsewhere comes back as the bug this test was written
    for: ``inspect`` printing a traceback for a truncated shard the trainer named."""
    offenders = []
    for package in ("data_pipeline", "store", "trainer", "launch"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path.relative_to(REPO).as_posix() == "data_pipeline/fs.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if PARQUET_IO.search(line.split("#")[0]):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "parquet opened outside data_pipeline/fs.py:\n" + "\n".join(offenders)
