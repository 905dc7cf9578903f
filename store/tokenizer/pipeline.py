"""Semantic tokenization: item embeddings -> K semantic IDs per item (the STORE tokenizer stage).

``python -m store.tokenizer --data DIR --out OUT --method opmq|rqvae|opq --num-sids K --codebook-size C``

1. item embeddings from ``--embedding`` (see ``store.tokenizer.embeddings``), streamed;
2. a tokenizer trained by minibatch Adam on (a sample of at most ``--max-train-items`` of) them, after
   standardisation and k-means initialisation of the codebooks; dead codewords are re-seeded;
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
import tyro
from torch import Tensor
from tqdm import tqdm

from data_pipeline import cli, fs
from data_pipeline.cli import ConfigError
from data_pipeline.spec import DataError, DatasetSpec, apply_high_card
from store.sid import SidTable
from store.tokenizer import learned, sasrec
from store.tokenizer.embeddings import LEARNED, SOURCES, ItemEmbeddings, default_source, open_source
from store.tokenizer.quantizers import METHODS, SemanticTokenizer, TokenizerConfig, load_tokenizer
from store.tokenizer.sasrec import SASRecConfig

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


@dataclass
class FitConfig:
    """How a tokenizer is fitted to the embeddings."""

    epochs: int = 10
    """Passes over the training embeddings (more if needed to reach min_steps)."""
    min_steps: int = 1000
    """At least this many optimiser steps (small catalogs need several passes)."""
    batch_size: int = 1024
    """Items per Adam step."""
    lr: float = 2e-3
    """Adam learning rate."""
    kmeans_sample: int = 20_000
    """Items used for the k-means initialisation of the codebooks."""
    kmeans_iters: int = 20
    """Lloyd iterations of that k-means."""
    reseed_every: int = 100
    """Every this many steps, codewords unused since the last check are re-seeded from the batch."""
    seed: Annotated[int, tyro.conf.Suppress] = 0
    """Seed for init, shuffling and re-seeding (the CLI's --seed)."""

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "kmeans_sample", "kmeans_iters", "reseed_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.min_steps < 0 or not self.lr > 0:
            raise ConfigError(f"--min-steps must be >= 0 and --lr > 0, got {self.min_steps} and {self.lr}")


# -- training ------------------------------------------------------------------------------------


def train_tokenizer(
    embeddings: Tensor, config: TokenizerConfig, train: FitConfig | None = None, progress: bool = True
) -> SemanticTokenizer:
    """Fit a tokenizer to embeddings [N, D] (float). Returns it in eval mode; ``tok.history`` has the
    mean losses of each epoch and ``tok.reseeded`` the number of re-seeded codewords."""
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
    tok.std.copy_(x.std(0, unbiased=False).clamp(min=1e-6))
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


def collision_stats(keys: Tensor) -> tuple[float, int]:
    """(fraction of items whose SID tuple is shared with another item, number of distinct tuples)."""
    if len(keys) == 0:
        return 0.0, 0
    _, counts = torch.unique(keys, return_counts=True)
    return float(counts[counts > 1].sum()) / len(keys), len(counts)


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
) -> tuple[dict[str, Tensor], dict[str, Tensor], str]:
    """({feature: [rows, D] rows learned on the train split}, {feature: train counts per row}, origin)."""
    if not features:
        return {}, {}, ""
    if args.from_run:
        tables, origin = learned.from_run(args.from_run, spec, features), f"run {args.from_run}"
    else:
        fm = learned.FMConfig(
            dim=args.fm_dim,
            epochs=args.fm_epochs,
            batch_size=args.fm_batch_size,
            lr=args.fm_lr,
            seed=args.seed,
        )
        tables, origin = learned.train_fm(args.data, spec, features, fm, progress), "fm (train split)"
    return tables, learned.train_counts(args.data, spec, features, progress), origin


def open_feature_source(
    args: TokenizeConfig, spec: DatasetSpec, feature: str, source: str, learned_rows: dict, counts: dict
) -> tuple[ItemEmbeddings, int | None]:
    """The embeddings of one tokenized feature and the code for rows without one (None: every row
    must have one)."""
    if source == LEARNED:
        seen = (counts[feature] >= max(1, args.min_count)).nonzero().flatten()
        return ItemEmbeddings.from_rows(learned_rows[feature], seen, LEARNED), args.codebook_size
    sas_cfg = replace(args.sasrec, seed=args.seed)
    return open_source(args.data, spec, source, args.out, sasrec_config=sas_cfg, progress=args.progress), None


def reserved_rows(count: Tensor | None, min_count: int, untokenized: int, unseen_code: int | None) -> dict:
    """meta.json's account of the rows that got the reserved code: ``absent_rows`` (never in the train
    split), ``rare_rows`` (seen fewer than ``min_count`` times) and their sum ``unseen_rows``."""
    if unseen_code is None or count is None:
        return {"unseen_rows": 0}
    absent = int((count == 0).sum())
    return {
        "min_count": min_count,
        "absent_rows": absent,
        "rare_rows": untokenized - absent,
        "unseen_rows": untokenized,
    }


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
    method: str = TokenizerConfig.method
    """Tokenizer: opmq, rqvae or opq."""
    num_sids: int = TokenizerConfig.num_sids
    """K: semantic IDs per feature."""
    codebook_size: int = TokenizerConfig.codebook_size
    """C: codewords per codebook."""
    embedding: str = ""
    """The item's embedding source: content, text, sasrec, content+sasrec or learned (empty: content if the
    item table has embeddings, else learned); other features always use learned."""
    from_run: str = ""
    """learned: read the embedding tables of this finished trainer run (a raw-ID model such as --model id)
    instead of training a small FM on the train split."""
    high_card: str = ""
    """High-cardinality features 'f1,f2' to tokenize, overriding the spec's ('none': only the item)."""
    min_count: int = 50
    """learned: IDs seen fewer than this many times in the train split share the reserved code with the
    absent ones. A rare ID's learned row mostly encodes the labels of its few training rows, so its SIDs
    would leak them into STORE's training (docs/results_any_table.md: 1 and 10 fall below the no-item model
    on the synthetic data, 20-100 beat the ID arm; 1 to 50 tie on MovieLens)."""
    fm_dim: int = learned.FMConfig.dim
    """learned (no --from-run): FM factor width."""
    fm_epochs: int = learned.FMConfig.epochs
    """learned: FM passes over the train split."""
    fm_batch_size: int = learned.FMConfig.batch_size
    """learned: FM rows per step."""
    fm_lr: float = learned.FMConfig.lr
    """learned: FM learning rate."""
    latent_dim: int = TokenizerConfig.latent_dim
    """OPMQ / RQ-VAE latent dim per code."""
    expert_hidden: int = TokenizerConfig.expert_hidden
    """OPMQ expert hidden width (0: linear)."""
    hidden_dim: int = TokenizerConfig.hidden_dim
    """Decoder / RQ-VAE encoder hidden width."""
    ortho_weight: float = TokenizerConfig.ortho_weight
    """OPMQ orthogonal loss weight."""
    commitment: float = TokenizerConfig.commitment
    """Commitment loss weight."""
    rotation: bool = TokenizerConfig.opq_rotation
    """OPQ: learn a rotation before product quantization (--no-rotation: plain PQ)."""
    max_train_items: int = 1_000_000
    """Train on a sample of this many items."""
    encode_batch_size: int = 8192
    """Items per batch when assigning SIDs."""
    seed: int = 0
    """Seed of the sample, the tokenizer's training, the FM and SASRec."""
    threads: int = 0
    """Torch intra-op threads (0: torch's default; 1 is much faster on a CPU shared with other jobs)."""
    progress: bool = True
    """Progress bars (--no-progress: none)."""
    fit: Annotated[FitConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=FitConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    """SASRec embeddings (--embedding sasrec or content+sasrec; --sasrec-dim is --sasrec.dim)."""

    def validate(self) -> None:
        """ConfigError naming the flag, the value and the rule."""
        for flag in ("num_sids", "codebook_size", "latent_dim", "hidden_dim", "max_train_items"):
            if getattr(self, flag) < 1:
                raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(self, flag)}")
        if self.encode_batch_size < 1:
            raise ConfigError(f"--encode-batch-size must be >= 1, got {self.encode_batch_size}")
        if self.min_count < 1:
            raise ConfigError(f"--min-count must be >= 1, got {self.min_count}")
        if self.threads < 0:
            raise ConfigError(f"--threads must be >= 0, got {self.threads}")
        if self.expert_hidden < 0:
            raise ConfigError(f"--expert-hidden must be >= 0, got {self.expert_hidden}")
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.embedding and self.embedding not in (*SOURCES, LEARNED):
            choices = ", ".join((*SOURCES, LEARNED))
            raise ConfigError(f"--embedding must be one of {choices}, got {self.embedding!r}")
        if not fs.is_dir(self.data):  # a path or an object-store URI
            raise fs.missing(self.data, "dataset folder does not exist", flag="--data")
        if self.from_run and not Path(self.from_run).is_dir():
            raise ConfigError(f"--from-run {self.from_run}: folder does not exist")
        self.fit.validate()


OLD_SPELLINGS = {f"--sasrec-{old}": f"--sasrec.{new}" for old, new in sasrec.OLD_SPELLINGS.items()}
"""The SASRec flags' old spellings (``--sasrec-dim``) -> their group's (``--sasrec.dim``)."""


def run(args: TokenizeConfig) -> dict:
    """The whole stage; returns meta.json's content. ConfigError for bad flags, DataError for bad input."""
    args.validate()
    if args.threads:
        torch.set_num_threads(args.threads)
    train = replace(args.fit, seed=args.seed)
    spec = apply_high_card(DatasetSpec.load(args.data), args.high_card)
    if not spec.high_cardinality:
        raise DataError(
            f"{args.data}: dataset {spec.name!r} has no item and no high-cardinality feature to tokenize "
            "(name some with --high-card)"
        )
    sources = feature_sources(spec, args.embedding or None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = args.progress

    t0 = time.perf_counter()
    learned_rows, counts, origin = learned_embeddings(
        args, spec, [f for f, src in sources.items() if src == LEARNED], progress
    )
    tables, per_feature, unseen = {}, {}, False
    for f, source in sources.items():
        emb, unseen_code = open_feature_source(args, spec, f, source, learned_rows, counts)
        unseen |= unseen_code is not None
        rows = spec.table_rows(f) if source == LEARNED else emb.num_items
        log.info("%s: embeddings %s, dim %d, %d of %d rows", f, source, emb.dim, emb.num_items, rows)
        cfg = TokenizerConfig(
            method=args.method,
            num_sids=args.num_sids,
            codebook_size=args.codebook_size,
            input_dim=emb.dim,
            latent_dim=args.latent_dim,
            expert_hidden=args.expert_hidden,
            hidden_dim=args.hidden_dim,
            commitment=args.commitment,
            ortho_weight=args.ortho_weight,
            opq_rotation=args.rotation,
        )
        x = sample_embeddings(emb, args.max_train_items, seed=args.seed)
        if len(x) == 0:
            if unseen_code is None:
                raise DataError(f"{args.data}: no embeddings found for feature {f!r} (--embedding {source})")
            log.warning(
                "%s: no ID occurs %d+ times in the train split (--min-count); every row gets the reserved code",
                f,
                args.min_count,
            )
            codes = torch.full((rows, args.num_sids), unseen_code, dtype=torch.long)
            tables[f], per_feature[f] = (
                codes,
                {
                    "embedding_source": source,
                    "rows": rows,
                    "items_tokenized": 0,
                    **reserved_rows(counts.get(f), args.min_count, rows, unseen_code),
                },
            )
            continue
        t1 = time.perf_counter()
        tok = train_tokenizer(x, cfg, train, progress=progress)
        train_seconds = time.perf_counter() - t1
        recon = relative_recon_error(tok, x[:100_000])
        tok.save(out / tokenizer_dir(spec, f))
        codes, stats = assign_codes(emb, tok, rows, unseen_code, args.encode_batch_size, progress)
        tables[f] = codes
        per_feature[f] = {
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
            **reserved_rows(counts.get(f), args.min_count, rows - stats["items_tokenized"], unseen_code),
        }
    codebook_rows = args.codebook_size + (1 if unseen else 0)
    K = args.num_sids
    meta = {
        "method": args.method,
        "num_sids": K,
        "codebook_size": codebook_rows,
        "codewords": args.codebook_size,
        "tokenizer_config": asdict(cfg),
        "dataset": spec.record(),
        "learned_from": origin,
        # embedding parameters: STORE's codebooks vs the raw-ID tables they replace (fp32)
        "embedding_params": {
            f: {"sid": K * codebook_rows, "raw_id": spec.table_rows(f)} for f in per_feature
        },
        "features": per_feature,
        "total_seconds": time.perf_counter() - t0,
    }
    if unseen:
        meta["unseen_code"] = args.codebook_size
        meta["min_count"] = args.min_count
    if spec.item_id:  # the item's figures at the top level, as before per-feature SIDs
        meta |= {k: v for k, v in per_feature[spec.item_id].items() if k not in ("rows", "tokenizer")}
        meta["num_items"] = per_feature[spec.item_id]["rows"]
        meta["tokenizer"] = TOKENIZER_DIR
    item_feature = spec.item_id if spec.item_id else ""
    SidTable(tables, codebook_rows, args.method, item_feature=item_feature, meta=meta).save(out)
    return json.loads((out / META_FILE).read_text())


def report(meta: dict) -> str:
    """The console summary: one block per tokenized feature."""
    C = meta.get("codewords", meta["codebook_size"])
    lines = [f"method {meta['method']}  K={meta['num_sids']}  C={C}" + (
        f"  (+1 reserved code for IDs seen < {meta.get('min_count', 1)} times in the train split, "
        f"learned from {meta['learned_from']})"
        if "unseen_code" in meta else ""
    )]  # fmt: skip
    for f, m in meta["features"].items():
        params = meta["embedding_params"][f]
        lines.append(f"{f}: embedding {m['embedding_source']}, {m['rows']} rows")
        lines.append(
            f"  embedding params     {params['sid']:,} SID codebook rows vs {params['raw_id']:,} raw-ID rows "
            f"({params['raw_id'] / params['sid']:.1f}x fewer)"
        )
        if not m.get("items_tokenized"):
            lines.append("  no ID seen in the train split: every row has the reserved code")
            continue
        util, ppl = np.array(m["utilisation"]), np.array(m["perplexity"])
        lines += [
            f"  covered              {m['items_tokenized']} / {m['rows']} ({100 * m['coverage']:.2f}%)"
            + (f", {m['unseen_rows']} -> reserved code" if m.get("unseen_rows") else "")
            + (
                f" ({m['absent_rows']} absent from train, {m['rare_rows']} seen < {m['min_count']} times)"
                if m.get("rare_rows")
                else ""
            ),
            f"  recon error (rel.)   {m['recon_error_rel']:.4f}  (on {m['train_items']} training IDs)",
            f"  utilisation          mean {util.mean():.3f}  min {util.min():.3f}",
            f"  perplexity           mean {ppl.mean():.1f}  min {ppl.min():.1f}  (max {C})",
            f"  collision rate       {m['collision_rate']:.4f}  ({m['unique_sids']} distinct SID tuples)",
            f"  assign throughput    {m['assign_items_per_s']:,.0f} IDs/s",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = cli.parse(TokenizeConfig, argv, prog="python -m store.tokenizer", renames=OLD_SPELLINGS)
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
