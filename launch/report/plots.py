"""The report's plot (validation metrics per epoch) and its links to the runs' TensorBoard folders."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from launch.report.runs import Run, Summaries, as_summaries, epoch_rows
from launch.report.text import finite_mean, finite_sd, label


def plot_epochs(summaries: Mapping[str, Summaries], path: Path) -> None:
    """Validation AUC, tail AUC and logloss per epoch for every arm (the 'one-epoch' effect): the mean
    over its seeds, and a band of one standard deviation when it has several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (
        ("auc", "validation AUC"),
        ("tail_auc", "validation tail-item AUC"),
        ("logloss", "validation logloss"),
    )
    for ax, (key, title) in zip(axes, panels):
        for name, runs in as_summaries(summaries).items():
            epochs = epoch_rows(runs)
            xs = list(epochs)
            values = [[e.value(key) for e in entries] for entries in epochs.values()]
            ys = np.array([finite_mean(v) for v in values])
            (line,) = ax.plot(xs, ys, marker="o", label=label(name))
            if len(runs) > 1:
                sd = np.array([finite_sd(v) for v in values])
                ax.fill_between(xs, ys - sd, ys + sd, color=line.get_color(), alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def link_tensorboard(runs: Mapping[str, Path], dest: Path) -> list[str]:
    """dest/<name> -> <run>/tensorboard (a symlink; a copy where links are not possible). A name may
    hold a '/' (arm/seed)."""
    dest.mkdir(parents=True, exist_ok=True)
    made = []
    for name, run in runs.items():
        src = (Path(run) / "tensorboard").resolve()
        if not src.is_dir():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        try:
            target.symlink_to(src, target_is_directory=True)
        except OSError:
            shutil.copytree(src, target)
        made.append(name)
    return made


def tensorboard_names(arms: Mapping[str, Sequence[Run]]) -> dict[str, Path]:
    """{'<arm>' or '<arm>/<seed folder>': run folder}: an arm of one run gets its own name."""
    out: dict[str, Path] = {}
    for arm, runs in arms.items():
        names = [r.path.name for r in runs]
        unique = len(set(names)) == len(names)
        for i, r in enumerate(runs):
            out[arm if len(runs) == 1 else f"{arm}/{names[i] if unique else f'run{i}'}"] = r.path
    return out
