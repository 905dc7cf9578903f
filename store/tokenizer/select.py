"""Choosing how learned IDs are tokenized from the data at hand, by validation.

A raw-ID model's row for an ID seen a few times in the train split mostly encodes the labels of those
few rows; quantized into SIDs, that label rides along into STORE's training rows (the target leak of
naive target encoding). How rare is too rare differs between datasets: on the synthetic data a cut-off
of 50 train rows beat every lower one, while on a long-tail app log it handed 98% of the items the
reserved code. So no cut-off is a constant here. Each candidate *rule* says what an ID seen ``n``
times in train gets:

- ``all``: its learned row's SIDs, whatever ``n`` (``--min-count 1``);
- ``reserved@m``: its learned row's SIDs when ``n >= m``, else the reserved code (IDs absent from
  train share it);
- ``neighbours@m``: its learned row's SIDs when ``n >= m``, else the SIDs of the row its
  *co-occurrence* predicts: a PPMI + truncated SVD of the ID x (values of every other sparse feature
  in the same train rows) count matrix, mapped into the learned space by a ridge regression fitted on
  the IDs seen ``m``+ times. Counts read no label, so a rare ID's SIDs say which IDs it appears with,
  not which of its few rows were clicked: rare IDs keep a tokenized, leak-free place next to their
  neighbours instead of the reserved code.

Each rule's SID tables are scored by a *proxy*: a small factorization machine trained on (a bounded
sample of) the train split with every tokenized feature replaced by its K codes, then scored on the
valid split (AUC). It overfits leaked codes the way STORE does, and it is cheap: the tokenizer picks
the rule with the best validation AUC and records every candidate in ``meta.json``
(``selection``). The proxy on raw IDs is recorded as a reference. ``--min-count N`` forces
``reserved@N``, ``--rare`` forces the handling of rare IDs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from data_pipeline.batch import Batch
from data_pipeline.spec import DataError, DatasetSpec
from store.metrics import auc
from store.sid import SidTable, sid_sources
from store.tokenizer import learned
from store.tokenizer.config import RARE_MODES, SelectConfig
from store.tokenizer.fit import fit

log = logging.getLogger(__name__)

COVERAGE_FLOOR = 0.5
"""A tokenized feature whose coverage (of the evaluated rows whose ID occurs in the train split, the share
whose ID has real SIDs) is below this leaves STORE without most of what the ID arm learned: the report
calls such a comparison not comparable, and the selection prefers rules above it."""


@dataclass(frozen=True)
class Rule:
    """How the learned features' IDs are tokenized: IDs seen ``min_count``+ times in train get their
    learned row's SIDs; rarer ones get ``rare`` (the reserved code or their neighbours')."""

    min_count: int
    rare: str = "reserved"
    oof: bool = False
    """The rows come from the tokenizer's FM with out-of-fold codes for the train rows (``--oof``)."""

    @property
    def name(self) -> str:
        base = "all" if self.min_count <= 1 else f"{self.rare}@{self.min_count}"
        return f"out-of-fold {base}" if self.oof else base


def candidate_rules(min_counts: tuple[int, ...], rare: str = "", oof: bool = False) -> list[Rule]:
    """The rules the selection tries: every seen ID learned (``all``), then ``reserved@m`` and
    ``neighbours@m`` for each m > 1 (only one kind with ``rare``); with ``oof``, last, every seen ID
    with out-of-fold codes (``out-of-fold all``: no train row's label reaches its own codes, so no
    cut-off is needed against the leak)."""
    rules = [Rule(1)]
    for m in sorted(set(min_counts)):
        if m > 1:
            rules += [Rule(m, r) for r in RARE_MODES if not rare or r == rare]
    return rules + ([Rule(1, oof=True)] if oof else [])


# -- a bounded sample of the splits, read once -------------------------------------------------------
def read_sample(
    data_dir: str | os.PathLike, spec: DatasetSpec, split: str, max_rows: int, batch_size: int = 4096
) -> list[Batch]:
    """The first ``max_rows`` rows of a split as batches of at most ``batch_size`` (in file order)."""
    reader = learned.split_reader(data_dir, spec, batch_size, seed=0, shuffle=False, split=split)
    out, n = [], 0
    for batch in reader:
        out.append(batch)
        n += batch.batch_size
        if n >= max_rows:
            break
    return out


# -- co-occurrence embeddings and the neighbours' rows ----------------------------------------------
def cooccurrence_factors(
    batches: list[Batch], spec: DatasetSpec, feature: str, dim: int, seed: int
) -> Tensor:
    """[rows, <=dim]: PPMI + truncated SVD of feature's IDs x (every other sparse feature's values in
    the same rows); zero rows for IDs that never occur. Reads no label."""
    import scipy.sparse as sp
    from sklearn.utils.extmath import randomized_svd

    served = set(sid_sources(spec)[feature])
    others = [f for f in spec.sparse if f.name not in served]
    offsets = np.cumsum([0] + [spec.table_rows(f.name) for f in others])
    rows_all, cols_all = [], []
    for b in batches:
        jts = b.sparse.to_dict()
        mine = [jts[f] for f in served]
        for jt in mine:
            ids = jt.values().numpy()
            row_of = np.repeat(np.arange(b.batch_size), jt.lengths().numpy())
            for j, f in enumerate(others):
                o = jts[f.name]
                o_row = np.repeat(np.arange(b.batch_size), o.lengths().numpy())
                o_val = o.values().numpy() + offsets[j]
                if len(o_row) == b.batch_size and len(row_of) == b.batch_size:  # both single-valued
                    rows_all.append(ids)
                    cols_all.append(o_val)
                else:  # a multi-valued side: every pair within a row
                    pos = np.searchsorted(o_row, row_of, side="left")
                    end = np.searchsorted(o_row, row_of, side="right")
                    reps = end - pos
                    rows_all.append(np.repeat(ids, reps))
                    idx = np.repeat(pos, reps) + (
                        np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
                    )
                    cols_all.append(o_val[idx])
    rows = spec.table_rows(feature)
    if not rows_all or not others:
        return torch.zeros(rows, 1)
    # only the IDs and values that occur: the SVD's cost follows the sample, not the vocabularies
    id_of, r = np.unique(np.concatenate(rows_all), return_inverse=True)
    _, c = np.unique(np.concatenate(cols_all), return_inverse=True)
    m = sp.coo_matrix((np.ones(len(r), np.float64), (r, c)), shape=(len(id_of), int(c.max()) + 1)).tocsr()
    m.sum_duplicates()
    total = m.sum()
    row_sum = np.asarray(m.sum(1)).ravel()
    col_sum = np.asarray(m.sum(0)).ravel()
    coo = m.tocoo()
    pmi = np.log(coo.data * total / (row_sum[coo.row] * col_sum[coo.col]))
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=m.shape)
    k = min(dim, min(ppmi.shape) - 1)
    out = torch.zeros(rows, max(k, 1))
    if ppmi.nnz == 0 or k < 1:
        return out
    u, sv, _ = randomized_svd(ppmi, n_components=k, random_state=seed)
    out[torch.from_numpy(id_of)] = torch.from_numpy((u * np.sqrt(sv)).astype(np.float32))
    return out


def neighbour_rows(learned: Tensor, factors: Tensor, counts: Tensor, min_count: int) -> Tensor:
    """The learned table with every row seen 1..min_count-1 times replaced by the row its co-occurrence
    factors predict (ridge regression fitted on the rows seen ``min_count``+ times, or on the most
    frequent ones when those are too few). A rare row's own learned values are never read."""
    out = learned.clone().float()
    rare = (counts >= 1) & (counts < min_count)
    if not rare.any():
        return out
    fit = counts >= min_count
    need = 2 * factors.shape[1] + 2
    if int(fit.sum()) < need:  # too few frequent IDs: the most frequent seen ones
        order = torch.argsort(counts, descending=True)[:need]
        fit = torch.zeros_like(fit)
        fit[order[counts[order] >= 1]] = True
    a = factors[fit].double()
    y = out[fit].double()
    a_mean, y_mean = a.mean(0), y.mean(0)
    a0 = a - a_mean
    gram = a0.T @ a0
    lam = 1e-2 * float(torch.trace(gram)) / max(gram.shape[0], 1) + 1e-8
    w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), a0.T @ (y - y_mean))
    out[rare] = (y_mean + (factors[rare].double() - a_mean) @ w).float()
    return out


# -- the proxy ------------------------------------------------------------------------------------------
class ProxyFM(nn.Module):
    """A factorization machine over the features of some KeyedJaggedTensors (mean-pooled per key, one
    table per key) and a linear term over the dense features. Each key's table has one row per value
    the sample holds (``values[key]``, sorted), not one per vocabulary entry: the proxy's size follows
    its sample, not the catalog."""

    def __init__(self, values: dict[str, Tensor], dense: int, dim: int) -> None:
        super().__init__()
        self.values = values
        sizes = [len(v) for v in values.values()]
        self.base = dict(zip(values, np.cumsum([0] + sizes)[:-1].tolist()))
        total = max(1, int(sum(sizes)))
        self.v = nn.Embedding(total, dim)
        self.w = nn.Embedding(total, 1)
        nn.init.normal_(self.v.weight, std=0.01)
        nn.init.zeros_(self.w.weight)
        self.dense = nn.Linear(dense, 1) if dense else None
        self.bias = nn.Parameter(torch.zeros(1))

    def rows(self, kjt) -> Tensor:
        """The table rows of a KJT's values (key by key)."""
        chunks = torch.split(kjt.values(), kjt.length_per_key())
        return torch.cat([
            torch.searchsorted(self.values[k], c) + self.base[k] for k, c in zip(kjt.keys(), chunks)
        ])  # fmt: skip

    def forward(self, kjts: list, dense: Tensor) -> Tensor:
        vs, ws = [], []
        for kjt in kjts:
            if not kjt.keys():
                continue
            rows = self.rows(kjt)
            n = len(kjt.keys())
            bag = dict(offsets=kjt.offsets(), mode="mean", include_last_offset=True)
            vs.append(
                nn.functional.embedding_bag(rows, self.v.weight, **bag).view(n, -1, self.v.embedding_dim)
            )
            ws.append(nn.functional.embedding_bag(rows, self.w.weight, **bag).view(n, -1))
        v = torch.cat(vs)
        logit = self.bias + torch.cat(ws).sum(0) + 0.5 * (v.sum(0).pow(2) - v.pow(2).sum(0)).sum(1)
        if self.dense is not None:
            logit = logit + self.dense(dense).squeeze(1)
        return logit


def proxy_auc(
    train: list[Batch],
    valid: list[Batch],
    spec: DatasetSpec,
    sids: SidTable | None,
    cfg: SelectConfig,
    seed: int,
) -> float:
    """Valid AUC (best epoch) of the proxy FM trained on ``train`` with the tokenized features as
    their codes (``sids``), or as raw IDs (``sids`` None)."""

    def parts(b: Batch, train: bool) -> tuple[list, Tensor]:
        if sids is None:
            return [b.sparse], b.dense
        t = sids.transform(b, spec, train)  # train rows: their out-of-fold codes, as the trainer's
        return [t.sparse, t.sid], t.dense

    train_parts = [(parts(b, True), b.labels) for b in train]
    valid_parts = [(parts(b, False), b.labels) for b in valid]
    seen: dict[str, list[Tensor]] = {}  # each key's values in the sample: the proxy's table rows
    for (kjts, _), _ in train_parts + valid_parts:
        for kjt in kjts:
            for k, c in zip(kjt.keys(), torch.split(kjt.values(), kjt.length_per_key())):
                seen.setdefault(k, []).append(torch.unique(c))
    values = {k: torch.unique(torch.cat(v)) for k, v in seen.items()}
    torch.manual_seed(seed)
    model = ProxyFM(values, len(spec.dense), cfg.proxy_dim)
    # dense Adam: the proxy's tables are small (the sample's values x (proxy_dim + 1)), and SparseAdam's
    # coalescing costs more than the whole step at these sizes
    opts = [torch.optim.Adam(model.parameters(), lr=cfg.proxy_lr)]
    gen = torch.Generator().manual_seed(seed)
    best = [-math.inf]

    def epoch_batches(epoch: int):
        model.train()
        return [train_parts[i] for i in torch.randperm(len(train_parts), generator=gen).tolist()]

    def loss(part) -> Tensor:
        (kjts, dense_x), y = part
        return nn.functional.binary_cross_entropy_with_logits(model(kjts, dense_x), y.float())

    def end_epoch(epoch: int) -> None:
        model.eval()
        with torch.no_grad():
            scores = torch.cat([model(kjts, d) for (kjts, d), _ in valid_parts])
        labels = torch.cat([y for _, y in valid_parts])
        value = auc(scores.numpy(), labels.numpy())  # store.metrics: the AUC the trainer reports
        if math.isfinite(value):
            best[0] = max(best[0], value)

    fit(cfg.proxy_epochs, epoch_batches, loss, opts, end_epoch)
    return best[0] if math.isfinite(best[0]) else math.nan


@dataclass
class Sample:
    """What the selection reads once: bounded train and valid samples and the co-occurrence factors."""

    train: list[Batch]
    valid: list[Batch]
    factors: dict[str, Tensor]


def load_sample(
    data_dir: str | os.PathLike, spec: DatasetSpec, features: list[str], cfg: SelectConfig, seed: int,
    progress: bool = True,
) -> Sample:  # fmt: skip
    t0 = time.perf_counter()
    train = read_sample(data_dir, spec, "train", cfg.train_rows, cfg.proxy_batch_size)
    valid = read_sample(data_dir, spec, "valid", cfg.valid_rows)
    if not train or not valid:
        raise DataError(
            f"{data_dir}: the train or valid split is empty; the tokenizer cannot validate its choice"
        )
    factors = {}
    for f in tqdm(features, desc="co-occurrence factors", disable=not progress):
        factors[f] = cooccurrence_factors(train, spec, f, cfg.cooc_dim, seed)
    log.info(
        "selection sample: %d train rows, %d valid rows, co-occurrence factors in %.1f s",
        sum(b.batch_size for b in train), sum(b.batch_size for b in valid), time.perf_counter() - t0,
    )  # fmt: skip
    return Sample(train, valid, factors)
