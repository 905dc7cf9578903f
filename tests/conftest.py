"""Fixtures shared by the test files: commands run in this process (one import of torch and TorchRec
for the whole session instead of one per command), and small datasets generated once per session."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

MAINS = {
    "data_pipeline": "data_pipeline.__main__",
    "trainer": "trainer.__main__",
    "store.tokenizer": "store.tokenizer.pipeline",
    "launch.compare": "launch.compare",
    "launch.frontier": "launch.frontier",
    "launch.report": "launch.report",
}
"""``python -m NAME`` -> the module whose main() it runs."""


@dataclass
class Done:
    returncode: int
    stderr: str


@pytest.fixture
def run(capsys, monkeypatch):
    """run("-m", NAME, *argv, cwd=DIR): the command's exit code and stderr, as a user would see them
    (its main() called in this process, on one thread as a subprocess with OMP_NUM_THREADS=1)."""

    def call(*args: str, cwd: Path | None = None) -> Done:
        assert args[0] == "-m"
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            code = importlib.import_module(MAINS[args[1]]).main(list(args[2:]))
        except SystemExit as e:
            code = e.code
        finally:
            torch.set_num_threads(threads)
        return Done(code, capsys.readouterr().err)

    return call


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """1,200 synthetic rows (200 items, 60 users): a dataset for tests that need one to exist and to
    train a few steps on, not to learn anything. Read only: a test that changes a dataset copies it."""
    from data_pipeline.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tiny") / "data"
    generate_dataset(root, 1200, items=200, users=60, seed=0, progress=False)
    return root
