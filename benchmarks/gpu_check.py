"""One GPU check: the GPU tests, ID vs STORE training at 1M items, and dense vs MoBA attention.

    python benchmarks/gpu_check.py [--out gpu_check_out] [--work DIR]   # on a CUDA machine, < 10 min
    python benchmarks/gpu_check.py --dry-run --out /tmp/gc             # the same pipeline on CPU, tiny

Stages, each a subprocess (``sys.executable -m ...``) whose command and output go to OUT/logs/:

1. ``pytest -m gpu`` over the test files that use the ``gpu`` marker;
2. ``data_pipeline generate`` (GPU: 2,000,000 rows, 1,000,000 items), ``store.tokenizer`` (OPMQ);
3. ``trainer --model id`` and ``--model store`` per batch size (GPU: 8192 and 32768, bf16 autocast,
   the raw item table ``t_item`` row-wise sharded, STORE's small SID codebooks replicated by the
   default 'auto' rule, a bounded ``--max-steps``), each run's summary.json read back; then
   ``--model id-zch`` at the first batch size: its managed-collision tables (remapper and rows) sharded
   row-wise by TorchRec on the GPU, the path the CPU tests cannot take (on CPU the remapper stays
   whole and the collection inside is planned like ``t_item``), its admission/eviction counts shown;
4. ``benchmarks/bench_attention.py --device cuda --dtype bfloat16`` (dense vs MoBA), two shapes.

A failing stage is marked FAILED in the table (with its log's last lines) and the others still run;
the exit status is 1 if any stage failed. The table goes to stdout and OUT/gpu_check.md, the raw
numbers to OUT/gpu_check.json (both written atomically). Data, SIDs and run folders go to --work
(default OUT/work), so OUT stays small when it is copied back from a device machine.

Without CUDA (or with --dry-run) the same stages run on CPU at tiny sizes (20,000 rows, 5,000 items,
batch 256, a few steps, bf16 off, ``t_item`` table-wise because TorchRec's row-wise sharding needs
GPUs, attention in float32) in about a minute, so the test suite can run the script end to end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLE_FILE = "gpu_check.md"
JSON_FILE = "gpu_check.json"
MODELS = ("id", "store")
HEADERS = ("stage", "setting", "status", "samples/s", "peak memory/rank", "embedding bytes/rank", "detail")


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU check and its CPU dry run."""

    rows: int
    items: int
    users: int
    batch_sizes: tuple[int, ...]
    max_steps: int
    log_every: int
    eval_batches: int
    num_workers: int
    num_sids: int
    codebook_size: int
    tok_max_items: int
    tok_min_steps: int
    tok_batch: int
    device: str
    bf16: bool
    item_sharding: str
    attention: tuple[tuple[str, tuple[str, ...]], ...]
    """(name, extra bench_attention flags) per attention shape."""
    attention_device: str
    attention_dtype: str
    stage_timeout: int
    """Seconds one stage may take."""
    budget: int
    """Seconds for the whole check; stages that would start later are skipped (and count as failed)."""


GPU = Sizes(
    rows=2_000_000,
    items=1_000_000,
    users=100_000,
    batch_sizes=(8192, 32768),
    max_steps=60,
    log_every=10,
    eval_batches=4,
    num_workers=4,
    num_sids=4,
    codebook_size=256,
    tok_max_items=200_000,
    tok_min_steps=300,
    tok_batch=4096,
    device="cuda",
    bf16=True,
    item_sharding="row_wise",
    attention=(
        ("B=8192 H=2 T=56 E=32 block 8", ("--batch", "8192")),
        ("B=256 H=2 T=1024 E=32 block 64", ("--tokens", "1024", "--block", "64")),
    ),
    attention_device="cuda",
    attention_dtype="bfloat16",
    stage_timeout=300,
    budget=540,
)
DRY = Sizes(
    rows=20_000,
    items=5_000,
    users=2_000,
    batch_sizes=(256,),
    max_steps=12,
    log_every=4,
    eval_batches=2,
    num_workers=0,
    num_sids=3,
    codebook_size=16,
    tok_max_items=5_000,
    tok_min_steps=20,
    tok_batch=256,
    device="cpu",
    bf16=False,
    item_sharding="table_wise",
    attention=(("B=32 H=2 T=56 E=32 block 8", ("--batch", "32", "--repeats", "3")),),
    attention_device="cpu",
    attention_dtype="float32",
    stage_timeout=150,
    budget=300,
)


@dataclass
class Stage:
    """One subprocess and what came of it."""

    name: str
    setting: str
    cmd: list[str]
    log: str
    status: str = "pending"
    """ok, FAILED or skipped."""
    rc: int | None = None
    seconds: float = 0.0
    tail: list[str] = field(default_factory=list)
    """The log's last lines (failed stages)."""
    note: str = ""
    results: dict = field(default_factory=dict)


# -- helpers ---------------------------------------------------------------------------------------
def human_bytes(n: float | None) -> str:
    if n is None or not math.isfinite(n):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def child_env() -> dict[str, str]:
    """This interpreter's bin/ first on PATH and the repo on PYTHONPATH, unbuffered output."""
    env = os.environ.copy()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_stage(stage: Stage, index: int, total: int, timeout: int) -> Stage:
    """Run the stage's command (output to its log), at most `timeout` s; fills status, rc, tail."""
    print(f"[{index}/{total}] {stage.name} ({stage.setting}) ...", flush=True)
    log = Path(stage.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(stage.cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(
            stage.cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=child_env(), start_new_session=True
        )
        try:
            stage.rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the stage's own process group (torchrun, workers)
            proc.wait()
            stage.rc = None
            stage.note = f"timed out after {timeout} s"
    stage.seconds = time.perf_counter() - t0
    stage.status = "ok" if stage.rc == 0 else "FAILED"
    if stage.status == "FAILED":
        lines = log.read_text(errors="replace").splitlines()[1:]  # (line 0: the command)
        stage.tail = [ln for ln in lines if ln.strip()][-12:]
    print(f"    {stage.status} in {stage.seconds:.0f} s  (log: {log})", flush=True)
    return stage


def skip(stage: Stage, index: int, total: int, why: str) -> Stage:
    stage.status, stage.note = "skipped", why
    print(f"[{index}/{total}] {stage.name} ({stage.setting}) skipped: {why}", flush=True)
    return stage


def gpu_test_files() -> list[str]:
    """Test files that use the gpu marker (others may need packages a GPU machine lacks, e.g. torchx)."""
    return sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "tests").glob("test_*.py")
        if "mark.gpu" in p.read_text(errors="replace")
    )


def pytest_summary(log: Path) -> str:
    """The '3 passed, 2 skipped in 4.1s' line of a pytest log."""
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    for line in reversed(lines):
        if re.search(r"\b(passed|failed|skipped|deselected|error|no tests ran)\b", line):
            return line.strip("= ").strip()
    return ""


ATTENTION_ROW = re.compile(r"^\|\s*(?P<name>[^|]+?)\s*\|\s*(?P<ms>[\d.]+)\s*\|\s*(?P<ratio>[\d.]+)x\s*\|\s*$")


def parse_attention(log: Path) -> list[dict]:
    """bench_attention's table rows -> [{variant, ms, vs_dense}]."""
    rows = []
    for line in log.read_text(errors="replace").splitlines():
        m = ATTENTION_ROW.match(line.strip())
        if m:
            rows.append({"variant": m["name"], "ms": float(m["ms"]), "vs_dense": float(m["ratio"])})
    return rows


def table_sizes(data: Path, sids: Path | None, model: str, config: dict) -> dict[str, dict]:
    """Per table of the run's model: rows, dim and fp32-weight bytes (model built on the meta device)."""
    import torch

    from data_pipeline.spec import DatasetSpec
    from store.models.config import ModelConfig
    from store.models.zoo import build_model
    from store.sid import SidTable
    from trainer.distributed import embedding_tables

    spec = DatasetSpec.load(data)
    sid_table = SidTable.load(sids, spec) if sids is not None else None
    mc = ModelConfig.from_dict(config or {})
    net = build_model(model, spec, mc, sid_table, device=torch.device("meta"))
    # every table of the zoo is fp32 (4 bytes per weight)
    return {
        t.name: {
            "rows": t.num_embeddings,
            "dim": t.embedding_dim,
            "bytes": t.num_embeddings * t.embedding_dim * 4,
        }
        for t in embedding_tables(net)
    }


def per_table_hbm(plan: list[dict], sizes: dict[str, dict]) -> list[dict]:
    """Sharding-plan rows + table sizes -> bytes a rank holding the table (or one shard of it) keeps."""
    rows = []
    for p in plan:
        size = sizes.get(p["table"], {})
        full = size.get("bytes")
        ranks = p.get("ranks")
        shards = len(ranks) if isinstance(ranks, list) and ranks else 1
        split = p["sharding"] in ("row_wise", "column_wise", "table_row_wise", "table_column_wise")
        per_rank = None if full is None else (math.ceil(full / shards) if split else full)
        rows.append({**p, **size, "bytes_per_rank": per_rank})
    return sorted(rows, key=lambda r: -(r["bytes_per_rank"] or 0))


def describe_tables(rows: list[dict]) -> str:
    """SID tables and tables of >= 1% of the bytes one by one; the other small ones summed per sharding."""
    total = sum(r["bytes_per_rank"] or 0 for r in rows)
    parts, small = [], {}
    for r in rows:
        b = r["bytes_per_rank"]
        if b is None or "sid" in r["table"] or b >= 0.01 * total:
            parts.append(f"{r['table']} {r['sharding']} {human_bytes(b)}")
        else:
            n, s = small.get(r["sharding"], (0, 0))
            small[r["sharding"]] = (n + 1, s + b)
    parts += [f"{n} small tables {kind} {human_bytes(b)}" for kind, (n, b) in small.items()]
    return "; ".join(parts)


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def fmt_rate(v: float | None) -> str:
    return f"{v:,.0f}" if isinstance(v, int | float) and math.isfinite(v) else "-"


# -- the pipeline ----------------------------------------------------------------------------------
def build_stages(sizes: Sizes, out: Path, work: Path) -> list[Stage]:
    py, logs = sys.executable, out / "logs"
    data, sids, runs = work / "data", work / "sids", work / "runs"
    stages = []
    tests = gpu_test_files()
    stages.append(
        Stage(
            "pytest -m gpu",
            " ".join(tests) or "(no test file uses the marker)",
            [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *tests],
            str(logs / "pytest_gpu.log"),
        )
    )
    stages.append(
        Stage(
            "generate",
            f"{sizes.rows:,} rows, {sizes.items:,} items, {sizes.users:,} users",
            [
                py, "-m", "data_pipeline", "generate", "--out", str(data), "--rows", str(sizes.rows),
                "--items", str(sizes.items), "--users", str(sizes.users), "--overwrite", "--no-progress",
            ],
            str(logs / "generate.log"),
        )
    )  # fmt: skip
    stages.append(
        Stage(
            "tokenize",
            f"opmq K={sizes.num_sids} C={sizes.codebook_size}",
            [
                py, "-m", "store.tokenizer", "--data", str(data), "--out", str(sids), "--method", "opmq",
                "--num-sids", str(sizes.num_sids), "--codebook-size", str(sizes.codebook_size),
                "--epochs", "1", "--min-steps", str(sizes.tok_min_steps), "--batch-size", str(sizes.tok_batch),
                "--max-train-items", str(sizes.tok_max_items), "--no-progress",
            ],
            str(logs / "tokenize.log"),
        )
    )  # fmt: skip
    for bs in sizes.batch_sizes:
        for model in MODELS:
            run = runs / f"{model}_b{bs}"
            args = [
                py, "-m", "trainer", "--data", str(data), "--model", model, "--sids", str(sids),
                "--out", str(run), "--batch-size", str(bs), "--epochs", "100", "--max-steps", str(sizes.max_steps),
                "--device", sizes.device, "--bf16" if sizes.bf16 else "--no-bf16",
                "--num-workers", str(sizes.num_workers), "--logging.every_steps", str(sizes.log_every),
                "--logging.progress", "false", "--logging.tensorboard", "false",
                "--eval.max_batches", str(sizes.eval_batches),
            ]  # fmt: skip
            if model == "id":  # STORE has no raw item table; its SID codebooks follow the 'auto' rule
                args += ["--sharding.tables", f"t_item={sizes.item_sharding}"]
            setting = f"batch {bs}, {sizes.device}, bf16 {'on' if sizes.bf16 else 'off'}"
            if model == "id":
                setting += f", t_item {sizes.item_sharding}"
            stage = Stage(f"train {model}", setting, args, str(logs / f"train_{model}_b{bs}.log"))
            stage.results = {"model": model, "batch_size": bs, "run_dir": str(run)}
            stages.append(stage)
    stages.append(zch_stage(sizes, data, sids, runs, logs))
    for name, extra in sizes.attention:
        cmd = [
            py, str(REPO / "benchmarks" / "bench_attention.py"), "--device", sizes.attention_device,
            "--dtype", sizes.attention_dtype, *extra,
        ]  # fmt: skip
        slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
        stages.append(
            Stage("attention", f"{name}, {sizes.attention_device} {sizes.attention_dtype}", cmd,
                  str(logs / f"attention_{slug}.log"))
        )  # fmt: skip
    return stages


def zch_stage(sizes: Sizes, data: Path, sids: Path, runs: Path, logs: Path) -> Stage:
    """``trainer --model id-zch`` at the first batch size: on the GPU TorchRec shards its managed-collision
    tables row-wise (the only way it shards them; 'auto' picks it), remapper and rows together. With
    ``--sids`` (as the ID model) for as many tokens per ID as STORE has SIDs."""
    bs, run = sizes.batch_sizes[0], runs / f"id-zch_b{sizes.batch_sizes[0]}"
    args = [
        sys.executable, "-m", "trainer", "--data", str(data), "--model", "id-zch", "--sids", str(sids), "--out", str(run),
        "--batch-size", str(bs), "--epochs", "100", "--max-steps", str(sizes.max_steps), "--device", sizes.device,
        "--bf16" if sizes.bf16 else "--no-bf16", "--num-workers", str(sizes.num_workers),
        "--logging.every_steps", str(sizes.log_every), "--logging.progress", "false",
        "--logging.tensorboard", "false", "--eval.max_batches", str(sizes.eval_batches),
    ]  # fmt: skip
    where = "tables row_wise with their remapper" if sizes.device == "cuda" else "remapper unsharded"
    setting = f"batch {bs}, {sizes.device}, bf16 {'on' if sizes.bf16 else 'off'}, {where}"
    stage = Stage("train id-zch", setting, args, str(logs / f"train_id-zch_b{bs}.log"))
    stage.results = {"model": "id-zch", "batch_size": bs, "run_dir": str(run)}
    return stage


def collect_train(stage: Stage, data: Path, sids: Path, size_cache: dict) -> None:
    """Read the run's summary.json into stage.results (and per-table bytes from the plan)."""
    from store.records import RunSummary

    run = Path(stage.results["run_dir"])
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        stage.status, stage.note = "FAILED", f"no {summary_path}"
        return
    s = RunSummary.from_dict(json.loads(summary_path.read_text()))
    model = stage.results["model"]
    res = stage.results
    res.update(
        samples_per_s=s.samples_per_s,
        steps=s.steps,
        device=s.device,
        world_size=s.world_size,
        pipeline=s.pipeline,
        peak_memory_bytes_per_rank=s.peak_memory_bytes_per_rank,
        embedding_bytes_per_rank=s.embedding_bytes_per_rank,
        embedding_optimizer_bytes_per_rank=s.embedding_optimizer_bytes_per_rank,
        step_time_ms_rank0=s.step_time_ms_rank0,
        sharding_plan=[p.to_dict() for p in s.sharding_plan],
        auc=s.scores.get("auc"),
        versions=s.versions,
        zch=s.zch,
    )
    if model not in size_cache:
        try:
            cfg = s.config.model_config.to_dict()
            # the ID model trains without SIDs when tokenize failed
            used = sids if "--sids" in stage.cmd else None
            size_cache[model] = table_sizes(data, used, model, cfg)
        except Exception as e:  # a report detail: the run itself succeeded
            size_cache[model] = {}
            res["table_sizes_error"] = f"{type(e).__name__}: {e}"
    res["tables"] = per_table_hbm(res["sharding_plan"], size_cache[model])
    sps = res["samples_per_s"]
    if not (isinstance(sps, int | float) and math.isfinite(sps) and sps > 0):
        stage.status, stage.note = "FAILED", f"samples_per_s is {sps!r}"


def table_rows(stages: list[Stage]) -> list[list[str]]:
    rows = []
    for st in stages:
        sps = peak = emb = "-"
        detail = st.note
        if st.status == "FAILED":
            tail = " / ".join(st.tail[-3:])[-400:]
            detail = "; ".join(x for x in (st.note, f"log {st.log}" + (f": {tail}" if tail else "")) if x)
        elif st.status == "ok" and st.name.startswith("train"):
            r = st.results
            sps = fmt_rate(r.get("samples_per_s"))
            peak = human_bytes(max(r.get("peak_memory_bytes_per_rank") or [math.nan]))
            emb = human_bytes(max(r.get("embedding_bytes_per_rank") or [math.nan]))
            ms = r.get("step_time_ms_rank0") or {}
            step = " / ".join(f"{k} {v:.1f}" for k, v in ms.items() if isinstance(v, int | float))
            detail = describe_tables(r.get("tables", []))
            if r.get("table_sizes_error"):
                detail += f" (per-table bytes unavailable: {r['table_sizes_error']})"
            if step:
                detail += f"; step ms: {step}"
            for table, c in (r.get("zch") or {}).items():
                detail += f"; {table}: {c['occupied']}/{c['rows']} rows held, {c['admitted']} IDs admitted, "
                detail += f"{c['evicted']} evicted"
        elif st.status == "ok" and st.name == "attention":
            detail = "; ".join(
                f"{a['variant']}: {a['ms']:.2f} ms fwd+bwd ({a['vs_dense']:.2f}x dense)"
                for a in st.results.get("attention", [])
            )
        elif st.status == "ok" and st.name.startswith("pytest"):
            detail = st.results.get("summary", "")
        elif st.status == "ok":
            detail = f"{st.seconds:.0f} s"
        rows.append([st.name, st.setting, st.status, sps, peak, emb, detail])
    return rows


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def device_name(sizes: Sizes) -> str:
    import torch

    name = torch.cuda.get_device_name(0) if sizes.device == "cuda" else "cpu"
    return f"{name}, torch {torch.__version__}"


def write_report(stages: list[Stage], sizes: Sizes, out: Path, mode: str, device: str, seconds: float) -> str:
    """OUT/gpu_check.md and OUT/gpu_check.json as they stand now (atomic); returns the table."""
    rows = table_rows(stages)
    table = markdown(rows)
    failed = [f"{s.name} ({s.setting})" for s in stages if s.status in ("FAILED", "skipped")]
    header = (
        f"# GPU check ({mode})\n\n"
        f"Device: {device}. {sizes.rows:,} rows, {sizes.items:,} items; at most {sizes.max_steps} "
        f"steps per run; {seconds:.0f} s so far. Logs: `{out / 'logs'}`.\n\n"
        "samples/s: steady-state training throughput (summary.json, first logging interval dropped). "
        "Peak memory: CUDA max allocated (CPU: max RSS of the process). Embedding bytes: this rank's "
        "embedding weights (the trainer's footprint); the detail gives each table's sharding and the "
        "bytes of its weights on a rank holding it (small non-SID tables summed).\n\n"
    )
    atomic_write(out / TABLE_FILE, header + table + "\n")
    raw = {
        "mode": mode,
        "device": device,
        "sizes": asdict(sizes),
        "seconds": seconds,
        "failed": failed,
        "stages": [asdict(s) for s in stages],
        "table": {"headers": list(HEADERS), "rows": rows},
    }
    atomic_write(out / JSON_FILE, json.dumps(raw, indent=2, default=str) + "\n")
    return table


def run_check(sizes: Sizes, out: Path, work: Path, mode: str) -> int:
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    device = device_name(sizes)
    print(f"gpu_check: {mode} on {device}; out {out}, work {work}", flush=True)
    t0 = time.perf_counter()
    stages = build_stages(sizes, out, work)
    data, sids = work / "data", work / "sids"
    gen = next(s for s in stages if s.name == "generate")
    tok = next(s for s in stages if s.name == "tokenize")
    size_cache: dict = {}
    n = len(stages)
    for i, st in enumerate(stages, start=1):
        left = sizes.budget - (time.perf_counter() - t0)
        if left < 10:
            skip(st, i, n, f"out of the {sizes.budget} s budget")
        elif st is tok and gen.status != "ok":
            skip(st, i, n, "generate failed")
        elif st.name.startswith("train") and gen.status != "ok":
            skip(st, i, n, "generate failed")
        elif st.name.startswith("train") and tok.status != "ok" and st.results["model"] == "store":
            skip(st, i, n, "tokenize failed")
        else:
            if st.name.startswith("train") and tok.status != "ok":
                at = st.cmd.index("--sids")
                del st.cmd[at : at + 2]  # the ID model trains without SIDs (one item token)
                st.setting += ", no SIDs"
            run_stage(st, i, n, int(min(sizes.stage_timeout, left)))
        if st.status == "ok" and st.name.startswith("pytest"):
            st.results["summary"] = pytest_summary(Path(st.log))
        elif st.status == "ok" and st.name.startswith("train"):
            collect_train(st, data, sids, size_cache)
        elif st.status == "ok" and st.name == "attention":
            st.results["attention"] = parse_attention(Path(st.log))
            if not st.results["attention"]:
                st.status, st.note = "FAILED", "no timing table in the log"
                st.tail = Path(st.log).read_text(errors="replace").splitlines()[-12:]
        table = write_report(stages, sizes, out, mode, device, time.perf_counter() - t0)
    print()
    print(table, flush=True)
    print(
        f"\ntable: {out / TABLE_FILE}   raw numbers: {out / JSON_FILE}   ({time.perf_counter() - t0:.0f} s)"
    )
    failed = [f"{s.name} ({s.setting})" for s in stages if s.status in ("FAILED", "skipped")]
    if failed:
        print(f"{len(failed)} stage(s) failed or skipped: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check_out", help="table, JSON and logs (default: gpu_check_out)")
    p.add_argument("--work", default="", help="data, SIDs and run folders (default: OUT/work)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (also the default without CUDA)")
    p.add_argument("--rows", type=int, default=0, help="override the number of generated rows")
    p.add_argument("--items", type=int, default=0, help="override the item catalog size")
    p.add_argument("--batch-sizes", default="", help="override, comma-separated (e.g. 8192,32768)")
    p.add_argument("--max-steps", type=int, default=0, help="override the training steps per run")
    p.add_argument("--num-workers", type=int, default=-1, help="override reader workers per run")
    p.add_argument("--stage-timeout", type=int, default=0, help="override the per-stage limit in seconds")
    p.add_argument("--budget", type=int, default=0, help="override the whole check's limit in seconds")
    args = p.parse_args(argv)

    import torch

    dry = args.dry_run or not torch.cuda.is_available()
    if not args.dry_run and dry:
        print("gpu_check: no CUDA device, running the CPU dry run", flush=True)
    sizes = DRY if dry else GPU
    over: dict = {}
    for flag in ("rows", "items", "max_steps", "stage_timeout", "budget"):
        v = getattr(args, flag)
        if v < 0:
            p.error(f"--{flag.replace('_', '-')} must be >= 0, got {v}")
        if v:
            over[flag] = v
    if args.num_workers >= 0:
        over["num_workers"] = args.num_workers
    if args.batch_sizes:
        try:
            bss = tuple(int(x) for x in args.batch_sizes.split(",") if x.strip())
        except ValueError:
            p.error(f"--batch-sizes must be comma-separated ints, got {args.batch_sizes!r}")
        if not bss or min(bss) < 1:
            p.error(f"--batch-sizes must be positive, got {args.batch_sizes!r}")
        over["batch_sizes"] = bss
    sizes = replace(sizes, **over)
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else out / "work"
    return run_check(sizes, out, work, "dry run (CPU)" if dry else "GPU")


if __name__ == "__main__":
    sys.exit(main())
