"""Semantic tokenization: item embeddings -> K semantic IDs per item (the STORE tokenizer stage).

``python -m store.tokenizer --data DIR --out OUT --method opmq|rqvae|opq --num-sids K --codebook-size C``

1. item embeddings from ``--embedding`` (see ``store.tokenizer.embeddings``), streamed;
2. a tokenizer trained by minibatch Adam on (a sample of at most ``--max-train-items`` of) them, after
   standardisation (per dimension; with one scale for all for the FM's rows, which come in its logit
   frame: ``learned.logit_frame``) and k-means initialisation of the codebooks; dead codewords are
   re-seeded;
3. every item streamed through the tokenizer in batches into OUT/sid_table.parquet
   (item_id, sid_0..sid_{K-1}, int64), with OUT/tokenizer/ (config.json + weights.pt) and OUT/meta.json
   (method, sizes, embedding source, quality: relative reconstruction error, per-codebook utilisation
   and perplexity, collision rate, coverage).

Python API: ``train_tokenizer``, ``load_tokenizer``, ``SemanticTokenizer.encode`` (cold-start items),
``tokenize_catalog``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from data_pipeline import cli, fs, outdir
from data_pipeline.cli import ConfigError
from data_pipeline.spec import DataError, DatasetSpec, apply_high_card
from store.sid import SidTable
from store.tokenizer import learned, sasrec, select
from store.tokenizer.config import FLAT, FitConfig, TokenizerConfig, TokenizerOptions
from store.tokenizer.embeddings import LEARNED, ItemEmbeddings, default_source
from store.tokenizer.quantizers import SemanticTokenizer, load_tokenizer
from store.tokenizer.select import Rule
from store.tokenizer.sources import open_source

__all__ = [
    "FitConfig",
    "TokenizeConfig",
    "train_tokenizer",
    "load_tokenizer",
    "tokenize_catalog",
    "sample_embeddings",
    "relative_recon_error",
    "main",
]

log = logging.getLogger(__name__)

SID_TABLE = "sid_table.parquet"
META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"


# -- training ------------------------------------------------------------------------------------


def train_tokenizer(
    embeddings: Tensor,
    config: TokenizerConfig,
    train: FitConfig | None = None,
    progress: bool = True,
    isotropic: bool = False,
) -> SemanticTokenizer:
    """Fit a tokenizer to embeddings [N, D] (float). Returns it in eval mode; ``tok.history`` has the
    mean losses of each epoch and ``tok.reseeded`` the number of re-seeded codewords.

    The embeddings are standardised per dimension (mean 0, std 1), or with ``isotropic`` by one scale
    for all (their RMS std) so that a dimension keeps the weight the embedding's metric gives it (the
    FM's rows in its logit frame: ``learned.logit_frame``)."""
    train = train or FitConfig()
    train.validate()
    x = embeddings.detach().float().cpu()
    if x.dim() != 2 or len(x) == 0:
        raise DataError(f"need a non-empty [N, D] embedding matrix, got shape {list(x.shape)}")
    if not torch.isfinite(x).all():
        raise DataError("item embeddings contain NaN or inf")
    config.input_dim = x.shape[1]
    torch.manual_seed(train.seed)
    gen = torch.Generator().manual_seed(train.seed)
    tok = SemanticTokenizer(config)
    tok.mean.copy_(x.mean(0))
    std = x.std(0, unbiased=False)
    tok.std.copy_((std.pow(2).mean().sqrt().expand_as(std) if isotropic else std).clamp(min=1e-6))
    x = tok.standardise(x)

    q = tok.quantizer
    sample = x[torch.randperm(len(x), generator=gen)[: train.kmeans_sample]]
    q.init_codebooks(sample, train.kmeans_iters, gen)

    K, C = config.num_sids, config.codebook_size
    bs = min(train.batch_size, len(x))
    steps_per_epoch = math.ceil(len(x) / bs)
    epochs = max(train.epochs, math.ceil(train.min_steps / steps_per_epoch))
    opt = torch.optim.Adam(q.parameters(), lr=train.lr)
    usage = torch.zeros(K, C)
    tok.history, tok.reseeded, step = [], 0, 0
    bar = tqdm(
        total=epochs * steps_per_epoch, desc=f"train {config.method}", unit="step", disable=not progress
    )
    q.train()
    for _ in range(epochs):
        sums: dict[str, float] = {}
        for idx in torch.randperm(len(x), generator=gen).split(bs):
            xb = x[idx]
            out = q(xb)
            opt.zero_grad(set_to_none=True)
            out.losses["total"].backward()
            opt.step()
            usage.scatter_add_(1, out.codes.t(), torch.ones(K, len(xb)))
            step += 1
            if step % train.reseed_every == 0:
                dead = usage == 0
                tok.reseeded += q.reseed(dead, xb, gen)
                _reset_adam_rows(opt, q.codebooks, dead)
                usage.zero_()
            for k, v in out.losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(xb)
            bar.update(1)
        tok.history.append({k: v / len(x) for k, v in sums.items()})
        bar.set_postfix(loss=f"{tok.history[-1]['total']:.4f}")
    bar.close()
    return tok.eval()


def _reset_adam_rows(opt: torch.optim.Adam, codebooks: Tensor, dead: Tensor) -> None:
    """A re-seeded codeword starts with fresh Adam moments, not those of the dead one."""
    state = opt.state.get(codebooks, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][dead] = 0


def sample_embeddings(emb: ItemEmbeddings, max_items: int, seed: int = 0, batch_size: int = 65_536) -> Tensor:
    """A uniform sample of at most max_items embeddings [M, D], streamed (all of them if fewer)."""
    gen = torch.Generator().manual_seed(seed)
    p = min(1.0, 1.1 * max_items / max(emb.num_items, 1))  # 10% slack, trimmed below
    kept = []
    for _, e in emb.batches(batch_size):
        kept.append(e if p >= 1 else e[torch.rand(len(e), generator=gen) < p])
    x = torch.cat(kept) if kept else torch.empty(0, emb.dim)
    if len(x) > max_items:
        x = x[torch.randperm(len(x), generator=gen)[:max_items]]
    return x


def relative_recon_error(tok: SemanticTokenizer, embeddings: Tensor) -> float:
    """sum ||e - dec(SID(e))||^2 / sum ||e - mean(e)||^2: 0 is perfect, 1 is as good as predicting the mean."""
    e = embeddings.float()
    err = (tok.reconstruct(e) - e).pow(2).sum()
    return float(err / (e - e.mean(0)).pow(2).sum().clamp(min=1e-12))


# -- quality statistics --------------------------------------------------------------------------


def codebook_stats(counts: Tensor) -> tuple[list[float], list[float]]:
    """counts [K, C] -> per codebook: utilisation (fraction of codewords used) and perplexity exp(H)."""
    counts = counts.double()
    used = (counts > 0).double().mean(1)
    p = counts / counts.sum(1, keepdim=True).clamp(min=1)
    entropy = -(p * p.clamp(min=1e-30).log()).sum(1)
    return used.tolist(), entropy.exp().tolist()


def sid_keys(codes: Tensor, codebook_size: int) -> Tensor:
    """One int64 key per item for its whole SID tuple codes [B, K]: exact mixed radix when C^K < 2^62,
    else a 64-bit multiplicative hash (a false collision has probability ~N^2 / 2^64)."""
    K = codes.shape[1]
    if K * math.log2(max(codebook_size, 2)) < 62:
        key = torch.zeros(len(codes), dtype=torch.long)
        for k in range(K):
            key = key * codebook_size + codes[:, k]
        return key
    key = torch.full((len(codes),), 0x12345678, dtype=torch.long)
    for k in range(K):  # int64 arithmetic wraps around: multiply-xor hashing
        key = (key ^ (codes[:, k] + 0x9E3779B9)) * 0x100000001B3
    return key


def collision_stats(keys: Tensor, weight: Tensor | None = None) -> tuple[float, int]:
    """(fraction of items whose SID tuple is shared with another item, number of distinct tuples); with
    ``weight`` (one per item, e.g. its train rows) the fraction is of the total weight (0 when it is 0)."""
    if len(keys) == 0:
        return 0.0, 0
    _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    shared = counts[inverse] > 1
    if weight is None:
        return float(shared.sum()) / len(keys), len(counts)
    total = float(weight.sum())
    return (float(weight[shared].sum()) / total if total else 0.0), len(counts)


# -- tokenizing a catalog ------------------------------------------------------------------------


def assign_codes(
    emb: ItemEmbeddings,
    tokenizer: SemanticTokenizer,
    rows: int,
    unseen_code: int | None = None,
    batch_size: int = 8192,
    progress: bool = True,
) -> tuple[Tensor, dict]:
    """Stream every embedded ID through the tokenizer: codes [rows, K] and quality statistics.

    A row without an embedding gets ``unseen_code`` in every position (the reserved code of the
    ``learned`` source); with ``unseen_code`` None it is a DataError (the trainer needs SIDs for
    every item 0..rows-1). Memory: the codes plus a seen-flag and an 8-byte tuple key per row.
    """
    K, C = tokenizer.cfg.num_sids, tokenizer.cfg.codebook_size
    if emb.dim != tokenizer.cfg.input_dim:
        raise DataError(f"embeddings have dim {emb.dim}, the tokenizer expects {tokenizer.cfg.input_dim}")
    codes = torch.full((rows, K), -1 if unseen_code is None else unseen_code, dtype=torch.long)
    seen = torch.zeros(rows, dtype=torch.bool)
    counts = torch.zeros(K, C, dtype=torch.long)
    keys = []
    t0 = time.perf_counter()
    bar = tqdm(
        total=rows, desc=f"assign SIDs ({emb.source})", unit="id", unit_scale=True, disable=not progress
    )
    for ids, e in emb.batches(batch_size):
        if seen[ids].any() or len(torch.unique(ids)) != len(ids):
            raise DataError(f"{emb.source} embeddings: ID {_first_dup(ids, seen)} appears twice")
        seen[ids] = True
        c = tokenizer.encode(e)
        codes[ids] = c
        counts.scatter_add_(1, c.t(), torch.ones(K, len(ids), dtype=torch.long))
        keys.append(sid_keys(c, C))
        bar.update(len(ids))
    bar.close()
    if unseen_code is None and not seen.all():
        missing = (~seen).nonzero().flatten()
        raise DataError(
            f"{emb.source} embeddings: {len(missing)} of {rows} item IDs have no embedding "
            f"(first: {missing[:5].tolist()}); every item 0..{rows - 1} needs one"
        )
    seconds = time.perf_counter() - t0
    n = int(seen.sum())
    util, ppl = codebook_stats(counts)
    rate, unique = collision_stats(torch.cat(keys) if keys else torch.empty(0, dtype=torch.long))
    return codes, {
        "items_tokenized": n,
        "coverage": n / max(rows, 1),
        "missing_items": rows - n,
        "utilisation": util,
        "perplexity": ppl,
        "collision_rate": rate,
        "unique_sids": unique,
        "assign_seconds": seconds,
        "assign_items_per_s": n / max(seconds, 1e-9),
    }


def tokenize_catalog(
    emb: ItemEmbeddings,
    tokenizer: SemanticTokenizer,
    out_dir: str | os.PathLike,
    batch_size: int = 8192,
    progress: bool = True,
) -> dict:
    """Every item of ``emb`` through the tokenizer into out_dir/sid_table.parquet (+ meta.json),
    written atomically once every item has its codes. Returns the quality statistics."""
    codes, stats = assign_codes(emb, tokenizer, emb.num_items, None, batch_size, progress)
    SidTable({"item_id": codes}, tokenizer.cfg.codebook_size, tokenizer.cfg.method).save(out_dir)
    return stats


def _first_dup(ids: Tensor, seen: Tensor) -> int:
    if seen[ids].any():
        return int(ids[seen[ids]][0])
    u, c = torch.unique(ids, return_counts=True)
    return int(u[c > 1][0])


# -- sources per feature -------------------------------------------------------------------------


def feature_sources(spec: DatasetSpec, embedding: str | None) -> dict[str, str]:
    """{tokenized feature: embedding source}. The item: ``--embedding``, else content when the item
    table has an embedding column, else learned (``embeddings.item_sources`` says why learned leads
    text and SASRec). Every other feature: learned (the one source a non-item feature has)."""
    out = {}
    for f in spec.high_cardinality:
        if f == spec.item_id:
            out[f] = embedding or default_source(spec)
        else:
            out[f] = LEARNED
    return out


def learned_embeddings(
    args: TokenizeConfig, spec: DatasetSpec, features: list[str], progress: bool
) -> tuple[dict[str, Tensor], str]:
    """({feature: [rows, D] rows learned on the train split}, origin)."""
    if not features:
        return {}, ""
    if args.from_run:
        return learned.from_run(args.from_run, spec, features), f"run {args.from_run}"
    fm = replace(args.options.fm, seed=args.seed)
    return learned.train_fm(args.data, spec, features, fm, progress), FM_ORIGIN


FM_ORIGIN = "fm (train split)"


def out_of_fold_rows(
    args: TokenizeConfig, spec: DatasetSpec, features: list[str], full: dict[str, Tensor], keys: tuple[str, ...],
    progress: bool,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:  # fmt: skip
    """({feature: [F, rows, D]}: for each fold, the rows an FM learned without that fold's train rows,
    rotated onto ``full``'s (the FM's rows learned on the whole split; ``learned.align``);
    {feature: [F, rows]}: how often each row occurs in the train rows outside each fold)."""
    num_folds = args.options.oof_folds
    per_fold = learned.train_counts(args.data, spec, features, progress, folds=(keys, num_folds))
    outside = {f: per_fold[f].sum(0, keepdim=True) - per_fold[f] for f in features}
    fm = replace(args.options.fm, seed=args.seed)
    rows: dict[str, list[Tensor]] = {f: [] for f in features}
    for j in range(num_folds):
        fold = learned.train_fm(args.data, spec, features, fm, progress, leave_out=(keys, num_folds, j))
        for f in features:
            rows[f].append(learned.align(fold[f], full[f], outside[f][j].float()))
    return {f: torch.stack(r) for f, r in rows.items()}, outside


def sid_table(
    built: dict[str, Built], codebook_size: int, method: str, item_feature: str, keys: tuple[str, ...]
) -> SidTable:
    """The SID table of tokenized features ``built`` (with their out-of-fold codes, if any)."""
    folds = {f: b.folds for f, b in built.items() if b.folds is not None}
    return SidTable(
        {f: b.codes for f, b in built.items()}, codebook_size, method, item_feature=item_feature,
        folds=folds, fold_keys=keys if folds else (),
    )  # fmt: skip


def rule_embeddings(
    learned_rows: Tensor, count: Tensor, rule: Rule, factors: Tensor | None
) -> tuple[ItemEmbeddings, Tensor]:
    """A learned feature's embeddings under ``rule`` and the mask of its rows that get real SIDs:
    IDs seen ``min_count``+ times keep their learned row; rarer seen ones get the reserved code, or
    (``neighbours``) the row their co-occurrence predicts; IDs absent from train get the reserved code."""
    if rule.rare == "neighbours" and rule.min_count > 1:
        if factors is None:
            raise ValueError("neighbours needs co-occurrence factors")
        table, real = select.neighbour_rows(learned_rows, factors, count, rule.min_count), count >= 1
    else:
        table, real = learned_rows, count >= max(1, rule.min_count)
    return ItemEmbeddings.from_rows(table, real.nonzero().flatten(), LEARNED), real


def reserved_rows(count: Tensor, real: Tensor, rule: Rule) -> dict:
    """meta.json's account of a learned feature's rows: ``absent_rows`` (never in the train split,
    the reserved code), ``rare_rows`` (seen 1..min_count-1 times: the reserved code, or with
    ``rare == neighbours`` their neighbours' SIDs, counted as ``neighbour_rows``) and ``unseen_rows``
    (every row with the reserved code)."""
    absent = int((count == 0).sum())
    rare = int(((count >= 1) & (count < max(1, rule.min_count))).sum())
    return {
        "min_count": rule.min_count,
        "rare": rule.rare,
        "absent_rows": absent,
        "rare_rows": rare,
        "neighbour_rows": rare if rule.rare == "neighbours" else 0,
        "unseen_rows": int((~real).sum()),
    }


def split_counts(
    data: str, spec: DatasetSpec, features: list[str], split: str, progress: bool
) -> dict[str, Tensor]:
    """{feature: occurrences of each row in the split}; zeros when the dataset has no such split (an
    item catalog tokenized from its content alone)."""
    if not fs.is_dir(fs.join(data, split)):
        return {f: torch.zeros(spec.table_rows(f), dtype=torch.long) for f in features}
    return learned.train_counts(data, spec, features, progress, split=split)


def test_coverage(real: Tensor, train: Tensor, test: Tensor) -> float | None:
    """Of the test rows whose ID occurs in the train split (the rows the ID arm could learn), the share
    whose ID has real SIDs (None when no such row)."""
    known = test * (train > 0)
    total = int(known.sum())
    return int((known * real).sum()) / total if total else None


def row_collisions(codes: Tensor, real: Tensor, train: Tensor, codebook_size: int) -> float | None:
    """Of the train rows whose ID has real SIDs, the share whose ID shares its SID tuple with another ID
    (None when there is no such row)."""
    ids = real.nonzero().flatten()
    weight = train[ids].double()
    if len(ids) == 0 or float(weight.sum()) == 0:
        return None
    return collision_stats(sid_keys(codes[ids], codebook_size), weight)[0]


def tokenizer_dir(spec: DatasetSpec, feature: str) -> str:
    return TOKENIZER_DIR if feature == spec.item_id else f"{TOKENIZER_DIR}_{feature}"


# -- CLI -----------------------------------------------------------------------------------------


@dataclass
class TokenizeConfig:
    """Semantic tokenization: item embeddings -> K semantic IDs per item (the STORE tokenizer stage)."""

    data: str
    """Dataset folder (DIR/spec.json, DIR/items/*.parquet)."""
    out: str
    """Output folder for sid_table.parquet, meta.json, tokenizer/."""
    seed: int = 0
    """Seed of the sample, the tokenizer's training, the FM and SASRec."""
    high_card: str = ""
    """High-cardinality features 'f1,f2' to tokenize, overriding the spec's ('none': only the item)."""
    from_run: str = ""
    """learned: read the embedding tables of this finished trainer run (a raw-ID model such as --model id)
    instead of training a small FM on the train split."""
    progress: bool = True
    """Progress bars (--no-progress: none)."""
    overwrite: bool = False
    """Replace the SID table an earlier tokenizer run wrote in --out (only its files; others are kept).
    Without it an --out holding SIDs is refused: runs trained on them would silently change meaning."""
    config: str = ""
    """A JSON file with this command's settings (as launch.compare writes OUT/logs/tokenize.json); flags
    given beside it override its values."""
    options: Annotated[TokenizerOptions, FLAT] = field(default_factory=TokenizerOptions)
    """How the SIDs are made (store.tokenizer.config; launch.compare's --tokenizer.* section)."""

    def validate(self) -> None:
        """ConfigError naming the flag, the value and the rule."""
        self.options.validate("--")
        if not fs.is_dir(self.data):  # a path or an object-store URI
            raise fs.missing(self.data, "dataset folder does not exist", flag="--data")
        if self.from_run and not Path(self.from_run).is_dir():
            raise ConfigError(f"--from-run {self.from_run}: folder does not exist")

    def inputs(self) -> dict:
        """What the SID table is made from, recorded in --out (`data_pipeline.outdir`): the data's
        fingerprint, the finished run the learned rows come from (--from-run), and every flag that
        changes the codes (`TokenizerOptions.record`, --seed and --high-card; not --out, --progress,
        --threads, --overwrite, --config or the paths)."""
        return {
            "data": DatasetSpec.load(self.data).fingerprint,
            "from_run": outdir.folder_fingerprint(self.from_run, ("summary.json",)) if self.from_run else "",
            "flags": {**self.options.record(), "seed": self.seed, "high_card": self.high_card},
            "paths": {"data": self.data, "from_run": self.from_run},
        }


OUTPUT_FILES = (META_FILE, "sid_table.parquet", "sids_*.parquet", "tokenizer", "tokenizer_*", "*embeddings*")
"""What the tokenizer writes in --out (a SID folder written before output records is known by these)."""


def claim_output(args: TokenizeConfig) -> outdir.Output:
    """Take --out for the SID table (`data_pipeline.outdir.claim`): one holding earlier SIDs is refused
    unless --overwrite (their files are removed, the user's kept)."""
    return outdir.claim(
        args.out, "tokenize", overwrite=args.overwrite, local=True, legacy=META_FILE, owned=OUTPUT_FILES,
        label="tokenizer",
    )  # fmt: skip


OLD_SPELLINGS = {f"--sasrec-{old}": f"--sasrec.{new}" for old, new in sasrec.OLD_SPELLINGS.items()}
OLD_SPELLINGS |= {f"--fm-{name}": f"--fm.{name}" for name in ("dim", "epochs", "batch-size", "lr")}
OLD_SPELLINGS |= {"--rotation": "--opq-rotation", "--no-rotation": "--no-opq-rotation"}
"""Flags' old spellings -> their fields': SASRec's (``--sasrec-dim``: ``--sasrec.dim``), the FM's
(``--fm-dim``: ``--fm.dim``) and OPQ's rotation (``--no-rotation``: ``--no-opq-rotation``)."""


def run(args: TokenizeConfig) -> dict:
    """The whole stage; returns meta.json's content. ConfigError for bad flags, DataError for bad input."""
    args.validate()
    if args.options.threads:
        torch.set_num_threads(args.options.threads)
    spec = apply_high_card(DatasetSpec.load(args.data), args.high_card)
    if not spec.high_cardinality:
        raise DataError(
            f"{args.data}: dataset {spec.name!r} has no item and no high-cardinality feature to tokenize "
            "(name some with --high-card)"
        )
    sources = feature_sources(spec, args.options.embedding or None)
    output = claim_output(args)
    output.set_inputs(args.inputs())
    out = Path(args.out)
    progress = args.progress

    t0 = time.perf_counter()
    learned_features = [f for f, src in sources.items() if src == LEARNED]
    learned_rows, origin = learned_embeddings(args, spec, learned_features, progress)
    counts = split_counts(args.data, spec, list(sources), "train", progress)
    opts = args.options
    oof = bool(learned_features) and (opts.oof == "on" or (opts.oof == "auto" and not opts.disambiguate))
    fold_keys = tuple(spec.sparse_names) if oof else ()
    oof_rows, fold_rows, fold_counts = {}, {}, {}
    if oof:  # the FM's rows on the whole split (those above unless --from-run gave them), then one per fold
        oof_rows = learned_rows
        if args.from_run:
            fm = replace(opts.fm, seed=args.seed)
            oof_rows = learned.train_fm(args.data, spec, learned_features, fm, progress)
        fold_rows, fold_counts = out_of_fold_rows(args, spec, learned_features, oof_rows, fold_keys, progress)
    test_counts = split_counts(args.data, spec, list(sources), "test", progress)
    valid_counts = split_counts(args.data, spec, list(sources), "valid", progress)
    fixed: dict[str, Built] = {}  # features whose embeddings do not depend on the rule: built once

    def build(rule: Rule, sample: select.Sample | None, fitted: dict | None = None) -> dict[str, Built]:
        """Every feature tokenized under ``rule`` (``fitted``: reuse these features' tokenizers)."""
        built = {}
        for f, source in sources.items():
            if source != LEARNED and f in fixed:
                built[f] = fixed[f]
                continue
            if source == LEARNED:
                factors = sample.factors.get(f) if sample else None
                source_rows = oof_rows[f] if rule.oof else learned_rows[f]
                isotropic = rule.oof or not args.from_run  # the FM's rows, in its logit frame
                emb, real = rule_embeddings(source_rows, counts[f], rule, factors)
                rows, unseen_code = spec.table_rows(f), args.options.model.codebook_size
            else:
                sas_cfg = replace(args.options.sasrec, seed=args.seed)
                emb = open_source(args.data, spec, source, args.out, sasrec_config=sas_cfg, progress=progress)
                rows, unseen_code, real = emb.num_items, None, torch.ones(emb.num_items, dtype=torch.bool)
                isotropic = False
            tok = (fitted or {}).get(f)
            built[f] = tokenize_feature(
                args, spec, f, source, emb, rows, unseen_code, real, counts[f], progress, tok, isotropic
            )
            built[f].stats["test_coverage"] = test_coverage(real, counts[f], test_counts[f])
            built[f].stats["valid_coverage"] = test_coverage(real, counts[f], valid_counts[f])
            if source == LEARNED:
                built[f].stats |= reserved_rows(counts[f], real, rule)
                if rule.oof:
                    built[f].folds = fold_codes(f, rule, factors, built[f].tokenizer, rows, unseen_code)
                    built[f].stats["oof_folds"] = args.options.oof_folds
            else:
                built[f].stats["unseen_rows"] = 0
                fixed[f] = built[f]
        return built

    def fold_codes(
        f: str, rule: Rule, factors, tok: SemanticTokenizer | None, rows: int, unseen_code: int
    ) -> Tensor:
        """[F, rows, K]: feature f's codes of each fold, from its rows learned without that fold."""
        out = []
        for j in range(args.options.oof_folds):
            if tok is None:  # no ID has real SIDs under this rule
                out.append(torch.full((rows, args.options.model.num_sids), unseen_code, dtype=torch.long))
                continue
            emb, _ = rule_embeddings(fold_rows[f][j], fold_counts[f][j], rule, factors)
            out.append(assign_codes(emb, tok, rows, unseen_code, args.options.encode_batch_size, False)[0])
        return torch.stack(out)

    forced = not learned_features or args.options.min_count > 0 or opts.oof == "on"
    if forced:
        rule = Rule(max(1, args.options.min_count), args.options.rare or "reserved", oof=opts.oof == "on")
        sample = None
        if rule.rare == "neighbours" and rule.min_count > 1:
            sample = select.load_sample(
                args.data, spec, learned_features, args.options.select, args.seed, progress
            )
        chosen, selection = build(rule, sample), {"forced": True, "chosen": rule.name, "candidates": []}
    else:
        chosen, selection, rule = choose(args, spec, learned_features, build, progress, fold_keys)
    if rule.oof:
        origin = f"{FM_ORIGIN}, out-of-fold codes for the train rows ({opts.oof_folds} folds)"
    unseen = any(b.unseen_code is not None for b in chosen.values())
    for f, b in chosen.items():
        if b.tokenizer is not None:
            b.tokenizer.save(out / tokenizer_dir(spec, f))
        if args.options.disambiguate:
            real = (
                b.codes[:, 0] != b.unseen_code
                if b.unseen_code is not None
                else torch.ones(len(b.codes), dtype=torch.bool)
            )
            b.codes, extra = disambiguate(b.codes, real, counts[f], args.options.model.codebook_size)
            b.stats |= extra
    per_feature = {f: b.stats for f, b in chosen.items()}
    codebook_rows = args.options.model.codebook_size + (1 if unseen else 0)
    K = args.options.model.num_sids + (1 if args.options.disambiguate else 0)
    cfg = next((b.tokenizer.cfg for b in chosen.values() if b.tokenizer is not None), None)
    meta = {
        "method": args.options.model.method,
        "num_sids": K,
        "disambiguation_code": args.options.disambiguate,
        "codebook_size": codebook_rows,
        "codewords": args.options.model.codebook_size,
        "tokenizer_config": asdict(cfg) if cfg is not None else {},
        "dataset": spec.record(),
        "learned_from": origin,
        # embedding parameters: STORE's codebooks vs the raw-ID tables they replace (fp32)
        "embedding_params": {
            f: {"sid": K * codebook_rows, "raw_id": spec.table_rows(f)} for f in per_feature
        },
        "features": per_feature,
        "selection": selection,
        "total_seconds": time.perf_counter() - t0,
    }
    if unseen:
        meta["unseen_code"] = args.options.model.codebook_size
        meta["min_count"] = rule.min_count
        meta["rare"] = rule.rare
    if spec.item_id:  # the item's figures at the top level, as before per-feature SIDs
        meta |= {k: v for k, v in per_feature[spec.item_id].items() if k not in ("rows", "tokenizer")}
        meta["num_items"] = per_feature[spec.item_id]["rows"]
        meta["tokenizer"] = TOKENIZER_DIR
    item_feature = spec.item_id if spec.item_id else ""
    table = sid_table(chosen, codebook_rows, args.options.model.method, item_feature, fold_keys)
    table.meta = meta
    table.save(out)
    return json.loads((out / META_FILE).read_text())


def disambiguate(codes: Tensor, real: Tensor, count: Tensor, codebook_size: int) -> tuple[Tensor, dict]:
    """codes [rows, K] -> [rows, K + 1]: an extra code that tells apart the IDs sharing a SID tuple (as
    TIGER-style tokenizers do): among the IDs with real SIDs and the same tuple, the one seen most often in
    train gets 0, the next 1, ... (capped at codebook_size - 1; ties by ID). Rows without real SIDs get
    their reserved code again. Returns the codes and meta.json's figures (the collision rates before and
    after)."""
    extra = codes[:, :1].clone()  # rows without real SIDs: the reserved code
    ids = real.nonzero().flatten()
    keys = sid_keys(codes[ids], codebook_size)
    before = collision_stats(keys)[0]
    if len(ids):
        # sort by (tuple, count desc, id): a stable sort by count desc, then a stable sort by tuple
        order = torch.argsort(-count[ids], stable=True)
        order = order[torch.argsort(keys[order], stable=True)]
        sorted_keys = keys[order]
        start = torch.ones(len(order), dtype=torch.bool)
        start[1:] = sorted_keys[1:] != sorted_keys[:-1]
        group_start = torch.cummax(torch.where(start, torch.arange(len(order)), 0), 0).values
        rank = torch.arange(len(order)) - group_start
        extra[ids[order], 0] = rank.clamp(max=codebook_size - 1)
    out = torch.cat([codes, extra], 1)
    after, unique = collision_stats(sid_keys(out[ids], codebook_size))
    return out, {"collision_rate_before_disambiguation": before, "collision_rate": after,
                 "unique_sids": unique, "collision_rate_rows": row_collisions(out, real, count, codebook_size)}  # fmt: skip


@dataclass
class Built:
    """One feature tokenized: its codes [rows, K], statistics for meta.json, the fitted tokenizer (None
    when no ID had an embedding) and the code of rows without one (None: every row has one)."""

    codes: Tensor
    stats: dict
    tokenizer: SemanticTokenizer | None
    unseen_code: int | None
    folds: Tensor | None = None
    """[F, rows, K]: the out-of-fold codes (``--oof-folds``), None without."""


def tokenize_feature(
    args: TokenizeConfig, spec: DatasetSpec, f: str, source: str, emb: ItemEmbeddings, rows: int,
    unseen_code: int | None, real: Tensor, count: Tensor, progress: bool, tok: SemanticTokenizer | None = None,
    isotropic: bool = False,
) -> Built:  # fmt: skip
    """Fit a tokenizer to one feature's embeddings (or reuse ``tok``) and assign every row its codes
    (``isotropic``: one standardisation scale for every dimension, ``train_tokenizer``)."""
    log.info("%s: embeddings %s, dim %d, %d of %d rows", f, source, emb.dim, int(real.sum()), rows)
    cfg = replace(args.options.model, input_dim=emb.dim)
    x = sample_embeddings(emb, args.options.max_train_items, seed=args.seed)
    if len(x) == 0:
        if unseen_code is None:
            raise DataError(f"{args.data}: no embeddings found for feature {f!r} (--embedding {source})")
        log.warning("%s: no ID gets real SIDs under this rule; every row gets the reserved code", f)
        codes = torch.full((rows, args.options.model.num_sids), unseen_code, dtype=torch.long)
        stats = {"embedding_source": source, "rows": rows, "items_tokenized": 0, "coverage": 0.0,
                 "collision_rate": 0.0, "collision_rate_rows": 0.0, "unique_sids": 0}  # fmt: skip
        return Built(codes, stats, None, unseen_code)
    t1 = time.perf_counter()
    if tok is None:
        tok = train_tokenizer(x, cfg, replace(args.options.fit, seed=args.seed), progress, isotropic)
    train_seconds = time.perf_counter() - t1
    recon = relative_recon_error(tok, x[:100_000])
    codes, stats = assign_codes(emb, tok, rows, unseen_code, args.options.encode_batch_size, progress)
    stats = {
        "embedding_source": source,
        "embedding_dim": emb.dim,
        "rows": rows,
        "tokenizer": tokenizer_dir(spec, f),
        "train_items": len(x),
        "train_seconds": train_seconds,
        "train_loss": tok.history[-1],
        "reseeded_codewords": tok.reseeded,
        "recon_error_rel": recon,
        **stats,
        "collision_rate_rows": row_collisions(codes, real, count, args.options.model.codebook_size),
    }
    return Built(codes, stats, tok, unseen_code)


def choose(
    args: TokenizeConfig,
    spec: DatasetSpec,
    features: list[str],
    build,
    progress: bool,
    fold_keys: tuple[str, ...] = (),
) -> tuple[dict[str, Built], dict, Rule]:
    """Every candidate rule built and scored by the proxy on the valid split; the best one wins
    (``store.tokenizer.select``). Returns its features, meta.json's ``selection`` and the rule."""
    t0 = time.perf_counter()
    sample = select.load_sample(args.data, spec, features, args.options.select, args.seed, progress)
    raw = select.proxy_auc(sample.train, sample.valid, spec, None, args.options.select, args.seed)
    log.info("selection: proxy on raw IDs, valid AUC %.4f", raw)
    candidates, best, best_key, best_rule = [], None, (False, -math.inf), None
    item_feature = spec.item_id if spec.item_id else ""
    # one tokenizer per feature, fitted to every seen ID's row, encodes every candidate (the rules differ
    # in which IDs get which row); the chosen rule's tokenizers are then fitted to its own rows
    oof = bool(fold_keys)  # `all` first, out-of-fold last
    rules = select.candidate_rules(args.options.select.min_counts, args.options.rare, oof)
    fitted: dict[str, SemanticTokenizer] = {}
    for rule in rules:
        built = build(rule, sample, None if rule.oof else fitted)  # out-of-fold: the FM's rows, its own fit
        if rule is rules[0]:
            first = built
            fitted = {f: built[f].tokenizer for f in features if built[f].tokenizer is not None}
        unseen = any(b.unseen_code is not None for b in built.values())
        codebook_rows = args.options.model.codebook_size + (1 if unseen else 0)
        table = sid_table(built, codebook_rows, args.options.model.method, item_feature, fold_keys)
        auc = select.proxy_auc(sample.train, sample.valid, spec, table, args.options.select, args.seed)
        # a rule that leaves most of the valid rows' known IDs without real SIDs would make the comparison
        # "not comparable" (launch.report): it is chosen only when every rule does
        cover = {f: built[f].stats.get("valid_coverage") for f in features}
        low = [f for f, c in cover.items() if c is not None and c < select.COVERAGE_FLOOR]
        log.info(
            "selection: %s, valid AUC %.4f%s",
            rule.name,
            auc,
            f" (coverage < {select.COVERAGE_FLOOR}: {low})" if low else "",
        )
        candidates.append({
            "name": rule.name, "min_count": rule.min_count, "rare": rule.rare, "oof": rule.oof, "valid_auc": auc,
            "ids_tokenized": {f: built[f].stats["items_tokenized"] for f in features},
            "test_coverage": {f: built[f].stats.get("test_coverage") for f in features},
            "collision_rate": {f: built[f].stats.get("collision_rate") for f in features},
            "valid_coverage": cover,
            "eligible": not low,
        })  # fmt: skip
        # an eligible rule beats any other, then the higher AUC; ties keep the earlier (simpler) rule
        if (not low, auc) > best_key:
            best, best_key, best_rule = built, (not low, auc), rule
    if best_rule is None:  # every candidate scored NaN (one class in the valid sample): the first rule
        best_rule, best = rules[0], first
    if best_rule.min_count > 1:  # refitted to the IDs that get real SIDs under the chosen rule
        best = build(best_rule, sample)
    for c in candidates:
        c["chosen"] = c["name"] == best_rule.name
    selection = {
        "forced": False,
        "metric": "valid AUC of a proxy FM on the SIDs (store.tokenizer.select)",
        "rule": f"the best valid AUC among the rules whose valid coverage is >= {select.COVERAGE_FLOOR} for every "
        "feature (any rule when none is)",
        "train_rows": sum(b.batch_size for b in sample.train),
        "valid_rows": sum(b.batch_size for b in sample.valid),
        "raw_id_valid_auc": raw,
        "candidates": candidates,
        "chosen": best_rule.name,
        "seconds": time.perf_counter() - t0,
    }
    return best, selection, best_rule


def report(meta: dict) -> str:
    """The console summary: the selection, then one block per tokenized feature."""
    C = meta.get("codewords", meta["codebook_size"])
    lines = [f"method {meta['method']}  K={meta['num_sids']}  C={C}" + (
        f"  (+1 reserved code for IDs absent from the train split; learned from {meta['learned_from']})"
        if "unseen_code" in meta else ""
    )]  # fmt: skip
    sel = meta.get("selection") or {}
    if sel.get("candidates"):
        lines.append(
            f"learned IDs: {sel['chosen']}, chosen by the valid AUC of a proxy FM "
            f"({sel['train_rows']:,} train / {sel['valid_rows']:,} valid rows; raw IDs {sel['raw_id_valid_auc']:.4f}):"
        )
        lines += [
            f"  {'*' if c['chosen'] else ' '} {c['name']:<16} {c['valid_auc']:.4f}" for c in sel["candidates"]
        ]
    elif sel.get("chosen") and "unseen_code" in meta:
        lines.append(f"learned IDs: {sel['chosen']} (forced by --min-count / --rare)")
    for f, m in meta["features"].items():
        params = meta["embedding_params"][f]
        lines.append(f"{f}: embedding {m['embedding_source']}, {m['rows']} rows")
        if not m.get("items_tokenized"):
            lines.append(
                "  NO REAL SIDs: every row has the reserved code (STORE cannot use this feature; "
                "the comparison's verdict will say not comparable)"
            )
            continue
        lines.append(
            f"  embedding params     {params['sid']:,} SID codebook rows vs {params['raw_id']:,} raw-ID rows "
            f"({params['raw_id'] / params['sid']:.1f}x fewer)"
        )
        util, ppl = np.array(m["utilisation"]), np.array(m["perplexity"])
        cov = m.get("test_coverage")
        rows_coll = m.get("collision_rate_rows")
        lines += [
            f"  covered              {m['items_tokenized']} / {m['rows']} ({100 * m['coverage']:.2f}%)"
            + (f", {m['unseen_rows']} -> reserved code" if m.get("unseen_rows") else "")
            + (
                f" ({m['absent_rows']} absent from train, {m['rare_rows']} seen < {m['min_count']} times)"
                if m.get("rare_rows") and not m.get("neighbour_rows")
                else ""
            )
            + (
                f" ({m['neighbour_rows']} seen < {m['min_count']} times have their neighbours' SIDs)"
                if m.get("neighbour_rows")
                else ""
            ),
            "  test coverage        "
            + (
                f"{cov:.3f} of the test rows whose ID occurs in train have real SIDs"
                if cov is not None
                else "-"
            ),
            f"  recon error (rel.)   {m['recon_error_rel']:.4f}  (on {m['train_items']} training IDs)",
            f"  utilisation          mean {util.mean():.3f}  min {util.min():.3f}",
            f"  perplexity           mean {ppl.mean():.1f}  min {ppl.min():.1f}  (max {C})",
            f"  collision rate       {m['collision_rate']:.4f} of IDs"
            + (f", {rows_coll:.4f} of train rows" if rows_coll is not None else "")
            + f"  ({m['unique_sids']} distinct SID tuples)",
            f"  assign throughput    {m['assign_items_per_s']:,.0f} IDs/s",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = cli.parse(
        TokenizeConfig, argv, prog="python -m store.tokenizer", renames=OLD_SPELLINGS, config_flag="--config"
    )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        meta = run(args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info("wrote %s/: SID tables, %s and tokenizers", args.out, META_FILE)
    print(report(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
