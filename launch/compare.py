"""ID baseline vs STORE on one dataset: ``python -m launch.compare --data DIR --out OUT [--trainer.* ...]``.

Stages (each skipped when its output exists, so an interrupted comparison continues where it stopped):

1. tokenize: ``python -m store.tokenizer --config OUT/logs/tokenize.json`` -> OUT/sids (unless ``--sids``
   names an existing table). The file is the tokenizer's whole configuration: the ``--tokenizer.*``
   section (``store.tokenizer.config.TokenizerOptions``, the tokenizer's own flags and defaults:
   ``--tokenizer.num-sids``, ``--tokenizer.min-steps``, ``--tokenizer.select.train-rows``, ...) with
   the dataset, the output folder, ``--seed``, ``--high-card`` and, for learned embeddings, the ID run;
2. train the ID baseline (``--model id``) -> OUT/id and STORE (``--model store``) -> OUT/store:
   ``python -m trainer --config OUT/logs/train_<model>.toml`` (under torchrun when ``--nproc`` > 1).
   The file is the run's whole configuration: the ``--trainer.*`` section
   (``trainer.config.TrainOptions``, the trainer's own flags and defaults: ``--trainer.optim.dense-lr``,
   ``--trainer.eval.metric``, ``--trainer.model.num-layers``, ...), the same for both runs, with the
   dataset, the model, the run folder, ``--epochs``, ``--batch-size``, ``--max-steps``, ``--seed``,
   ``--high-card`` and what sets the token count: STORE's SID table, and for the ID model K tokens per
   high-cardinality feature, as many as STORE has SIDs (``--tokenizer.num-sids``, + 1 with
   ``--tokenizer.disambiguate``); the progress bar is off (the output goes to a log);
3. report: ``launch.report`` (the code ``python -m launch.report`` runs) -> OUT/report (report.md with
   mean +- std over seeds and the paired significance tests, significance.json, PNG plots,
   tensorboard/{id,store}).

The console ends with the verdicts and, per tokenized feature, its test coverage (of the test rows whose
ID occurs in the train split, the share whose ID has real SIDs) and collision rates. A feature with test
coverage below 0.5 or no real SIDs, a test split of one class or an arm that scored NaN test AUC makes the
verdict "Not comparable: REASONS." (the report is still written, and the exit code is 0).

When a tokenized feature's embeddings are ``learned`` (every non-item high-cardinality feature, and
the item when it has no content, text or history), the natural order is used instead: the ID run
first, then the tokenizer reading the rows it learned (``--from-run OUT/id``), then STORE. The
tokenizer's selection may instead choose its out-of-fold codes (its own FM's rows, each train row's
codes learned without it: ``--tokenizer.oof``); ``--tokenizer.oof on`` forces them, and then no
stage waits for the ID run.

``--seeds N`` repeats stages 1-2 for seeds seed, seed+1, ... (tokenizer included, so learned
embeddings come from that seed's ID run): OUT/sids/seed<k>, OUT/id/seed<k>, OUT/store/seed<k>,
OUT/logs/seed<k>/. With one seed (the default) the folders are OUT/sids, OUT/id and OUT/store.

The dataset (``--data``) and an existing SID table (``--sids``) may be in object storage (``s3://``,
``gs://``, ``hdfs://``, ...: data_pipeline/fs.py); OUT is a local folder. Logs of every stage go to
OUT/logs/; the console shows one line per stage.

Exit codes: 0 done; 2 a bad flag (``--tokenizer.*`` and ``--trainer.*`` included: they are checked as the
tokenizer and the trainer check them before any stage runs, so nothing is written), bad data, or a stage
that exited 2 (it rejected its input; the error shows its log's last lines); 1 any other stage failure.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from data_pipeline import cli, fs
from data_pipeline.cli import ConfigError
from data_pipeline.spec import DataError
from store.tokenizer.config import TokenizerOptions
from trainer.config import TrainConfig, TrainOptions, write_toml

if TYPE_CHECKING:
    from store.tokenizer.pipeline import TokenizeConfig

MODELS = ("id", "store")
"""The two runs of a comparison, in the order they are trained."""


@dataclass
class RunsConfig:
    """What every launcher of tokenizer and trainer runs shares (launch.compare, launch.frontier)."""

    data: str
    """Dataset folder (spec.json, train/, valid/, test/, items/): a path or a URI (s3://, gs://, hdfs://, ...)."""
    out: str
    """Local output folder: the SID tables, one folder per run, logs/ and the report (python -m launch.compare:
    sids/, id/, store/, logs/, each with seed<k>/ inside when --seeds > 1, and report/)."""
    epochs: int = 3
    """Training epochs of each model."""
    batch_size: int = 512
    """Rows per batch per process."""
    nproc: int = 1
    """Processes per trainer run (torchrun on this machine when > 1)."""
    max_steps: int = 0
    """Stop each run after this many steps (0: all epochs)."""
    high_card: str = ""
    """High-cardinality features 'f1,f2' overriding the spec's ('none': only the item), for the tokenizer
    and both runs."""
    sids: str = ""
    """An existing SID table folder (a path or a URI) to use instead of tokenizing."""
    seed: int = 0
    """Seed of the tokenizer and of both runs (the first seed with --seeds)."""
    seeds: int = 1
    """Train each arm this many times, with seeds seed, seed+1, ... (tokenizer included); > 1: OUT/<arm>/seed<k>/."""
    overwrite: bool = False
    """Redo the stages in --out whose inputs (data, flags, SIDs) changed, replacing their outputs. Without
    it such a stage is refused (exit 2, naming what changed); stages with the same inputs are reused."""
    tokenizer: TokenizerOptions = field(default_factory=TokenizerOptions)
    """The tokenizer's options (python -m store.tokenizer's flags as --tokenizer.FLAG: --tokenizer.num-sids,
    --tokenizer.min-steps, --tokenizer.select.train-rows, ...); compare sets its --data, --out, --seed,
    --high-card and --from-run."""
    trainer: TrainOptions = field(default_factory=TrainOptions)
    """The trainer's options for both runs (python -m trainer's flags as --trainer.FLAG: --trainer.optim.dense-lr,
    --trainer.eval.metric, --trainer.model.num-layers, ...); compare sets each run's --data, --model, --sids,
    --out, --epochs, --batch-size, --max-steps, --seed, --high-card and the ID model's
    --model.id_item_tokens, and turns the progress bar off."""

    def validate(self) -> None:
        """ConfigError naming the flag, the value and the rule."""
        # the dataset may be in object storage: a missing bucket or key, refused credentials or an
        # unreachable store are StorageErrors (a ConfigError) naming the URI
        if not fs.is_dir(self.data):
            raise fs.missing(self.data, "dataset folder does not exist", flag="--data")
        if not fs.is_file(fs.join(self.data, "spec.json")):
            raise ConfigError(f"--data {self.data}: not a dataset folder (no spec.json)")
        if not self.out:
            raise ConfigError("--out is required (an output folder)")
        if not fs.is_local(self.out):
            raise ConfigError(
                f"--out {self.out}: must be a local folder (runs, checkpoints and the report are written "
                "there); the dataset and --sids may be URIs"
            )
        for flag, value in (
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
            ("--nproc", self.nproc),
            ("--seeds", self.seeds),
        ):
            if value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")
        if self.max_steps < 0:
            raise ConfigError(f"--max-steps must be >= 0, got {self.max_steps}")
        self.tokenizer.validate("--tokenizer.")
        self.trainer.validate("--trainer.")
        if self.sids and not fs.is_file(fs.join(self.sids, "meta.json")):
            raise ConfigError(f"--sids {self.sids}: no meta.json there (not a SID folder from the tokenizer)")


@dataclass
class CompareConfig(RunsConfig):
    """One ID-vs-SID comparison."""

    scaling: str = ""
    """A bench_scaling.py output folder to include in the report (empty: that section says how to run it)."""

    def validate(self) -> None:
        """ConfigError naming the flag, the value and the rule."""
        super().validate()
        if self.scaling and not Path(self.scaling).is_dir():
            raise ConfigError(f"--scaling {self.scaling}: folder does not exist")
        for model in MODELS:  # one layout per OUT: a single run or seed folders, not both
            arm = Path(fs.local_path(self.out), model)
            if self.seeds > 1 and (arm / "summary.json").is_file():
                raise ConfigError(
                    f"--seeds {self.seeds}: {arm} holds a single-seed run; give another --out for seed folders"
                )
            if self.seeds == 1 and arm.is_dir() and any(arm.glob("seed*/summary.json")):
                raise ConfigError(
                    f"--seeds 1: {arm} holds seed folders from a --seeds run; pass that --seeds or another --out"
                )


@dataclass
class SeedLayout:
    """The folders of one seed of a comparison."""

    seed: int
    sids: str
    """The SID table folder: OUT/sids[/seed<k>], or --sids as given (a path or a URI)."""
    runs: dict[str, Path]
    """{model: run folder}."""
    logs: Path


def seed_layouts(cfg: CompareConfig) -> list[SeedLayout]:
    """One SeedLayout per seed: OUT/<what> with one seed, OUT/<what>/seed<k> with several (--sids: that
    table for every seed)."""
    out = Path(fs.local_path(cfg.out))
    layouts = []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        sub = Path(f"seed{seed}") if cfg.seeds > 1 else Path()
        sids = cfg.sids or str(out / "sids" / sub)  # not Path(cfg.sids): it would fold s3:// into s3:/
        runs = {model: out / model / sub for model in MODELS}
        layouts.append(SeedLayout(seed, sids, runs, out / "logs" / sub))
    return layouts


def python_env() -> dict[str, str]:
    """The environment of child processes: this interpreter's bin/ first on PATH (torchrun, python)."""
    env = os.environ.copy()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class StageFailed(RuntimeError):
    """A stage's process exited non-zero; ``returncode`` is its exit code (2: it rejected a flag, the
    config or the data, and its log's last lines, in the message, say which)."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


def run_logged(cmd: list[str], log_path: Path, what: str) -> None:
    """Run `cmd`, output to `log_path`; on failure raise StageFailed with the log's last lines."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=python_env())
    if rc != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise StageFailed(f"{what} failed (exit {rc}); log {log_path}:\n{tail}", rc)
    print(f"   done in {time.perf_counter() - t0:.0f} s (log: {log_path})", flush=True)


def tokenize_config(cfg: RunsConfig, out: str | Path, from_run: Path | None = None) -> TokenizeConfig:
    """The tokenizer stage's whole configuration: the user's --tokenizer.* options with the dataset,
    the output folder, the seed, --high-card and the ID run its learned rows come from."""
    from store.tokenizer.pipeline import TokenizeConfig

    return TokenizeConfig(
        data=cfg.data, out=str(out), seed=cfg.seed, high_card=cfg.high_card,
        from_run=str(from_run) if from_run else "", progress=False, options=cfg.tokenizer,
    )  # fmt: skip


def tokenize_command(config_file: Path, overwrite: bool = False) -> list[str]:
    """``python -m store.tokenizer --config FILE`` (FILE: a `tokenize_config` written by
    ``data_pipeline.cli.write_config``)."""
    cmd = [sys.executable, "-m", "store.tokenizer", "--config", str(config_file)]
    return cmd + (["--overwrite"] if overwrite else [])


def reads_id_run(cfg: RunsConfig) -> bool:
    """True when the tokenizer reads the rows the ID run learned (``--from-run``), so the ID run comes
    first: some tokenized feature's embeddings are ``learned`` and no --sids, and the out-of-fold codes
    are not forced (``--tokenizer.oof on``: every learned table comes from the tokenizer's FM)."""
    if cfg.sids or cfg.tokenizer.oof == "on":
        return False
    return learned_embeddings(cfg.data, cfg.high_card, cfg.tokenizer.embedding)


def learned_embeddings(data: str | Path, high_card: str = "", embedding: str | None = None) -> bool:
    """True when some feature the tokenizer tokenizes in ``data`` (under ``--high-card``, with
    ``--tokenizer.embedding`` or the default sources) takes its embeddings from the ``learned`` source:
    then the ID run comes first and the tokenizer reads the tables it learned (``--from-run``)."""
    from data_pipeline.spec import DatasetSpec, apply_high_card
    from store.tokenizer.embeddings import LEARNED
    from store.tokenizer.pipeline import feature_sources

    spec = apply_high_card(DatasetSpec.load(data), high_card)
    return LEARNED in feature_sources(spec, embedding or None).values()


def trainer_command(nproc: int, args: list[str]) -> list[str]:
    """``python -m trainer ARGS`` on one process, else under torchrun (standalone rendezvous)."""
    if nproc == 1:
        return [sys.executable, "-m", "trainer", *args]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
        "-m", "trainer", *args,
    ]  # fmt: skip


def train_config(cfg: RunsConfig, model: str, sids: str | Path, out: Path) -> TrainConfig:
    """One run's whole configuration: the ``--trainer.*`` options with the run's own fields; identical
    for every model except the model, the run folder and what sets the token count (a model that needs
    SIDs, as STORE: the SID table; the others, as ID: K tokens per high-cardinality feature)."""
    from store.models import registry

    needs_sids = registry.get(model).needs_sids
    opts = copy.deepcopy(cfg.trainer)
    opts.logging.progress = False  # the output goes to a log
    if not needs_sids:
        k = cfg.tokenizer.model.num_sids + (1 if cfg.tokenizer.disambiguate else 0)  # as many as STORE's SIDs
        opts.model_config.id_item_tokens = k
    run = {
        "data": cfg.data, "model": model, "sids": str(sids) if needs_sids else "", "out": str(out),
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "max_steps": cfg.max_steps, "seed": cfg.seed,
        "high_card": cfg.high_card,
    }  # fmt: skip
    options = {f.name: getattr(opts, f.name) for f in fields(TrainOptions)}
    return TrainConfig(**options, **run)


def train_command(nproc: int, config_file: Path, overwrite: bool = False) -> list[str]:
    """``python -m trainer --config FILE`` (FILE: a `train_config` written by ``trainer.config.write_toml``)
    with ``--resume`` (an interrupted run continues from its newest checkpoint; a warning if none) or
    ``--overwrite``."""
    return trainer_command(nproc, ["--config", str(config_file), "--overwrite" if overwrite else "--resume"])


OUT_ENTRIES = ("sids", *MODELS, "logs", "report")
"""What launch.compare writes in --out."""


def stage_state(folder: str | Path, done_file: str, expected: dict) -> tuple[str, list[str]]:
    """Where a stage's output folder stands against the inputs it would be made from now: ``new``
    (nothing there), ``done`` (finished from the same inputs: reuse it), ``partial`` (started from the
    same inputs: continue it) or ``changed`` (with what changed)."""
    from data_pipeline import outdir

    folder = Path(fs.local_path(folder))
    if not folder.is_dir() or not any(not p.name.startswith(".") for p in folder.iterdir()):
        return "new", []
    record = outdir.read_record(folder)
    if record is None or not record.get("inputs"):
        return "changed", ["it was written without a record of its inputs (by an older version)"]
    before = {k: v for k, v in record["inputs"].items() if k != "paths"}
    now = {k: v for k, v in expected.items() if k != "paths"}
    changed = []
    for phrase in outdir.differences(before, now):  # a flag that is also a checkpoint input: once
        for group in ("checkpoint.", "flags."):
            phrase = phrase.removeprefix(group)
        if phrase not in changed:
            changed.append(phrase)
    was = record["inputs"].get("paths", {}).get("data")
    if changed and was and was != expected.get("paths", {}).get("data"):
        changed.insert(0, f"--data was {was}")
    if changed:
        return "changed", changed
    return ("done" if (folder / done_file).is_file() else "partial"), []


def stale(cfg: RunsConfig, folder: str | Path, changed: list[str]) -> None:
    """Refuse a stage whose inputs changed, unless --overwrite (then it is redone)."""
    if cfg.overwrite:
        print(f"   {folder}: inputs changed ({'; '.join(changed)}): redone", flush=True)
        return
    raise ConfigError(
        f"--out {cfg.out}: {folder} was made from other inputs ({'; '.join(changed)}); pass --overwrite "
        "to redo the stages whose inputs changed, or choose another --out"
    )


def trainer_inputs(config_file: Path) -> dict:
    """The inputs the trainer run with ``--config config_file`` will record (TrainConfig.inputs), read
    back from the file as the trainer reads it."""
    from trainer.config import parse_args

    return parse_args(["--config", str(config_file)]).inputs()


def tokenize_stage(
    cfg: RunsConfig, sids: str, logs: Path, from_run: Path | None, at: str, of_seed: str = ""
) -> None:
    """Tokenize for seed ``cfg.seed`` into ``sids`` (``from_run``: the ID run whose learned rows it
    reads): reused when finished from the same inputs, continued when partial, refused or redone
    (--overwrite) when its inputs changed; nothing with --sids. ``at``: the progress prefix."""
    if cfg.sids:
        print(f"{at} SIDs: using {sids}", flush=True)
        return
    tok = tokenize_config(cfg, sids, from_run)
    state, changed = stage_state(sids, "meta.json", tok.inputs())
    if state == "done":
        print(f"{at} SIDs: {sids} exists, made from the same inputs: reused", flush=True)
        return
    if state == "changed":
        stale(cfg, sids, changed)
    m = cfg.tokenizer.model
    source = f"learned from {from_run}" if from_run else (cfg.tokenizer.embedding or "default sources")
    print(
        f"{at} tokenize{of_seed} ({m.method}, K={m.num_sids}, C={m.codebook_size}, {source}) -> {sids}",
        flush=True,
    )
    config_file = cli.write_config(tok, logs / "tokenize.json")
    # partial (a run that died midway) or changed with --overwrite: its files are replaced
    run_logged(tokenize_command(config_file, overwrite=state != "new"), logs / "tokenize.log", "tokenizer")


def train_stage(cfg: RunsConfig, run: TrainConfig, logs: Path, name: str, at: str, what: str) -> None:
    """Train ``run`` (a `train_config`, written to logs/train_<name>.toml) into its folder: reused when
    finished from the same inputs, continued when partial, refused or redone (--overwrite) when its
    inputs changed. ``at``: the progress prefix; ``what``: how the console names the run."""
    run_dir = Path(run.out)
    config_file = write_toml(run, logs / f"train_{name}.toml")
    state, changed = stage_state(run_dir, "summary.json", trainer_inputs(config_file))
    if state == "done":
        print(f"{at} train {what}: {run_dir} exists, same inputs: reused", flush=True)
        return
    if state == "changed":
        stale(cfg, run_dir, changed)
    verb = "continue" if state == "partial" else "train"
    print(f"{at} {verb} {what} ({cfg.epochs} epochs, {cfg.nproc} process(es)) -> {run_dir}", flush=True)
    cmd = train_command(cfg.nproc, config_file, overwrite=state == "changed")
    run_logged(cmd, logs / f"train_{name}.log", f"training {what}")


def run_comparison(cfg: CompareConfig) -> Path:
    """All stages for every seed, then the report; returns the report's markdown file."""
    from launch.report import write_report

    cfg.validate()
    from data_pipeline import outdir

    out = Path(fs.local_path(cfg.out))
    outdir.claim(  # an earlier comparison is kept: each stage below is reused only if its inputs match
        out, "compare", overwrite=cfg.overwrite, resume=True, local=True, legacy=OUT_ENTRIES,
        owned=OUT_ENTRIES, label="launch.compare",
    ).add(*OUT_ENTRIES)  # fmt: skip
    layouts = seed_layouts(cfg)
    first = reads_id_run(cfg)
    # (what, model) in order: learned embeddings come from the ID run, so it goes first
    order = [("train", "id"), ("tokenize", ""), ("train", "store")] if first else [
        ("tokenize", ""), ("train", "id"), ("train", "store")
    ]  # fmt: skip
    n_stages = len(order) * len(layouts) + 1
    stage = 0
    for lay in layouts:
        seed_cfg = replace(cfg, seed=lay.seed)
        of_seed = f" (seed {lay.seed})" if cfg.seeds > 1 else ""
        for what, model in order:
            stage += 1
            at = f"== {stage}/{n_stages}"
            if what == "tokenize":
                tokenize_stage(seed_cfg, lay.sids, lay.logs, lay.runs["id"] if first else None, at, of_seed)
            else:
                run = train_config(seed_cfg, model, lay.sids, lay.runs[model])
                train_stage(seed_cfg, run, lay.logs, model, at, f"{model}{of_seed}")
    print(f"== {n_stages}/{n_stages} report", flush=True)
    runs = {model: [lay.runs[model] for lay in layouts] for model in MODELS}
    sids = [lay.sids for lay in layouts] if not cfg.sids else cfg.sids
    return write_report(out / "report", runs, sids, scaling=Path(cfg.scaling) if cfg.scaling else None)


def split_trainer_args(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """(own flags, trainer flags): a command line split at its first '--' (the benchmarks' scripts pass
    what follows it to ``python -m trainer``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


DESCRIPTION = (
    "ID baseline vs STORE: tokenize, train both with the same budget, write a report. "
    "The trainer's options for both runs are --trainer.FLAG (python -m trainer's flags)."
)


def run_cli(
    config_type: type, argv: list[str] | None, prog: str, description: str, run
) -> tuple[int, object]:
    """A launcher's command line (launch.compare, launch.frontier): ``argv`` parsed into ``config_type``
    and ``run(cfg)`` called. Returns (0, its result), or (exit code, None) after printing the error:
    2 for bad flags or input (and a stage that rejected its input), 1 for a stage that failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        extra = " ".join(argv[argv.index("--") + 1 :])
        print(
            f"error: '-- {extra}': the trainer's flags are given as --trainer.FLAG "
            f"(--trainer.optim.dense-lr, --trainer.model.num-layers: {prog} --help)",
            file=sys.stderr,
        )
        return 2, None
    cfg = cli.parse(config_type, argv, prog=prog, description=description)
    try:
        return 0, run(cfg)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2, None
    except StageFailed as e:  # exit 2 when the stage rejected its input (its own exit code 2)
        print(f"error: {e}", file=sys.stderr)
        return 2 if e.returncode == 2 else 1, None
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1, None


def main(argv: list[str] | None = None) -> int:
    from launch.report import console_lines

    code, report = run_cli(CompareConfig, argv, "python -m launch.compare", DESCRIPTION, run_comparison)
    if code:
        return code
    print(f"report: {report}")
    print(f"tensorboard: tensorboard --logdir {report.parent / 'tensorboard'}")
    # last: the verdicts, each tokenized feature's test coverage and collision rates, and whether the
    # arms are comparable at all (not comparable still exits 0: every stage did its work)
    for line in console_lines(report.parent):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
