"""Issue 29: the trainer's clear errors and exit codes (a truncated checkpoint file: 4; --device cuda
without CUDA: 2; a split of one class or with null IDs: refused before training), and the library
warnings known to be harmless, silenced in one place (trainer/logging.py)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from data_pipeline.reader import ShardIndex
from data_pipeline.spec import SPLITS, DataError, DatasetSpec, split_dir
from trainer.checkpoint import CheckpointError, CheckpointManager, SafeFileSystemReader

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from data_pipeline.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("exit_codes") / "data"
    generate_dataset(root, 1200, items=300, users=200, seed=0, progress=False)
    return root


def flags(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(data), "--model", "dnn", "--out", str(out), "--batch-size", "128", "--max-steps", "2",
        "--model.mlp_dims", "8", "--logging.progress", "false", "--logging.tensorboard", "false", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> tuple[Path, str]:
    """A 2-step trainer run in a fresh process: (its --out, its stderr)."""
    out = tmp_path_factory.mktemp("exit_codes") / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "trainer", *flags(data, out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stderr


# -- a truncated checkpoint file: exit 4 naming it ---------------------------------------------------------
def saved(tmp_path: Path) -> Path:
    return CheckpointManager(tmp_path, keep=1).save(1, {"w": torch.arange(4096, dtype=torch.float32)})


def test_check_files_names_a_truncated_or_missing_file(tmp_path):
    from data_pipeline.checkpoint_files import check_files

    path = saved(tmp_path)
    check_files(path)  # whole: nothing to say
    data_file = next(path.glob("*.distcp"))
    data_file.write_bytes(data_file.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"{data_file}: truncated \(100 bytes"):
        check_files(path)
    data_file.unlink()
    with pytest.raises(CheckpointError, match=rf"{data_file}: missing"):
        check_files(path)


def test_unwrap_turns_dcp_failures_into_checkpoint_errors(tmp_path):
    """DCP's CheckpointException is a BaseException (``except Exception`` misses it) without the file's
    name; `unwrap` names the file when it is unreadable and hands back a mismatch as it is."""
    from data_pipeline.checkpoint_files import unwrap

    def dcp_load(path: Path, state: dict) -> None:  # what CheckpointManager.load runs
        dcp.load(state, storage_reader=SafeFileSystemReader(str(path)))

    path = saved(tmp_path)
    with pytest.raises(CheckpointException) as mismatch:
        dcp_load(path, {"w": torch.zeros(8)})
    assert isinstance(unwrap(path, mismatch.value), ValueError)  # the caller says "does not fit"
    data_file = next(path.glob("*.distcp"))
    data_file.write_bytes(data_file.read_bytes()[:100])
    with pytest.raises(CheckpointException) as unreadable:
        dcp_load(path, {"w": torch.zeros(4096)})
    err = unwrap(path, unreadable.value)
    assert isinstance(err, CheckpointError) and str(data_file) in str(err)


def test_resume_from_a_truncated_checkpoint_exits_4_naming_the_file(data, run, tmp_path, capsys):
    from trainer.__main__ import main

    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    data_file = next((out / "checkpoints").glob("step_*/*.distcp"))
    data_file.write_bytes(data_file.read_bytes()[:100])
    assert main(flags(data, out, "--resume", "--max-steps", "4")) == 4
    err = capsys.readouterr().err
    assert f"{data_file}: truncated" in err and "Traceback" not in err


# -- --device cuda without CUDA: exit 2 ---------------------------------------------------------------------
def test_device_cuda_without_cuda_exits_2(data, tmp_path, capsys, monkeypatch):
    from trainer.__main__ import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(flags(data, tmp_path / "out", "--device", "cuda")) == 2
    err = capsys.readouterr().err
    assert "--device cuda: CUDA is not available on this machine (torch " in err and "Traceback" not in err


def test_more_processes_than_gpus_is_a_config_error(monkeypatch):
    from trainer.config import ConfigError
    from trainer.distributed import check_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_cuda(1)
    with pytest.raises(
        ConfigError, match=r"--device cuda: process LOCAL_RANK=2 needs GPU 2, but this node has 2"
    ):
        check_cuda(2)


# -- splits the trainer cannot train on or evaluate: refused before training -----------------------------
def indexes(root: Path) -> tuple[DatasetSpec, dict[str, ShardIndex]]:
    spec = DatasetSpec.load(root)
    return spec, {s: ShardIndex.build(split_dir(root, s), spec) for s in SPLITS}


def rewrite(shard: Path, column: str, values: list, **options) -> None:
    t = pq.read_table(shard)
    i = t.schema.get_field_index(column)
    t = t.set_column(i, t.schema.field(i), pa.array(values, t.schema.field(i).type))
    pq.write_table(t, shard, **options)


@pytest.fixture
def copy(data, tmp_path) -> Path:
    shutil.copytree(data, tmp_path / "data")
    return tmp_path / "data"


def test_a_split_of_one_class_is_refused_naming_it(copy):
    from trainer.preflight import check_splits

    spec, idx = indexes(copy)
    check_splits(spec, idx)  # the generated data: two classes everywhere
    for shard in idx["test"].shards:
        rewrite(Path(shard), spec.label, [0.0] * pq.read_metadata(shard).num_rows)
    with pytest.raises(
        DataError, match=r"test: the test split has only label 0 \(\d+ rows\): AUC is undefined"
    ):
        check_splits(spec, idx)


def test_trainer_refuses_a_test_split_of_one_class_before_training(copy, tmp_path, capsys):
    from trainer.__main__ import main

    spec, idx = indexes(copy)
    for shard in idx["test"].shards:
        rewrite(Path(shard), spec.label, [0.0] * pq.read_metadata(shard).num_rows)
    assert main(flags(copy, tmp_path / "out")) == 2
    assert "the test split has only label 0" in capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_one_class_is_found_without_footer_statistics(copy):
    from trainer.preflight import check_splits

    spec, idx = indexes(copy)
    for shard in idx["train"].shards:
        n = pq.read_metadata(shard).num_rows
        rewrite(Path(shard), spec.label, [1.0] * n, write_statistics=False)
    with pytest.raises(DataError, match=r"the train split has only label 1 .*nothing to learn"):
        check_splits(spec, idx)


def test_null_ids_in_valid_are_refused_before_training(copy):
    """The reader reported them only at the first evaluation, after training; the same message now."""
    from trainer.preflight import check_splits

    spec, idx = indexes(copy)
    shard = Path(idx["valid"].shards[0])
    users = pq.read_table(shard, columns=[spec.user_id]).column(0).to_pylist()
    users[3] = None
    rewrite(shard, spec.user_id, users)
    with pytest.raises(DataError, match=rf"{shard}: column '{spec.user_id}' has 1 null values"):
        check_splits(spec, idx)


def test_null_lists_in_test_are_refused_and_empty_lists_are_not(copy):
    from trainer.preflight import check_splits

    spec, idx = indexes(copy)
    multi = next(f.name for f in spec.sparse if f.multi)
    shard = Path(idx["test"].shards[0])
    lists = pq.read_table(shard, columns=[multi]).column(0).to_pylist()
    lists[0], lists[1] = [], []  # empty lists are fine (a footer counts them as nulls)
    rewrite(shard, multi, lists)
    check_splits(spec, idx)
    lists[2] = None
    rewrite(shard, multi, lists)
    with pytest.raises(DataError, match=rf"{shard}: column '{multi}' has 1 null lists"):
        check_splits(spec, idx)


# -- library warnings: the harmless ones silenced, others kept ----------------------------------------------
KNOWN = (
    "TopologyFactory",
    "HeuristicalStorageReservation",
    "dense tensor size calculation",
    "Sharding spec not found",
    "caching params will be ignored",
    "broadcast_buffers",
    "dense_embedding_codegen_lookup_function",
    "is_fx_tracing",
)


def test_a_training_run_prints_none_of_the_harmless_library_warnings(run):
    stderr = run[1]
    shown = [line for line in stderr.splitlines() if any(k in line for k in KNOWN)]
    assert not shown, "\n".join(shown)


def test_only_the_listed_warnings_are_silenced(caplog):
    from trainer.logging import quiet_libraries

    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        quiet_libraries()
        warnings.warn_explicit(
            "`broadcast_buffers` is deprecated. Use `forward_sync_buffers` instead.", FutureWarning,
            "embeddingbag.py", 1, module="torchrec.distributed.embeddingbag",
        )  # fmt: skip
        warnings.warn_explicit(
            "something new", FutureWarning, "embeddingbag.py", 2, module="torchrec.distributed.x"
        )
        warnings.warn_explicit(  # the same text from the project's own code: kept
            "`broadcast_buffers` is deprecated. Use it", FutureWarning, "train.py", 3, module="trainer.train"
        )
    assert [str(w.message) for w in got] == ["something new", "`broadcast_buffers` is deprecated. Use it"]
    with caplog.at_level(logging.WARNING):
        logging.getLogger("torchrec.distributed.utils").warning(
            "Sharding Type is data_parallel, caching params will be ignored"
        )
        logging.warning("Sharding spec not found for model.ebc.t_x")
        logging.getLogger("torchrec.distributed.utils").warning("Sharding Type is row_wise: something else")
    assert [r.getMessage() for r in caplog.records] == ["Sharding Type is row_wise: something else"]


class OneTable(torch.nn.Module):
    """One pooled table, read through a fixed linear map: d loss / d row = (times in the batch) x COEF."""

    COEF = torch.tensor([1.0, 2.0, 3.0, 4.0])

    def __init__(self) -> None:
        super().__init__()
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

        table = EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=10, feature_names=["f"])
        self.ebc = EmbeddingBagCollection([table], device=torch.device("meta"))

    def forward(self, kjt):
        return (self.ebc(kjt)["f"] * self.COEF).sum()


def test_the_silenced_fbgemm_warning_comes_with_right_gradients(caplog):
    """The UserWarning of FBGEMM's dense (data-parallel) lookup says gradients may be wrong: they are
    right, and the warning and TorchRec's planner notices are silenced, on the real calls."""
    from torchrec import KeyedJaggedTensor

    from trainer import distributed as D
    from trainer.logging import quiet_libraries

    env = D.init_distributed("cpu")
    try:
        with warnings.catch_warnings(record=True) as got, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            quiet_libraries()
            dmp, _ = D.shard_model(OneTable(), env, {"t": "data_parallel"}, "sgd", 0.5)
            kjt = KeyedJaggedTensor.from_lengths_sync(["f"], torch.tensor([1, 1, 3]), torch.tensor([2, 1]))
            dmp(kjt).backward()
    finally:
        D.close_distributed()
    grad = dict(dmp.named_parameters())["ebc.embedding_bags.t.weight"].grad
    assert torch.equal(grad[[0, 1, 3]], torch.stack([0 * OneTable.COEF, 2 * OneTable.COEF, OneTable.COEF]))
    assert grad.abs().sum() == 3 * OneTable.COEF.sum()  # no other row
    shown = [str(w.message) for w in got] + [r.getMessage() for r in caplog.records]
    assert not [m for m in shown if any(k in m for k in KNOWN)], shown
