"""CheckpointManager: atomic rename, pruning, newest-complete lookup, no unpickling of arbitrary objects."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from trainer.checkpoint import (
    CheckpointError,
    CheckpointManager,
    SafeFileSystemReader,
    rng_state,
    set_rng_state,
)


def state(v: float) -> dict:
    return {"model": {"w": torch.full((4, 3), v)}, "train": {"step": torch.tensor(int(v))}}


def test_save_load_prune_and_latest(tmp_path):
    ck = CheckpointManager(tmp_path, keep=2)
    for step in (3, 6, 9):
        ck.save(step, state(float(step)))
    assert [s for s, _ in ck.complete()] == [6, 9]  # oldest pruned
    assert ck.latest() == tmp_path / "checkpoints" / "step_9"
    target = state(0.0)
    ck.load(ck.latest(), target)
    assert torch.equal(target["model"]["w"], torch.full((4, 3), 9.0))
    assert int(target["train"]["step"]) == 9
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_half_written_checkpoint_is_ignored(tmp_path):
    ck = CheckpointManager(tmp_path, keep=3)
    ck.save(3, state(3.0))
    # A run killed while writing leaves a temp folder, and a step folder without .metadata is incomplete.
    (tmp_path / "checkpoints" / ".tmp-step_6").mkdir()
    (tmp_path / "checkpoints" / "step_9").mkdir()
    assert ck.latest() == tmp_path / "checkpoints" / "step_3"
    ck.save(6, state(6.0))  # the stale temp folder is replaced
    assert ck.latest() == tmp_path / "checkpoints" / "step_6"


def test_only_tensors_are_saved(tmp_path):
    with pytest.raises(TypeError, match="train.step is a int"):
        CheckpointManager(tmp_path, keep=1).save(1, {"train": {"step": 3}})


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_metadata_with_foreign_objects_is_refused(tmp_path):
    ck = CheckpointManager(tmp_path, keep=1)
    path = ck.save(1, state(1.0))
    (path / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="builtins.print"):
        SafeFileSystemReader(str(path)).read_metadata()
    with pytest.raises(CheckpointError):
        ck.load(path, state(0.0))


def test_rng_state_round_trip():
    torch.manual_seed(1)
    np.random.seed(2)
    saved = rng_state()
    a = (torch.rand(3), np.random.rand(3))
    set_rng_state({k: v.clone() for k, v in saved.items()})
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert all(isinstance(v, torch.Tensor) for v in saved.values())
