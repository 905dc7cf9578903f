"""Multi-node runs on one machine: two torchrun agents (``--nnodes 2 --nproc-per-node 1``, c10d
rendezvous on localhost, what TorchX's ``-j 2x1`` launches) play two nodes.

- 2 nodes x 1 process give the test metrics of 1 node x 2 processes (same data, seed, flags).
- A node killed mid-run (its agent and worker, SIGKILL) fails the job; the job started again with the
  same command (what a scheduler's ``--max_retries`` does) resumes from the newest checkpoint and
  ends with the metrics of the uninterrupted run, exactly (CPU, gloo).
- ``torchx run -s local_cwd launch/store.py:train -j 2x1 --max_retries 1``: a worker killed mid-run
  is restarted by torchrun (the component sets ``PET_MAX_RESTARTS``), resumes, and the job succeeds
  with the same metrics.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
VENV_BIN = Path(PY).parent
METRICS = ("auc", "gauc", "logloss", "tail_auc")
KILL_AT = 10  # steps: the kill comes once this checkpoint exists (of 75 steps in all)

# What launch/store.py:train passes with --max_retries > 0 and these arguments (the reference runs use
# the same flags, so the torchx job's metrics must equal theirs).
TRAIN = ["--model", "dnn", "--epochs", "3", "--batch-size", "32", "--device", "auto",
         "--sharding.default", "auto", "--resume", "--checkpoint.every", "5"]  # fmt: skip
EXTRA = ["--model.mlp_dims", "16", "--logging.progress", "false", "--logging.tensorboard", "false",
         "--logging.every_steps", "25"]  # fmt: skip


def env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trainer_flags(data: Path, out: Path) -> list[str]:
    return ["--data", str(data), "--out", str(out), *TRAIN, *EXTRA]


def torchrun(nnodes: int, nproc: int, port: int, job: str, flags: list[str]) -> list[str]:
    return [
        PY, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", job,
        "-m", "trainer", *flags,
    ]  # fmt: skip


def start_nodes(flags: list[str], log_dir: Path, job: str) -> list[subprocess.Popen]:
    """Two agents, one per 'node', each in its own process group (so a node can be killed whole)."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            torchrun(2, 1, port, job, flags),
            env=env(),
            cwd=REPO,
            stdout=open(log_dir / f"node{i}.log", "w"),  # noqa: SIM115 (closed with the process)
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for i in range(2)
    ]


def kill_node(agent: subprocess.Popen) -> None:
    """SIGKILL a 'node': its torchrun agent and every process under it (torchrun starts each worker
    in a session of its own, so the agent's process group alone would leave the worker running)."""
    import psutil

    tree = psutil.Process(agent.pid).children(recursive=True)
    os.killpg(agent.pid, signal.SIGKILL)
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.time() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.time())))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            codes.append(p.wait())
    return codes


def logs(log_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(log_dir.glob("*.log")))


def wait_for(path: Path, procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert all(p.poll() is None for p in procs), "a node ended before the kill point"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def assert_same_metrics(summary: dict, ref: dict) -> None:
    assert summary["world_size"] == 2 and summary["steps"] == ref["steps"] == 75
    for key in METRICS:
        assert summary[key] == ref[key], key  # exact on CPU


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from data_pipeline.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("multinode") / "data"
    generate_dataset(root, 2000, items=300, users=200, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def two_nodes(data, tmp_path_factory) -> dict:
    """The uninterrupted reference: 2 nodes x 1 process."""
    out = tmp_path_factory.mktemp("two_nodes") / "run"
    procs = start_nodes(trainer_flags(data, out), out.parent / "logs", "ref")
    assert wait_all(procs, 300) == [0, 0], logs(out.parent / "logs")[-5000:]
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_two_nodes_one_process_each_match_one_node_two_processes(data, two_nodes, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(
        torchrun(1, 2, free_port(), "one-node", trainer_flags(data, out)),
        env=env(), cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    one_node = json.loads((out / "summary.json").read_text())
    assert_same_metrics(one_node, two_nodes)
    assert one_node["test"]["rows"] == two_nodes["test"]["rows"] == 200


@pytest.mark.slow
def test_a_killed_node_and_a_restarted_job_resume_to_the_same_metrics(data, two_nodes, tmp_path):
    pytest.importorskip("psutil")
    out = tmp_path / "run"
    flags = trainer_flags(data, out)
    nodes = start_nodes(flags, tmp_path / "logs1", "killed")
    wait_for(out / "checkpoints" / f"step_{KILL_AT}", nodes, 240)
    kill_node(nodes[1])
    # node 0's worker loses its peer in the next collective and the job fails (the scheduler would
    # tear it down too: give it a minute, then kill it)
    codes = wait_all(nodes, 60)
    assert codes[1] == -signal.SIGKILL and codes[0] != 0
    assert not (out / "summary.json").exists()
    saved = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))
    assert saved and KILL_AT <= saved[-1] < 75

    restarted = start_nodes(flags, tmp_path / "logs2", "killed-retry1")  # the job again, same command
    assert wait_all(restarted, 300) == [0, 0], logs(tmp_path / "logs2")[-5000:]
    assert f"resumed from {out / 'checkpoints' / f'step_{saved[-1]}'}" in logs(tmp_path / "logs2")
    assert_same_metrics(json.loads((out / "summary.json").read_text()), two_nodes)


def _workers(out: Path) -> list[int]:
    """PIDs of the trainer worker processes (not the torchrun agents) writing to ``out``."""
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd[1:4] == ["-u", "-m", "trainer"] and str(out) in cmd:
            pids.append(p.info["pid"])
    return pids


@pytest.mark.slow
def test_torchx_two_nodes_with_max_retries_restarts_a_killed_worker(data, two_nodes, tmp_path):
    pytest.importorskip("psutil")
    out = tmp_path / "run"
    cmd = [
        str(VENV_BIN / "torchx"), "run", "-s", "local_cwd", "-cfg", f"log_dir={tmp_path / 'torchx_logs'}",
        "--wait", f"{REPO / 'launch' / 'store.py'}:train", "--venv", str(VENV_BIN.parent),
        "--data", str(data), "--model", "dnn", "--out", str(out), "-j", "2x1", "--epochs", "3",
        "--batch_size", "32", "--max_retries", "1", "--checkpoint_every", "5", "--rdzv_port", str(free_port()),
        "--name", "two-nodes", "--env", "OMP_NUM_THREADS=1", "--", *EXTRA,
    ]  # fmt: skip
    job = subprocess.Popen(
        cmd, env=env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wait_for(out / "checkpoints" / f"step_{KILL_AT}", [job], 240)
    victims = _workers(out)
    assert len(victims) == 2, victims  # one worker per node
    os.kill(victims[1], signal.SIGKILL)
    try:
        output, _ = job.communicate(timeout=300)
    finally:
        job.kill()
    assert job.returncode == 0, output[-3000:]
    node_logs = "\n".join(
        p.read_text(errors="replace") for p in (tmp_path / "torchx_logs").rglob("stderr.log")
    )
    assert "resumed from" in node_logs, node_logs[-3000:]
    assert_same_metrics(json.loads((out / "summary.json").read_text()), two_nodes)
