"""Semantic tokenization: item embeddings -> K semantic IDs per item (the STORE tokenizer stage).

``python -m store.tokenize --data DIR --out OUT --method opmq|rqvae|opq --num-sids K --codebook-size C``

1. item embeddings from ``--embedding`` (see ``store.item_embeddings``), streamed;
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

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor
from tqdm import tqdm

from data_pipeline.spec import DataError, DatasetSpec, atomic_write_text
from store import sasrec
from store.item_embeddings import SOURCES, ItemEmbeddings, default_source, open_source
from store.quantizers import METHODS, SemanticTokenizer, TokenizerConfig, load_tokenizer

__all__ = [
    "TrainConfig",
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
class TrainConfig:
    """How a tokenizer is trained."""

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
    seed: int = 0
    """Seed for init, shuffling and re-seeding."""

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "kmeans_sample", "kmeans_iters", "reseed_every"):
            if getattr(self, name) < 1:
                raise DataError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.min_steps < 0 or not self.lr > 0:
            raise DataError("--min-steps must be >= 0 and --lr > 0")


# -- training ------------------------------------------------------------------------------------


def train_tokenizer(
    embeddings: Tensor, config: TokenizerConfig, train: TrainConfig | None = None, progress: bool = True
) -> SemanticTokenizer:
    """Fit a tokenizer to embeddings [N, D] (float). Returns it in eval mode; ``tok.history`` has the
    mean losses of each epoch and ``tok.reseeded`` the number of re-seeded codewords."""
    train = train or TrainConfig()
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


def tokenize_catalog(
    emb: ItemEmbeddings,
    tokenizer: SemanticTokenizer,
    out_dir: str | os.PathLike,
    batch_size: int = 8192,
    progress: bool = True,
    require_all: bool = True,
) -> dict:
    """Stream every item through the tokenizer into out_dir/sid_table.parquet (atomic).

    Memory is bounded by one batch plus O(num_items) bytes of bookkeeping (a seen-flag and an 8-byte
    tuple key per item, for coverage and the collision rate). Returns the quality statistics. With
    require_all, an item ID without an embedding is a DataError and no table is written (the trainer
    needs SIDs for every item 0..num_items-1).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    K, C = tokenizer.cfg.num_sids, tokenizer.cfg.codebook_size
    if emb.dim != tokenizer.cfg.input_dim:
        raise DataError(f"embeddings have dim {emb.dim}, the tokenizer expects {tokenizer.cfg.input_dim}")
    schema = pa.schema([("item_id", pa.int64())] + [(f"sid_{k}", pa.int64()) for k in range(K)])
    path = out_dir / SID_TABLE
    tmp = out_dir / f".{SID_TABLE}.tmp-{os.getpid()}"
    seen = torch.zeros(emb.num_items, dtype=torch.bool)
    counts = torch.zeros(K, C, dtype=torch.long)
    keys = []
    t0 = time.perf_counter()
    bar = tqdm(total=emb.num_items, desc="assign SIDs", unit="item", unit_scale=True, disable=not progress)
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for ids, e in emb.batches(batch_size):
                if seen[ids].any() or len(torch.unique(ids)) != len(ids):
                    raise DataError(f"{emb.source} embeddings: item ID {_first_dup(ids, seen)} appears twice")
                seen[ids] = True
                codes = tokenizer.encode(e)
                counts.scatter_add_(1, codes.t(), torch.ones(K, len(ids), dtype=torch.long))
                keys.append(sid_keys(codes, C))
                cols = [pa.array(ids.numpy())] + [pa.array(codes[:, k].numpy()) for k in range(K)]
                writer.write_batch(pa.RecordBatch.from_arrays(cols, schema=schema))
                bar.update(len(ids))
        if require_all and not seen.all():
            missing = (~seen).nonzero().flatten()
            raise DataError(
                f"{emb.source} embeddings: {len(missing)} of {emb.num_items} item IDs have no embedding "
                f"(first: {missing[:5].tolist()}); every item 0..{emb.num_items - 1} needs one"
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        bar.close()
    seconds = time.perf_counter() - t0
    n = int(seen.sum())
    util, ppl = codebook_stats(counts)
    rate, unique = collision_stats(torch.cat(keys) if keys else torch.empty(0, dtype=torch.long))
    if n < emb.num_items:
        log.warning("%d of %d items have no embedding and no SIDs", emb.num_items - n, emb.num_items)
    return {
        "items_tokenized": n,
        "coverage": n / max(emb.num_items, 1),
        "missing_items": emb.num_items - n,
        "utilisation": util,
        "perplexity": ppl,
        "collision_rate": rate,
        "unique_sids": unique,
        "assign_seconds": seconds,
        "assign_items_per_s": n / max(seconds, 1e-9),
    }


def _first_dup(ids: Tensor, seen: Tensor) -> int:
    if seen[ids].any():
        return int(ids[seen[ids]][0])
    u, c = torch.unique(ids, return_counts=True)
    return int(u[c > 1][0])


# -- CLI -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    d, t = TokenizerConfig(), TrainConfig()
    p = argparse.ArgumentParser(prog="python -m store.tokenize", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dataset folder (DIR/spec.json, DIR/items/*.parquet)")
    p.add_argument("--out", required=True, help="output folder for sid_table.parquet, meta.json, tokenizer/")
    p.add_argument("--method", choices=METHODS, default=d.method, help="tokenizer")
    p.add_argument("--num-sids", type=int, default=d.num_sids, help="K: semantic IDs per item")
    p.add_argument("--codebook-size", type=int, default=d.codebook_size, help="C: codewords per codebook")
    p.add_argument(
        "--embedding", choices=SOURCES, default=None,
        help="item embedding source (default: content if the item table has embeddings, else text, else sasrec)",
    )  # fmt: skip
    p.add_argument("--latent-dim", type=int, default=d.latent_dim, help="OPMQ/RQ-VAE latent dim per code")
    p.add_argument(
        "--expert-hidden", type=int, default=d.expert_hidden, help="OPMQ expert hidden width (0: linear)"
    )
    p.add_argument(
        "--hidden-dim", type=int, default=d.hidden_dim, help="decoder / RQ-VAE encoder hidden width"
    )
    p.add_argument("--ortho-weight", type=float, default=d.ortho_weight, help="OPMQ orthogonal loss weight")
    p.add_argument("--commitment", type=float, default=d.commitment, help="commitment loss weight")
    p.add_argument("--no-rotation", action="store_true", help="OPQ: plain PQ, no learned rotation")
    p.add_argument("--epochs", type=int, default=t.epochs, help="tokenizer training epochs")
    p.add_argument("--min-steps", type=int, default=t.min_steps, help="at least this many training steps")
    p.add_argument("--batch-size", type=int, default=t.batch_size, help="tokenizer training batch size")
    p.add_argument("--lr", type=float, default=t.lr, help="tokenizer learning rate")
    p.add_argument(
        "--max-train-items", type=int, default=1_000_000, help="train on a sample of this many items"
    )
    p.add_argument("--encode-batch-size", type=int, default=8192, help="items per batch when assigning SIDs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=0,
        help="torch intra-op threads (0: torch's default; 1 is much faster on a CPU shared with other jobs)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    sasrec.add_arguments(p, prefix="sasrec-")
    return p


def run(args: argparse.Namespace) -> dict:
    """The whole stage; returns meta.json's content. DataError for bad input."""
    for flag in (
        "num_sids",
        "codebook_size",
        "latent_dim",
        "hidden_dim",
        "max_train_items",
        "encode_batch_size",
    ):
        if getattr(args, flag) < 1:
            raise DataError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.threads < 0:
        raise DataError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.expert_hidden < 0:
        raise DataError(f"--expert-hidden must be >= 0, got {args.expert_hidden}")
    if not Path(args.data).is_dir():
        raise DataError(f"--data {args.data}: dataset folder does not exist")
    train = TrainConfig(
        epochs=args.epochs, min_steps=args.min_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    train.validate()
    spec = DatasetSpec.load(args.data)
    source = args.embedding or default_source(spec)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress

    t0 = time.perf_counter()
    sas_cfg = sasrec.config_from_args(args, prefix="sasrec-", seed=args.seed)
    emb = open_source(args.data, spec, source, out, sasrec_config=sas_cfg, progress=progress)
    log.info("embeddings: %s, dim %d, %d items", source, emb.dim, emb.num_items)
    x = sample_embeddings(emb, args.max_train_items, seed=args.seed)
    if len(x) == 0:
        raise DataError(f"{args.data}: no item embeddings found for --embedding {source}")
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
        opq_rotation=not args.no_rotation,
    )
    t1 = time.perf_counter()
    tok = train_tokenizer(x, cfg, train, progress=progress)
    train_seconds = time.perf_counter() - t1
    recon = relative_recon_error(tok, x[:100_000])
    tok.save(out / TOKENIZER_DIR)
    stats = tokenize_catalog(emb, tok, out, batch_size=args.encode_batch_size, progress=progress)
    meta = {
        "method": cfg.method,
        "num_sids": cfg.num_sids,
        "codebook_size": cfg.codebook_size,
        "num_items": emb.num_items,
        "embedding_source": source,
        "embedding_dim": emb.dim,
        "tokenizer": TOKENIZER_DIR,
        "tokenizer_config": asdict(cfg),
        "train_items": len(x),
        "train_seconds": train_seconds,
        "train_loss": tok.history[-1],
        "reseeded_codewords": tok.reseeded,
        "recon_error_rel": recon,
        **stats,
        "total_seconds": time.perf_counter() - t0,
    }
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    return meta


def report(meta: dict) -> str:
    util, ppl = np.array(meta["utilisation"]), np.array(meta["perplexity"])
    lines = [
        f"method {meta['method']}  K={meta['num_sids']}  C={meta['codebook_size']}  "
        f"embedding {meta['embedding_source']} (dim {meta['embedding_dim']})",
        f"items covered        {meta['items_tokenized']} / {meta['num_items']} ({100 * meta['coverage']:.2f}%)",
        f"recon error (rel.)   {meta['recon_error_rel']:.4f}  (on {meta['train_items']} training items)",
        f"utilisation          mean {util.mean():.3f}  min {util.min():.3f}",
        f"perplexity           mean {ppl.mean():.1f}  min {ppl.min():.1f}  (max {meta['codebook_size']})",
        f"collision rate       {meta['collision_rate']:.4f}  ({meta['unique_sids']} distinct SID tuples)",
        f"assign throughput    {meta['assign_items_per_s']:,.0f} items/s",
    ]
    if meta["num_sids"] <= 8:
        lines.insert(4, "per codebook         " + "  ".join(f"{u:.2f}/{p:.1f}" for u, p in zip(util, ppl)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        meta = run(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info("wrote %s, %s and %s/", Path(args.out) / SID_TABLE, META_FILE, TOKENIZER_DIR)
    print(report(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
