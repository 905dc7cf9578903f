"""SASRec (Kang & McAuley, 2018): pretrained item embeddings from next-item prediction.

``python -m store.tokenizer.sasrec --data DIR --out FILE`` streams the train split's item-history column (the
multi-valued sparse feature with ``item_ref=True``) and item column, trains a causal self-attention
encoder over each row's sequence ``history + [item]`` to predict every next item against sampled
negatives (binary cross-entropy, as in the paper), and writes the item embedding table as a parquet
(item_id, embedding).

Shape letters: B sequences, L positions (max_len), d embedding dim, N items, M negatives.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from torch import Tensor, nn
from tqdm import tqdm

from data_pipeline import cli
from data_pipeline.cli import ConfigError
from data_pipeline.spec import DataError, DatasetSpec, list_shards, open_shard, split_dir
from store.tokenizer.config import SASRecConfig
from store.tokenizer.embeddings import num_items_of, write_embeddings
from store.tokenizer.fit import fit

log = logging.getLogger(__name__)


class SASRec(nn.Module):
    """Causal transformer over item sequences; ``item_emb.weight[:N]`` are the item embeddings.

    forward(seq [B, L] int64, padded on the right with N) -> hidden states [B, L, d]; position t only
    attends to positions <= t, so right padding never leaks into real positions.
    """

    def __init__(self, num_items: int, cfg: SASRecConfig) -> None:
        super().__init__()
        self.num_items = num_items
        self.item_emb = nn.Embedding(num_items + 1, cfg.dim, padding_idx=num_items)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        layer = nn.TransformerEncoderLayer(
            cfg.dim, cfg.heads, 4 * cfg.dim, cfg.dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.item_emb.weight, std=cfg.dim**-0.5)
        with torch.no_grad():
            self.item_emb.weight[num_items].zero_()

    def forward(self, seq: Tensor) -> Tensor:
        L = seq.shape[1]
        x = self.item_emb(seq) * math.sqrt(self.item_emb.embedding_dim) + self.pos_emb.weight[:L]
        mask = nn.Transformer.generate_square_subsequent_mask(L, device=seq.device)
        return self.norm(self.encoder(self.drop(x), mask=mask, is_causal=True))

    def item_embeddings(self) -> Tensor:
        """[N, d]: the learned item embedding table (padding row dropped)."""
        return self.item_emb.weight[: self.num_items].detach()


def history_feature(spec: DatasetSpec) -> str:
    """The multi-valued sparse feature holding item IDs (spec.sparse with item_ref and multi)."""
    for f in spec.sparse:
        if f.item_ref and f.multi:
            return f.name
    raise DataError(
        f"spec {spec.name!r}: SASRec needs a multi-valued item-history feature (a sparse feature with "
        "multi=true and item_ref=true); use --embedding content or text"
    )


def build_sequences(
    offsets: np.ndarray, values: np.ndarray, items: np.ndarray, L: int, pad: int
) -> np.ndarray:
    """Per row, the last L+1 items of history + [item], left-aligned and right-padded: [R, L+1] int64."""
    hl = offsets[1:] - offsets[:-1]
    keep = np.minimum(hl + 1, L + 1)
    j = np.arange(L + 1)[None, :]
    src = (hl + 1 - keep)[:, None] + j  # index into this row's history + [item]
    from_hist = src < hl[:, None]
    idx = np.clip(offsets[:-1, None] + src, 0, max(len(values) - 1, 0))
    hist = values[idx] if len(values) else np.zeros_like(idx)
    seq = np.where(from_hist, hist, items[:, None])
    return np.where(j < keep[:, None], seq, pad).astype(np.int64)


def iter_sequences(
    data_dir: str | os.PathLike, spec: DatasetSpec, cfg: SASRecConfig, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Blocks of shuffled training sequences [R, L+1] (rows with at least one transition)."""
    hist_col, item_col = history_feature(spec), spec.item_id
    n = num_items_of(spec)
    shards = list_shards(split_dir(data_dir, "train"))
    for i in rng.permutation(len(shards)):
        path = shards[i]
        pf = open_shard(path)
        cols = [hist_col, item_col] + ([spec.label] if cfg.positives_only else [])
        missing = [c for c in cols if c not in pf.schema_arrow.names]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}")
        for batch in pf.iter_batches(batch_size=cfg.read_rows, columns=cols):
            hist = batch.column(0)  # null lists have zero length: read as empty histories
            items = batch.column(1).to_numpy(zero_copy_only=False).astype(np.int64)
            offsets = np.asarray(hist.offsets, dtype=np.int64)
            values = hist.values[offsets[0] : offsets[-1]].to_numpy(zero_copy_only=False).astype(np.int64)
            offsets = offsets - offsets[0]
            for col, arr in ((hist_col, values), (item_col, items)):
                if len(arr) and (arr.min() < 0 or arr.max() >= n):
                    raise DataError(f"{path} column {col!r}: item ID outside [0, {n})")
            seq = build_sequences(offsets, values, items, cfg.max_len, n)
            if cfg.positives_only:
                seq = seq[batch.column(2).to_numpy(zero_copy_only=False) > 0.5]
            seq = seq[(seq[:, 1] != n)]  # needs at least one transition
            yield seq[rng.permutation(len(seq))]


def sasrec_loss(model: SASRec, seq: Tensor, num_negatives: int, generator: torch.Generator) -> Tensor:
    """BCE of each real next item against M uniform negatives; seq [B, L+1]."""
    inp, tgt = seq[:, :-1], seq[:, 1:]
    valid = tgt != model.num_items
    h = model(inp)[valid]  # [V, d]
    pos = model.item_emb(tgt[valid])  # [V, d]
    neg = model.item_emb(torch.randint(0, model.num_items, (len(h), num_negatives), generator=generator))
    pos_logit = (h * pos).sum(-1)
    neg_logit = torch.einsum("vd,vmd->vm", h, neg)
    return F.binary_cross_entropy_with_logits(
        pos_logit, torch.ones_like(pos_logit)
    ) + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit))


def train_sasrec(
    data_dir: str | os.PathLike, cfg: SASRecConfig | None = None, progress: bool = True
) -> SASRec:
    """Train SASRec on DIR/train/*.parquet, streaming; returns the model (eval mode)."""
    cfg = cfg or SASRecConfig()
    cfg.validate()
    spec = DatasetSpec.load(data_dir)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = SASRec(num_items_of(spec), cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    total_rows = spec.num_rows.get("train") or None
    losses: list[float] = []  # this epoch's

    def epoch_batches(epoch: int):
        """The epoch's batches of sequences (blocks of the stream, cut into --sasrec.batch-size)."""
        model.train()
        losses.clear()
        seen = 0
        bar = tqdm(
            total=total_rows, desc=f"SASRec epoch {epoch + 1}/{cfg.epochs}", unit="seq", disable=not progress
        )
        for block in iter_sequences(data_dir, spec, cfg, rng):
            for s in range(0, len(block), cfg.batch_size):
                yield torch.from_numpy(block[s : s + cfg.batch_size])
            seen += len(block)
            bar.update(len(block))
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}" if losses else "-")
        bar.close()
        if seen == 0:
            raise DataError(
                f"{split_dir(data_dir, 'train')}: no training sequences (rows with a positive label and a "
                "history); try --all-rows"
            )
        log.info("SASRec epoch %d: %d sequences, mean loss %.4f", epoch + 1, seen, float(np.mean(losses)))

    def loss(seqs: Tensor) -> Tensor:
        value = sasrec_loss(model, seqs, cfg.num_negatives, gen)
        losses.append(value.item())
        return value

    fit(cfg.epochs, epoch_batches, loss, [opt])
    return model.eval()


def write_item_embeddings(model: SASRec, path: str | os.PathLike, batch_size: int = 65_536) -> Path:
    """The item table [N, d] as parquet (item_id, embedding), written atomically."""
    table = model.item_embeddings().numpy()
    batches = (
        (np.arange(s, min(s + batch_size, len(table)), dtype=np.int64), table[s : s + batch_size])
        for s in range(0, len(table), batch_size)
    )
    return write_embeddings(path, batches)


@dataclass
class SASRecRun:
    """SASRec (Kang & McAuley, 2018): pretrained item embeddings from next-item prediction."""

    data: str
    """Dataset folder (DIR/spec.json, DIR/train/*.parquet)."""
    out: str
    """Output parquet file (item_id, embedding)."""
    seed: int = 0
    """Seed for init, shuffling and negatives."""
    progress: bool = True
    """Progress bars (--no-progress: none)."""
    model: Annotated[SASRecConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=SASRecConfig)


OLD_SPELLINGS = {name: name for name in ("dim", "max-len", "layers", "heads", "epochs", "batch-size", "lr")}
OLD_SPELLINGS |= {"negatives": "num-negatives", "all-rows": "no-positives-only"}
"""The SASRec flags as they were first spelled -> their fields' (``--all-rows`` is ``--no-positives-only``)."""


def main(argv: list[str] | None = None) -> int:
    renames = {f"--{old}": f"--{new}" for old, new in OLD_SPELLINGS.items()}
    args = cli.parse(SASRecRun, argv, prog="python -m store.tokenizer.sasrec", renames=renames)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        model = train_sasrec(args.data, replace(args.model, seed=args.seed), progress=args.progress)
        path = write_item_embeddings(model, args.out)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {model.num_items} item embeddings of dim {model.item_emb.embedding_dim} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
