"""The SID tables of a comparison (the tokenizer's meta.json, one per seed): their figures per
tokenized feature, the reasons they make the arms not comparable (test coverage, no real SIDs), the
console lines, and the report's "Tokenizer" section."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from data_pipeline import fs
from data_pipeline.spec import DataError
from launch.report.runs import Run, dataset_key, dataset_name
from launch.report.text import finite, fmt, md_table
from store.records import RunSummary, SidFeature, SidSelection, SidTableMeta


def read_meta(sids: str | Path | None) -> SidTableMeta | None:
    """The tokenizer's meta.json in the SID folder ``sids`` (a path or a URI); None without one.
    DataError when it is not JSON; StorageError when the store holding it cannot be read."""
    if not sids:
        return None
    path = fs.join(sids, "meta.json")
    if not fs.is_file(path):
        return None
    try:
        return SidTableMeta.from_dict(json.loads(fs.read_text(path)))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def check_sids(
    arms: Mapping[str, Sequence[Run]], metas: Sequence[SidTableMeta], sid_dirs: Sequence[str]
) -> None:
    """DataError when an SID table was built for another dataset than the runs' (its dataset fingerprint
    differs from theirs): its statistics would describe a table the runs did not use."""
    first = next(r for rs in arms.values() for r in rs)
    kind, want = dataset_key(first)
    if kind != "fingerprint":
        return
    for where, meta in zip(sid_dirs, metas, strict=True):
        record = meta.dataset
        got = record.fingerprint if record is not None else None
        if got and got != want:
            raise DataError(
                f"--sids {where}: built for dataset {record.name!r} (fingerprint {got}), but the runs "
                f"were trained on {dataset_name(first.summary)!r} (fingerprint {want})"
            )


def as_meta(meta: SidTableMeta | Mapping) -> SidTableMeta:
    """A SidTableMeta of ``meta`` (a SidTableMeta, or the content of a meta.json)."""
    return meta if isinstance(meta, SidTableMeta) else SidTableMeta.from_dict(meta)


def sid_features(meta: SidTableMeta | Mapping) -> dict[str, SidFeature]:
    """{tokenized feature: its figures} of a meta.json (older tables: the item's, at the top level)."""
    return as_meta(meta).tokenized()


def has_real_sids(m: SidFeature) -> bool:
    """Whether some ID of the feature has real SIDs (items_tokenized 0: every row has the reserved code;
    tables from before that count: assumed)."""
    return m.real_sids


def coverage_of(m: SidFeature) -> float | None:
    """Of the test rows whose ID occurs in the train split, the share whose ID has real SIDs; None when
    unknown (tables from before the tokenizer measured it, unless no ID has real SIDs: 0) or undefined
    (no test row's ID occurs in the train split)."""
    return m.test_coverage_of


@dataclass
class FeatureSids:
    """A tokenized feature over the SID tables of a comparison (one per seed): the worst of each figure."""

    feature: str
    coverage: float | None
    """The lowest test coverage (`coverage_of`); None when no table knows it."""
    collision_rate: float | None
    """The highest share of tokenized IDs whose SID tuple another ID shares."""
    collision_rate_rows: float | None
    """The same weighted by train rows (None in tables from before it was measured)."""
    real_sids: bool
    """Every table gives some ID of the feature real SIDs."""


def worst_features(metas: Sequence[SidTableMeta | Mapping]) -> list[FeatureSids]:
    """One FeatureSids per tokenized feature of the tables, in the first table's order."""
    figures: dict[str, list[SidFeature]] = {}
    for meta in metas:
        for f, m in sid_features(meta).items():
            figures.setdefault(f, []).append(m)
    out = []
    for f, ms in figures.items():
        coverage = finite(coverage_of(m) for m in ms)
        ids = finite(m.collision_rate for m in ms)
        rows = finite(m.collision_rate_rows for m in ms)
        out.append(FeatureSids(
            f, min(coverage, default=None), max(ids, default=None), max(rows, default=None),
            all(has_real_sids(m) for m in ms),
        ))  # fmt: skip
    return out


def sid_reasons(metas: Sequence[SidTableMeta | Mapping]) -> list[str]:
    """Why the tables make the arms not comparable, per tokenized feature: test coverage below
    COVERAGE_FLOOR (the worst over the tables), or no ID with real SIDs."""
    from store.tokenizer.select import COVERAGE_FLOOR  # the floor the tokenizer's selection keeps to

    reasons = []
    for f in worst_features(metas):
        if f.coverage is not None and f.coverage < COVERAGE_FLOOR:
            reasons.append(
                f"{f.feature}: {100 * f.coverage:.3g}% of the test rows whose ID occurs in train have real SIDs "
                f"(coverage {f.coverage:.3f} < {COVERAGE_FLOOR:.2f})"
            )
        elif not f.real_sids:
            reasons.append(f"{f.feature}: no ID has real SIDs (every row has the reserved code)")
    return reasons


def feature_lines(metas: Sequence[SidTableMeta | Mapping]) -> list[str]:
    """One console line per tokenized feature: its test coverage and collision rates (the worst over
    the tables)."""
    several = f" (worst of {len(metas)} SID tables)" if len(metas) > 1 else ""
    lines = []
    for f in worst_features(metas):
        line = (
            f"{f.feature}: coverage {fmt(f.coverage, 2)} (test rows with real SIDs), collision rate "
            f"{fmt(f.collision_rate)} of IDs / {fmt(f.collision_rate_rows)} of train rows{several}"
        )
        lines.append(line + ("" if f.real_sids else "; no real SIDs (every row has the reserved code)"))
    return lines


def embedding_dim(summaries: Mapping[str, Sequence[RunSummary]]) -> int | None:
    """D of the runs' tables, from their config (None when no run records it)."""
    for s in (s for runs in summaries.values() for s in runs):
        dim = s.config.model_config.embedding_dim
        if dim:
            return int(dim)
    return None


def section_selection(selection: SidSelection) -> str:
    """The tokenizer's choice among SID variants (meta.json's selection): one row per candidate, and the
    proxy on raw IDs as a reference when recorded. Keys it does not know are ignored."""
    forced = " (forced by a flag)" if selection.forced else ""
    rows = [[c.name if c.name is not None else "?", c.valid_auc, "yes" if c.chosen else ""]
            for c in selection.candidates]  # fmt: skip
    if not rows:  # forced (--min-count / --rare): nothing was tried
        return f"SID variant: {selection.chosen}{forced}."
    if selection.raw_id_valid_auc is not None:
        rows.append(["raw IDs (reference)", selection.raw_id_valid_auc, ""])
    metric = selection.metric if selection.metric is not None else "valid AUC"
    head = f"SID variants the tokenizer tried (by {metric}): chosen {selection.chosen}{forced}"
    return head + ".\n\n" + md_table(["candidate", "valid AUC", "chosen"], rows)


def section_tokenizer(sids: str | Path | None, dim: int | None = None) -> str:
    """The tokenizer's figures per tokenized feature, and each feature's embedding size in both arms
    (``sids``: the SID folder, a path or a URI; ``dim``: the runs' embedding width, for bytes; fp32
    tables). StorageError when the store holding ``sids`` cannot be read."""
    if not sids:
        return "No SID table was given (`--sids SIDS`, the folder `python -m store.tokenizer` wrote)."
    meta_path = fs.join(sids, "meta.json")
    meta = read_meta(sids)
    if meta is None:
        return f"No tokenizer meta.json in `{sids}` (`python -m store.tokenizer --data DIR --out SIDS` writes it)."
    features = meta.tokenized()
    head = (
        f"From `{meta_path}`: method {meta.method}, K = {meta.num_sids} semantic IDs per feature, "
        f"C = {meta.codeword_count} codewords per codebook"
    )
    if meta.unseen_code is not None:
        m = meta.min_count if meta.min_count is not None else 1
        if meta.rare == "neighbours" and m > 1:
            rare = (
                f" (IDs seen there fewer than {m} times have the SIDs their co-occurrence neighbours predict)"
            )
        elif m > 1:
            rare = f" or seen there fewer than {m} times"
        else:
            rare = ""
        head += (
            f", plus one reserved code for IDs absent from the train split{rare} "
            f"(learned from {meta.learned_from})"
        )
    rows = []
    for f, m in features.items():
        util, ppl = m.utilisation or [], m.perplexity or []
        rows.append([
            f, m.embedding_source, m.rows if m.rows is not None else meta.num_items, m.coverage,
            coverage_of(m), m.recon_error_rel,
            f"{fmt(sum(util) / len(util), 3)} / {fmt(sum(ppl) / len(ppl), 1)}" if util else "-",
            m.collision_rate, m.collision_rate_rows, m.unique_sids,
        ])  # fmt: skip
    text = head + ".\n\n" + md_table(
        ["feature", "embedding", "rows", "IDs tokenized", "test coverage", "recon error (rel.)",
         "utilisation / perplexity", "collision rate (IDs)", "collision rate (train rows)",
         "distinct SID tuples"],
        rows,
    )  # fmt: skip
    from store.tokenizer.select import COVERAGE_FLOOR

    text += (
        "\n\nIDs tokenized: the share of the feature's IDs with real SIDs. Test coverage: of the test rows "
        "whose ID occurs in the train split (those the ID arm could learn), the share whose ID has real SIDs "
        f"('-': not recorded by this tokenizer); below {COVERAGE_FLOOR:.2f} the verdict reads not comparable. "
        "Collision rate: the share of tokenized IDs (of train rows) whose SID tuple another ID shares."
    )
    if meta.selection is not None:
        text += "\n\n" + section_selection(meta.selection)
    params = meta.embedding_params
    if params:
        mib = (lambda n: f"{n * dim * 4 / 2**20:,.2f}") if dim else (lambda n: "-")
        real = {f: features.get(f, SidFeature()).real_sids for f in params}
        sizes = [
            [f, f"{p.raw_id:,}", mib(p.raw_id), f"{p.sid:,}", mib(p.sid),
             f"{p.raw_id / p.sid:,.0f}x" if real[f] else "no real SIDs"]
            for f, p in params.items()
        ]  # fmt: skip
        saved = {f: p for f, p in params.items() if real[f]}
        if saved:
            raw, sid = sum(p.raw_id for p in saved.values()), sum(p.sid for p in saved.values())
            sizes.append(["all tokenized", f"{raw:,}", mib(raw), f"{sid:,}", mib(sid), f"{raw / sid:,.0f}x"])
        text += (
            f"\n\nEmbedding rows and MiB (fp32, D = {dim}) per tokenized feature: the ID arm's raw-ID table "
            "vs STORE's K codebooks:\n\n"
            + md_table(["feature", "ID rows", "ID MiB", "STORE rows", "STORE MiB", "ratio"], sizes)
        )
        if len(saved) < len(params):
            left_out = " and is left out of the total" if saved else "; no feature has real SIDs: no total"
            text += (
                "\n\nA feature with no real SIDs (every row has the reserved code) saves no memory worth "
                f"reporting: it has no ratio{left_out}."
            )
    return text
