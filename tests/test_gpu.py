"""The GPU check script end to end on CPU (its dry run), and the `gpu`-marked tests of real CUDA paths.

``pytest -m gpu`` runs only the marked tests; without CUDA they skip. ``benchmarks/gpu_check.py``
runs them as its first stage on a GPU machine.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from store.models import registry

REPO = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# -- the check script, CPU dry run -----------------------------------------------------------------
def _samples_per_s(table: str, model: str) -> list[float]:
    """samples/s cells of the table rows `| train <model> | ...`."""
    values = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == f"train {model}":
            assert cells[2] == "ok", line
            values.append(float(cells[3].replace(",", "")))
    return values


def test_gpu_check_dry_run_end_to_end(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (out / "gpu_check.md").read_text()
    for model in ("id", "store"):
        rates = _samples_per_s(table, model)
        assert rates and all(math.isfinite(r) and r > 0 for r in rates), (model, table)
    assert "| attention |" in table and "| pytest -m gpu |" in table
    assert table.split("\n| stage |")[1] in proc.stdout  # the same table was printed
    raw = json.loads((out / "gpu_check.json").read_text())
    assert raw["mode"].startswith("dry run") and raw["failed"] == []
    trains = [s for s in raw["stages"] if s["name"].startswith("train")]
    assert {s["results"]["model"] for s in trains} == {"id", "store", "id-zch"}
    zch = next(s["results"] for s in trains if s["results"]["model"] == "id-zch")
    assert zch["zch"]["t_item"]["admitted"] > 0 and zch["sharding_plan"]
    for s in trains:
        res = s["results"]
        assert res["samples_per_s"] > 0 and res["peak_memory_bytes_per_rank"][0] > 0
        # per-table bytes from the plan add up to the trainer's measured footprint (one rank)
        assert sum(t["bytes_per_rank"] for t in res["tables"]) == res["embedding_bytes_per_rank"][0]
        kinds = {t["table"]: t["sharding"] for t in res["tables"]}
        if res["model"] == "id":
            assert kinds["t_item"] == "table_wise"
        elif res["model"] == "id-zch":  # on CPU 'auto' replicates its 256 rows; the remapper stays whole
            assert kinds["t_item"] == "data_parallel"
        else:
            assert "t_item" not in kinds
            assert all(v == "data_parallel" for k, v in kinds.items() if k.startswith("t_sid"))
    attention = [a for s in raw["stages"] if s["name"] == "attention" for a in s["results"]["attention"]]
    assert len(attention) >= 2 and all(a["ms"] > 0 for a in attention)
    assert (out / "logs" / "generate.log").read_text().startswith("$ ")


# -- sharded vs unsharded embeddings -----------------------------------------------------------------
TABLES = {"t_a": (1000, 16, "f_a"), "t_b": (300, 16, "f_b")}
LR = 0.5


class _Wrap(nn.Module):
    """Two tables in one EmbeddingBagCollection; forward -> pooled [B, 32] dense tensor."""

    def __init__(self, device: torch.device):
        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        super().__init__()
        configs = [
            EmbeddingBagConfig(name=n, num_embeddings=r, embedding_dim=d, feature_names=[f])
            for n, (r, d, f) in TABLES.items()
        ]
        self.ebc = EmbeddingBagCollection(tables=configs, device=device)

    def forward(self, kjt) -> torch.Tensor:
        return self.ebc(kjt).values()


def _kjt(device: torch.device, batch: int = 64, seed: int = 0):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(seed)
    lengths, values = [], []
    for rows, _, _ in TABLES.values():
        n = torch.randint(0, 4, (batch,), generator=g)  # some bags empty
        lengths.append(n)
        values.append(torch.randint(0, rows, (int(n.sum()),), generator=g))
    return KeyedJaggedTensor.from_lengths_sync(
        [f for _, _, f in TABLES.values()], torch.cat(values), torch.cat(lengths)
    ).to(device)


def _full_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every table's whole weight, assembled from the local shards (one rank holds them all)."""
    out = {}
    for key, value in module.state_dict().items():
        name = next((n for n in TABLES if key.endswith(f".{n}.weight")), None)
        if name is None:
            continue
        rows, dim, _ = TABLES[name]
        if hasattr(value, "local_shards"):  # ShardedTensor
            full = torch.full((rows, dim), math.nan)
            for shard in value.local_shards():
                r0, c0 = shard.metadata.shard_offsets
                t = shard.tensor.detach().float().cpu()
                full[r0 : r0 + t.shape[0], c0 : c0 + t.shape[1]] = t
        else:
            full = value.detach().float().cpu().clone()
        out[name] = full
    assert set(out) == set(TABLES), list(module.state_dict())
    return out


def _sharded_matches_unsharded(device: torch.device, backend: str, kind: str, tmp_path: Path) -> None:
    """DMP over the project's shard_model (fused SGD) vs a plain EmbeddingBagCollection:
    the same pooled output, and after one backward the same updated weights (w - lr * grad)."""
    import torch.distributed as dist

    from trainer import distributed as D

    assert not dist.is_initialized()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = dist.FileStore(str(tmp_path / "pg_store"), 1)
    dist.init_process_group(backend, store=store, rank=0, world_size=1)
    try:
        env = D.DistEnv(0, 1, 0, device, backend)
        torch.manual_seed(0)
        dmp, plan = D.shard_model(_Wrap(torch.device("meta")), env, dict.fromkeys(TABLES, kind), "sgd", LR)
        assert {r["table"]: r["sharding"] for r in D.describe_plan(plan)} == dict.fromkeys(TABLES, kind)
        before = _full_weights(dmp)
        assert all(torch.isfinite(w).all() for w in before.values())

        ref = _Wrap(device)
        with torch.no_grad():
            for name, w in before.items():
                ref.ebc.embedding_bags[name].weight.copy_(w.to(device))
        kjt = _kjt(device)
        width = sum(d for _, d, _ in TABLES.values())
        coef = torch.randn(kjt.stride(), width, generator=torch.Generator().manual_seed(1)).to(device)

        out = dmp(kjt)
        expected = ref(kjt)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        (out * coef).sum().backward()  # the fused optimizer updates the sharded weights in the backward
        (expected * coef).sum().backward()
        after = _full_weights(dmp)
        for name in TABLES:
            grad = ref.ebc.embedding_bags[name].weight.grad.float().cpu()
            torch.testing.assert_close(after[name], before[name] - LR * grad, atol=1e-5, rtol=1e-5)
            assert not torch.equal(after[name], before[name])
    finally:
        dist.destroy_process_group()


def test_sharded_embeddings_match_unsharded_on_cpu(tmp_path):
    """The same check as the GPU one, table-wise on gloo (keeps the helper honest without a GPU)."""
    _sharded_matches_unsharded(torch.device("cpu"), "gloo", "table_wise", tmp_path)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kind", ["row_wise", "table_wise"])
def test_sharded_embeddings_match_unsharded_on_gpu(kind, tmp_path):
    _sharded_matches_unsharded(torch.device("cuda", 0), "nccl", kind, tmp_path)


# -- the model zoo under bf16 autocast ----------------------------------------------------------------
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", registry.names())
def test_zoo_bf16_autocast_forward_backward_finite(name):
    from store.models.config import ModelConfig
    from store.models.zoo import batch_transform, build_model
    from tests.test_sid import tiny_batch, tiny_sids, tiny_spec

    device = torch.device("cuda", 0)
    torch.manual_seed(0)
    spec, sids = tiny_spec(), tiny_sids()
    model = build_model(name, spec, ModelConfig(), sids, device=device)
    batch = tiny_batch(spec, rows=64)
    transform = batch_transform(name, spec, sids, ModelConfig())
    if transform is not None:
        batch = transform(batch)
    batch = batch.to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(batch)
    assert out.logits.shape == (64,) and torch.isfinite(out.logits.float()).all()
    for key, value in out.aux_losses.items():
        assert torch.isfinite(value.float()), key
    loss = nn.functional.binary_cross_entropy_with_logits(out.logits.float(), batch.labels)
    (loss + sum(v.float() for v in out.aux_losses.values())).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# -- the trainer on CUDA: row-wise raw item table, replicated SID codebooks, bf16 ----------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_data")
    data, sids = root / "data", root / "sids"
    py = sys.executable
    for cmd in (
        [py, "-m", "data_pipeline", "generate", "--out", str(data), "--rows", "20000", "--items", "5000",
         "--users", "2000", "--no-progress"],
        [py, "-m", "store.tokenizer", "--data", str(data), "--out", str(sids), "--num-sids", "3",
         "--codebook-size", "16", "--epochs", "1", "--min-steps", "20", "--batch-size", "256", "--no-progress"],
    ):  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return data, sids


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("model", ["id", "store"])
def test_trainer_on_cuda_bf16_row_wise(model, tiny_data, tmp_path):
    data, sids = tiny_data
    out = tmp_path / model
    cmd = [
        sys.executable, "-m", "trainer", "--data", str(data), "--model", model, "--sids", str(sids),
        "--out", str(out), "--batch-size", "512", "--max-steps", "20", "--device", "cuda", "--bf16",
        "--logging.every_steps", "5", "--logging.progress", "false", "--logging.tensorboard", "false",
        "--eval.max_batches", "2",
    ]  # fmt: skip
    if model == "id":
        cmd += ["--sharding.tables", "t_item=row_wise"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["device"] == "cuda" and s["steps"] == 20
    assert math.isfinite(s["samples_per_s"]) and s["samples_per_s"] > 0
    assert math.isfinite(s["logloss"]) and s["peak_memory_bytes_per_rank"][0] > 0
    kinds = {r["table"]: r["sharding"] for r in s["sharding_plan"]}
    if model == "id":
        assert kinds["t_item"] == "row_wise"
    else:
        sid_tables = [k for k in kinds if k.startswith("t_sid")]
        assert sid_tables and all(kinds[k] == "data_parallel" for k in sid_tables)
