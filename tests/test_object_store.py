"""Datasets and SID tables in object storage: a real S3-compatible server (moto's standalone server,
started on 127.0.0.1 by the test, with IAM credentials checked) holds a small synthetic dataset;
inspect, tokenize and train read it from s3://... and give the same results as the local copy; the
generator and a converter write straight to s3://...; a missing bucket, a missing key and wrong
credentials each exit 2 with a message naming the URI; no secret reaches a file or the console.
Also the location helpers of data_pipeline.fs and fsspec's memory:// store (no server needed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from data_pipeline import fs
from data_pipeline.spec import DataError, DatasetSpec

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
BUCKET = "store-data"
GEN = {"items": 300, "users": 200, "seed": 0, "progress": False}


# -- location helpers (no server) -----------------------------------------------------------------------
def test_join_basename_parent_keep_scheme_bucket_and_query():
    assert fs.join("s3://b/data?region=eu-west-1", "train", "p.parquet") == (
        "s3://b/data/train/p.parquet?region=eu-west-1"
    )
    assert fs.join("gs://b", "x") == "gs://b/x"
    assert fs.join("data/syn", "train") == os.path.join("data/syn", "train")
    assert fs.basename("s3://b/data/") == "data" and fs.basename("data/syn/") == "syn"
    assert fs.parent("s3://b/data/train") == "s3://b/data"
    assert fs.is_local("file:///tmp/x") and fs.is_local("rel/x") and not fs.is_local("hdfs://nn:8020/x")
    assert fs.local_path("file:///tmp/x") == "/tmp/x"


@pytest.mark.parametrize(
    "uri", ["s3://AKIAX:hunter2@b/data", "s3://b/data?secret_key=hunter2", "gs://b/x?token=t"]
)
def test_a_location_carrying_a_secret_is_refused_without_echoing_it(uri):
    with pytest.raises(DataError, match="carries credentials") as err:
        fs.resolve(uri)
    assert "hunter2" not in str(err.value) and "token=t" not in str(err.value)


def test_fsspec_store_round_trip(tmp_path):
    """A scheme pyarrow has no filesystem for goes through fsspec (memory://, in this process)."""
    from data_pipeline.inspect import inspect_dataset
    from data_pipeline.reader import ParquetBatchReader
    from data_pipeline.synthetic import generate_dataset

    generate_dataset(tmp_path / "syn", 600, **GEN)
    spec = generate_dataset("memory://fs-test/syn", 600, **GEN)
    assert spec.fingerprint == DatasetSpec.load(tmp_path / "syn").fingerprint  # same shards, same sizes
    assert inspect_dataset("memory://fs-test/syn") == inspect_dataset(tmp_path / "syn")
    remote = [b.labels.tolist() for b in ParquetBatchReader("memory://fs-test/syn", "train", 50, seed=3)]
    local = [b.labels.tolist() for b in ParquetBatchReader(tmp_path / "syn", "train", 50, seed=3)]
    assert remote == local and len(remote) == 480 // 50
    with pytest.raises(DataError, match="earlier dataset .* pass --overwrite"):
        generate_dataset("memory://fs-test/syn", 600, **GEN)


# -- the S3 server ----------------------------------------------------------------------------------------
@dataclass
class S3:
    endpoint: str
    key_id: str
    secret: str
    local: Path  # the local copy of the dataset uploaded to s3://BUCKET/syn
    work: Path

    def env(self, **override: str) -> dict:
        """The environment of a command that reads the store (credentials the standard AWS way)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env |= {
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        return env | override

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret,
        )  # fmt: skip

    def upload(self, folder: Path, prefix: str) -> None:
        """Every file under ``folder`` to s3://BUCKET/prefix/..., with boto3 (not the code under test)."""
        client = self.client()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 with authentication on: the first three requests (creating an IAM
    user, its policy and its access key) are the only unauthenticated ones; every later request must be
    signed with that key. A bucket holds the dataset ``syn``, uploaded file by file with boto3."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'moto[server]')")
    boto3 = pytest.importorskip("boto3")
    from data_pipeline.synthetic import generate_dataset

    port = _free_port()
    server = subprocess.Popen(
        [PY, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "moto server did not start"
                time.sleep(0.1)
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        iam = boto3.client("iam", aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap", **admin)
        iam.create_user(UserName="trainer")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="trainer", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="trainer")["AccessKey"]
        work = tmp_path_factory.mktemp("object_store")
        ctx = S3(endpoint, key["AccessKeyId"], key["SecretAccessKey"], work / "syn", work)
        ctx.client().create_bucket(Bucket=BUCKET)
        generate_dataset(ctx.local, 2000, **GEN)
        ctx.upload(ctx.local, "syn")
        with pytest.MonkeyPatch.context() as mp:  # in-process readers use the same environment
            for name in [k for k in os.environ if k.startswith("AWS_")]:
                mp.delenv(name)
            for name, value in ctx.env().items():
                if name.startswith("AWS_"):
                    mp.setenv(name, value)
            yield ctx
    finally:
        server.terminate()
        server.wait(timeout=30)


def run(s3: S3, *cmd: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, *cmd], env=env or s3.env(), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _no_secret(s3: S3, *texts: str) -> None:
    for text in texts:
        assert s3.secret not in text


# -- reading -------------------------------------------------------------------------------------------
def test_inspect_and_reader_from_s3_match_the_local_copy(s3):
    from data_pipeline.reader import ParquetBatchReader

    uri = f"s3://{BUCKET}/syn"
    remote = run(s3, "-m", "data_pipeline", "inspect", uri, "--json")
    local = run(s3, "-m", "data_pipeline", "inspect", str(s3.local), "--json")
    assert remote.returncode == 0, remote.stderr[-2000:]
    assert json.loads(remote.stdout) == json.loads(local.stdout)
    assert json.loads(remote.stdout)["rows"] == {"train": 1600, "valid": 200, "test": 200}
    _no_secret(s3, remote.stdout, remote.stderr)

    # the reader streams row groups over HTTP range reads; the same shuffled batches as from disk,
    # also through forked DataLoader workers (each builds its own S3 client)
    for workers in (0, 2):
        a = ParquetBatchReader(uri, "train", 64, seed=5, num_workers=workers)
        b = ParquetBatchReader(s3.local, "train", 64, seed=5, num_workers=workers)
        rows_a = [(x.labels.tolist(), x.item_ids.tolist()) for x in a]
        assert rows_a == [(x.labels.tolist(), x.item_ids.tolist()) for x in b] and len(rows_a) == 25


@pytest.mark.slow
def test_tokenize_and_train_from_s3_give_the_local_results(s3):
    """The tokenizer (content SIDs for the item, FM-learned ones for the user: a train-split pass)
    and the trainer (STORE, with the SID table in the bucket too) read only s3://; SID codes and test
    metrics equal those of the local copy, and no secret is written or printed."""
    import pyarrow.parquet as pq

    tok = ["-m", "store.tokenizer", "--num-sids", "3", "--codebook-size", "16", "--min-steps", "40",
           "--epochs", "2", "--fm-epochs", "1", "--threads", "1", "--no-progress"]  # fmt: skip
    sids = {}
    for name, data in (("s3", f"s3://{BUCKET}/syn"), ("local", str(s3.local))):
        sids[name] = s3.work / f"sids_{name}"
        r = run(s3, *tok, "--data", data, "--out", str(sids[name]))
        assert r.returncode == 0, r.stderr[-3000:]
        _no_secret(s3, r.stdout, r.stderr)
    for file in ("sid_table.parquet", "sids_user_id.parquet"):
        assert pq.read_table(sids["s3"] / file).equals(pq.read_table(sids["local"] / file))
    meta = (sids["s3"] / "meta.json").read_text()
    assert json.loads(meta)["dataset"]["fingerprint"] == DatasetSpec.load(s3.local).fingerprint
    _no_secret(s3, meta)

    s3.upload(sids["local"], "sids")

    summaries = {}
    for name, data, sid_dir in (
        ("s3", f"s3://{BUCKET}/syn", f"s3://{BUCKET}/sids"),
        ("local", str(s3.local), str(sids["local"])),
    ):
        out = s3.work / f"run_{name}"
        r = run(
            s3, "-m", "trainer", "--data", data, "--sids", sid_dir, "--model", "store", "--out", str(out),
            "--batch-size", "64", "--max-steps", "15", "--model.num_layers", "1", "--logging.progress",
            "false", "--logging.tensorboard", "false", "--eval.every_steps", "15",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        _no_secret(s3, r.stdout, r.stderr, *(p.read_text() for p in out.glob("*.json")))
        summaries[name] = json.loads((out / "summary.json").read_text())
    assert summaries["s3"]["steps"] == summaries["local"]["steps"] == 15
    assert summaries["s3"]["config"]["data"] == f"s3://{BUCKET}/syn"
    for key in ("auc", "gauc", "logloss", "tail_auc"):
        assert summaries["s3"][key] == summaries["local"][key], key
    assert summaries["s3"]["dataset"]["fingerprint"] == summaries["local"]["dataset"]["fingerprint"]


COMPARE = ["--epochs", "1", "--batch-size", "128", "--tokenizer.num-sids", "2", "--tokenizer.codebook-size", "8",
           "--tokenizer.min-steps", "10", "--high-card", "none", "--max-steps", "8",
           "--trainer.model.embedding-dim", "8", "--trainer.model.num-layers", "1", "--trainer.eval.max-batches", "2",
           "--trainer.logging.tensorboard", "false"]  # fmt: skip
"""A tiny comparison: the item's content SIDs, then 8 steps of each arm."""


def tokenizer_section(report_md: str) -> str:
    return report_md.split("## Tokenizer")[1].split("## Plots")[0]


@pytest.mark.slow
def test_compare_and_report_from_s3_give_the_local_results(s3, capsys):
    """launch.compare reads the dataset only from s3:// (tokenizer, both runs, the report's setup line
    and Bayes-optimal row) and gets the SID codes and test metrics of the local copy; launch.report
    reads a SID folder from s3:// too."""
    import pyarrow.parquet as pq

    from launch import report

    outs = {}
    for name, data in (("s3", f"s3://{BUCKET}/syn"), ("local", str(s3.local))):
        outs[name] = s3.work / f"cmp_{name}"
        r = run(s3, "-m", "launch.compare", "--data", data, "--out", str(outs[name]), *COMPARE)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        _no_secret(s3, r.stdout, r.stderr, *(p.read_text() for p in outs[name].rglob("*.log")))
    assert pq.read_table(outs["s3"] / "sids" / "sid_table.parquet").equals(
        pq.read_table(outs["local"] / "sids" / "sid_table.parquet")
    )
    for model in ("id", "store"):
        remote, local = (json.loads((outs[n] / model / "summary.json").read_text()) for n in ("s3", "local"))
        assert remote["config"]["data"] == f"s3://{BUCKET}/syn" and remote["steps"] == local["steps"] == 8
        for key in ("auc", "gauc", "logloss", "tail_auc"):
            assert remote[key] == local[key], (model, key)
    md = {n: (outs[n] / "report" / "report.md").read_text() for n in outs}
    assert f"- data: `s3://{BUCKET}/syn` (synthetic; rows train 1,600, valid 200, test 200)" in md["s3"]
    ceiling = [line for line in md["s3"].splitlines() if line.startswith("| Bayes-optimal")]
    assert ceiling and ceiling[0] in md["local"]  # the true click probability, read from the bucket

    # the report from local run folders with the SID table in the bucket: the same tokenizer section
    s3.upload(outs["local"] / "sids", "cmp_sids")
    argv = ["--run", f"id={outs['s3'] / 'id'}", "--run", f"store={outs['s3'] / 'store'}",
            "--sids", f"s3://{BUCKET}/cmp_sids", "--out", str(s3.work / "report_s3_sids")]  # fmt: skip
    assert report.main(argv) == 0, capsys.readouterr().err
    tokenizer = tokenizer_section((s3.work / "report_s3_sids" / "report.md").read_text())
    assert f"From `s3://{BUCKET}/cmp_sids/meta.json`: method opmq, K = 2" in tokenizer
    assert "| item_id | content |" in tokenizer
    # past the "From `<where>`" line, the figures are those of the local report
    assert tokenizer.split("\n\n", 2)[2] == tokenizer_section(md["local"]).split("\n\n", 2)[2]


@pytest.mark.parametrize(
    "case, uri, message",
    [
        ("missing bucket", "s3://no-such-bucket/syn", "bucket 'no-such-bucket' does not exist"),
        ("missing key", f"s3://{BUCKET}/no-such-dataset", "dataset folder does not exist (no such key"),
    ],
)
def test_compare_and_report_store_errors_exit_2_naming_the_uri(s3, tmp_path, capsys, case, uri, message):
    from launch import compare, report

    assert compare.main(["--data", uri, "--out", str(tmp_path / "cmp"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{uri}: {message}" in err and "Traceback" not in err, err
    assert not (tmp_path / "cmp").exists()  # refused before anything is written
    # --sids in the store, with the dataset local
    sids = uri.replace("/syn", "/sids").replace("no-such-dataset", "no-such-sids")
    argv = ["--data", str(s3.local), "--sids", sids, "--out", str(tmp_path / "cmp")]
    assert compare.main(argv) == 2
    err = capsys.readouterr().err
    assert sids in err and "Traceback" not in err, err
    # launch.report from local run folders that name the dataset: a SID folder in a missing bucket
    # is an error, not a silently empty section
    if case == "missing bucket":
        for arm in ("id", "store"):
            (tmp_path / arm).mkdir()
            summary = {"auc": 0.7, "config": {"data": str(s3.local), "epochs": 1}}
            (tmp_path / arm / "summary.json").write_text(json.dumps(summary))
        argv = ["--run", f"id={tmp_path / 'id'}", "--run", f"store={tmp_path / 'store'}", "--sids", sids,
                "--out", str(tmp_path / "report")]  # fmt: skip
        assert report.main(argv) == 2
        err = capsys.readouterr().err
        assert f"error: {sids}" in err and message in err and "Traceback" not in err, err


# -- writing -------------------------------------------------------------------------------------------
def test_generate_and_convert_write_to_s3(s3, tmp_path):
    """Output URIs: the generator's shards are the uploaded local ones byte for byte (same fingerprint);
    `convert table` to s3:// writes the dataset it writes locally; a non-empty prefix is refused."""
    uri = f"s3://{BUCKET}/generated"
    r = run(s3, "-m", "data_pipeline", "generate", "--out", uri, "--rows", "2000", "--items", "300",
            "--users", "200", "--seed", "0", "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert DatasetSpec.load(uri).fingerprint == DatasetSpec.load(s3.local).fingerprint
    for split in ("train", "test", "items"):
        local = sorted((s3.local / split).glob("*.parquet"))
        assert [e.base_name for e in fs.list_dir(fs.join(uri, split))] == [p.name for p in local]
        for path in local:
            assert fs.read_bytes(fs.join(uri, split, path.name)) == path.read_bytes()
    again = run(s3, "-m", "data_pipeline", "generate", "--out", uri, "--rows", "100", "--no-progress")
    assert again.returncode == 2 and f"--out {uri}: holds an earlier dataset" in again.stderr

    csv = tmp_path / "clicks.csv"
    csv.write_text("clicked,price,city,uid,sku,ts\n" + "".join(
        f"{i % 2},{i * 0.25},c{i % 5},u{i % 7},{i % 11},{1000 + i}\n" for i in range(300)
    ))  # fmt: skip
    table = ["convert", "table", "--src", str(csv), "--label", "clicked", "--user", "uid", "--item", "sku",
             "--time", "ts"]  # fmt: skip
    outs = {"s3": f"s3://{BUCKET}/converted", "local": str(tmp_path / "converted")}
    for out in outs.values():
        r = run(s3, "-m", "data_pipeline", *table, "--out", out)
        assert r.returncode == 0, r.stderr[-2000:]
    assert DatasetSpec.load(outs["s3"]) == DatasetSpec.load(outs["local"])


# -- errors -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case, uri, message",
    [
        ("missing bucket", "s3://no-such-bucket/syn", "bucket 'no-such-bucket' does not exist"),
        ("missing key", f"s3://{BUCKET}/no-such-dataset", "dataset folder does not exist (no such key"),
        ("wrong credentials", f"s3://{BUCKET}/syn", "access denied"),
    ],
)
def test_store_errors_exit_2_naming_the_uri(s3, tmp_path, case, uri, message):
    env = s3.env(AWS_SECRET_ACCESS_KEY="not-the-secret") if case == "wrong credentials" else s3.env()
    r = run(s3, "-m", "data_pipeline", "inspect", uri, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"error: {uri}: {message}" in r.stderr
    assert "Traceback" not in r.stderr

    out = str(tmp_path / "run")
    r = run(s3, "-m", "trainer", "--data", uri, "--model", "dnn", "--out", out, env=env)
    assert r.returncode == 2 and uri in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    if case != "missing key":  # the trainer's flag check says the folder is missing in its own words
        assert message in r.stderr

    if case != "wrong credentials":
        return
    r = run(s3, "-m", "store.tokenizer", "--data", uri, "--out", str(tmp_path / "sids"), env=env)
    assert r.returncode == 2 and uri in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    _no_secret(s3, r.stdout, r.stderr)


def test_a_missing_shard_object_names_its_key(s3):
    """Keys deleted under a dataset that is otherwise there: the errors name the missing prefix / key."""
    from data_pipeline.reader import ParquetBatchReader

    s3.upload(s3.local, "broken")
    client = s3.client()
    client.delete_object(Bucket=BUCKET, Key="broken/valid/part-00000.parquet")
    # an object store has no empty folders: the split's prefix is gone with its only object
    with pytest.raises(DataError, match=rf"s3://{BUCKET}/broken/valid: folder does not exist \(no such key"):
        ParquetBatchReader(f"s3://{BUCKET}/broken", "valid", 10)
    client.delete_object(Bucket=BUCKET, Key="broken/spec.json")
    with pytest.raises(DataError, match=rf"s3://{BUCKET}/broken/spec.json: missing spec file"):
        DatasetSpec.load(f"s3://{BUCKET}/broken")
