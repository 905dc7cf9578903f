"""A run's place on disk and its state across processes: taking --out for the run (`claim_run`) and
reading a checkpoint back into the run's state for --resume (`load_run_state`)."""

from __future__ import annotations

from pathlib import Path

from data_pipeline import outdir
from trainer import distributed as D
from trainer.checkpoint import CHECKPOINT_DIR, CheckpointError, CheckpointManager
from trainer.config import RUN_ENTRIES, TrainConfig


def claim_run(cfg: TrainConfig, is_main: bool) -> outdir.Output:
    """Take --out for this run (`data_pipeline.outdir.claim`): a folder holding an earlier run is refused
    (exit 2) unless --resume (continued: exit 4 when its data, SID table or model changed since) or
    --overwrite (its files removed, the user's kept); the run's inputs are recorded there."""
    kw = dict(
        overwrite=cfg.overwrite, resume=cfg.resume, local=True, legacy=("summary.json", CHECKPOINT_DIR),
        owned=RUN_ENTRIES, label="trainer run", hint="--resume to continue it",
    )  # fmt: skip
    if not is_main:  # every rank decides on the folder as it is before the main rank changes it
        outdir.claim(cfg.out, "train", write=False, clear=False, **kw)
    D.barrier()
    output = outdir.claim(cfg.out, "train", write=is_main, **kw)
    inputs = cfg.inputs()
    before = (output.previous or {}).get("inputs", {})
    if cfg.resume and before.get("checkpoint"):
        changed = outdir.differences(before["checkpoint"], inputs["checkpoint"])
        if changed:
            was = before.get("paths", {})
            raise CheckpointError(
                f"--resume: the run in {cfg.out} was trained on other inputs ({'; '.join(changed)}; it used "
                f"--data {was.get('data')!r}, --sids {was.get('sids')!r}); resume with those, or pass "
                "--overwrite to start a new run there"
            )
    output.set_inputs(inputs)
    output.add(*RUN_ENTRIES)
    D.barrier()  # the earlier run's files are gone before any rank writes
    return output


def load_run_state(ckpt: CheckpointManager, path: Path, state: dict, env: D.DistEnv) -> bool:
    """Load the checkpoint `path` of `ckpt` into `state` (a run's state as the trainer saves it,
    filled in place); True when it was saved by as many ranks as `env` has.

    What the checkpoint does not hold is first dropped from `state`: the RNG streams when another
    number of ranks saved it (the caller re-seeds), the scheduler when it predates saving the
    scheduler (its position is the step), the best validation when it predates early stopping. A
    checkpoint that does not fit the model raises CheckpointError."""
    saved = CheckpointManager.keys(path)
    rng_key = f"rng.rank{env.rank}.torch"
    same_ranks = rng_key in saved and not any(k.startswith(f"rng.rank{env.world_size}.") for k in saved)
    if not same_ranks:
        del state["rng"]  # saved by another number of ranks
    if "scheduler.last_epoch" not in saved:
        del state["scheduler"]
    if "train.best_step" not in saved:  # no best weights kept either
        state["train"] = {"step": state["train"]["step"]}
    try:
        ckpt.load(path, state)
    except CheckpointError:
        raise
    except Exception as e:  # DCP reports missing keys / shape mismatches as generic errors
        hint = ""
        if "Missing key" in str(e) and "optim." in str(e):
            hint = (
                " -- a table changed between sharded (fused optimizer) and data_parallel (dense "
                "optimizer); resume with the same --sharding.* flags"
            )
        raise CheckpointError(
            f"{path}: does not fit this model/run ({type(e).__name__}: {e}){hint}"
        ) from None
    return same_ranks
