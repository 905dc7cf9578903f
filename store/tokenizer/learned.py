"""``learned`` embeddings: the rows a raw-ID model learned for a feature, for the tokenizer.

The source that exists for every sparse feature of every dataset (content, text and SASRec embeddings
exist only for items that carry them). Two ways to get the rows:

- ``from_run(RUN_DIR)``: the embedding tables of a finished trainer run (``python -m trainer --model id``
  or any raw-ID model: tables ``t_item`` for the item, ``t_<feature>`` for the others), read from its
  best-validation checkpoint (OUT/best/, what its test metrics were scored with), else its newest
  one. The run's ``summary.json`` must record the same dataset (fingerprint).
- ``train_fm(...)``: a short run of a small factorization machine (first-order weights + pairwise
  interactions over every sparse feature, a linear term over the dense ones) on the TRAIN split only,
  in this process. Its embedding of an ID is ``[v_id, w_id]`` (the D-wide factor and the first-order
  weight), so the popularity/CTR an ID carries survives quantization. The rows come in the FM's *logit
  frame* (``logit_frame``): multiplied by M^(1/2), M the second moment over the train rows of the
  context ``[sum of the row's other factors, 1]`` an ID's row meets, so that the Euclidean distance
  between two rows is the RMS change of the FM's logit when one replaces the other. The tokenizer
  quantizes them with one scale for every dimension (``isotropic``): its codes then keep what moves the
  prediction (on a table where the click is mostly the item's own, the first-order weight) rather than
  giving each of the D + 1 dimensions the same share.

``train_counts`` counts how often each row of each feature occurs in the train split. A row that never
occurs has an untrained (random) embedding, and a row seen only a few times has one that mostly
encodes the labels of those few training rows: quantized, such a row's SIDs would hand STORE its
training labels (train logloss falls far below the ID model's within one epoch while validation
AUC drops below the model without the feature). Rows never seen get one reserved code; how rows seen
a few times are tokenized is chosen by validation on the dataset at hand (``store.tokenizer.select``;
``meta.json``: ``selection``, and per feature ``absent_rows``, ``rare_rows``, ``neighbour_rows``,
``unseen_rows``, ``min_count``, ``rare``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from data_pipeline import checkpoint_files
from data_pipeline.checkpoint_files import BEST_DIR, CHECKPOINT_DIR, CheckpointError
from data_pipeline.reader import ParquetBatchReader
from data_pipeline.spec import DataError, DatasetSpec
from store.sid import row_folds, sid_sources
from store.tokenizer.config import FMConfig
from store.tokenizer.fit import fit

log = logging.getLogger(__name__)

RAW_ITEM_TABLE = "t_item"  # the trainer's raw item table (store.models.layers.RAW_ITEM_TABLE)


def table_of(spec: DatasetSpec, feature: str) -> str:
    """The raw-ID table a trainer run keeps feature ``feature`` in (every item-valued feature: t_item)."""
    return RAW_ITEM_TABLE if spec.feature(feature).item_ref else f"t_{feature}"


def split_reader(
    data_dir: str | os.PathLike,
    spec: DatasetSpec,
    batch_size: int,
    seed: int,
    shuffle: bool,
    split: str = "train",
) -> ParquetBatchReader:
    """Every row of a split (default train), the last batch kept whole however short."""
    return ParquetBatchReader(
        data_dir, split, batch_size, spec=spec, shuffle=shuffle, drop_remainder=False, seed=seed
    )


def train_counts(
    data_dir: str | os.PathLike,
    spec: DatasetSpec,
    features: list[str],
    progress: bool = True,
    split: str = "train",
    folds: tuple[tuple[str, ...], int] | None = None,
) -> dict[str, Tensor]:
    """{feature: LongTensor[rows]}: occurrences of each table row in a split (default train; an item
    feature counts every item-valued feature's values, as they share the item table).

    ``folds`` (fold keys, F): LongTensor[F, rows] instead, the occurrences in each fold's rows
    (``store.sid.row_folds``)."""
    num_folds = folds[1] if folds else 1
    counts = {f: torch.zeros(num_folds, spec.table_rows(f), dtype=torch.long) for f in features}
    served = sid_sources(spec)  # the item's count covers every item-valued feature (one shared table)
    reader = split_reader(data_dir, spec, 8192, 0, shuffle=False, split=split)
    for batch in tqdm(reader, desc=f"count {split} IDs", unit="batch", disable=not progress):
        jts = batch.sparse.to_dict()
        row_fold = row_folds(batch.sparse, *folds) if folds else None
        for f in features:
            rows = counts[f].shape[1]
            for g in served[f]:
                jt = jts[g]
                if row_fold is None:
                    counts[f][0] += torch.bincount(jt.values(), minlength=rows)[:rows]
                else:
                    fold = torch.repeat_interleave(row_fold, jt.lengths())
                    flat = torch.bincount(fold * rows + jt.values(), minlength=num_folds * rows)
                    counts[f] += flat[: num_folds * rows].view(num_folds, rows)
    return counts if folds else {f: c[0] for f, c in counts.items()}


def align(rows: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """``rows`` rotated onto ``target`` (orthogonal Procrustes over the rows with ``weight`` > 0, each
    weighing ``weight``): two FMs trained on different rows learn the same geometry up to a rotation of
    their factors, and the quantizer fitted to ``target``'s space must read both alike."""
    keep = weight > 0
    if not keep.any():
        return rows
    a, b = rows[keep].double(), target[keep].double()
    u, _, vt = torch.linalg.svd((a * weight[keep, None].double()).t() @ b)
    return (rows.double() @ (u @ vt)).to(rows.dtype)


# -- a finished run's tables ---------------------------------------------------------------------------
def from_run(run_dir: str | os.PathLike, spec: DatasetSpec, features: list[str]) -> dict[str, Tensor]:
    """{feature: FloatTensor[rows, D]}: the embedding tables a finished trainer run learned.

    DataError naming the run when it is not finished, was trained on another dataset, or holds no
    raw-ID table for a feature (e.g. a STORE run, whose IDs went through SIDs)."""
    run = Path(run_dir)
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise DataError(f"--from-run {run}: no summary.json (not a finished trainer run)")
    try:
        record = json.loads(summary_path.read_text()).get("dataset") or {}
    except json.JSONDecodeError as e:
        raise DataError(f"{summary_path}: not valid JSON ({e})") from None
    if record.get("fingerprint") != spec.fingerprint:
        raise DataError(
            f"--from-run {run}: trained on dataset {record.get('name')!r} (fingerprint "
            f"{record.get('fingerprint')}), not on dataset {spec.name!r} (fingerprint {spec.fingerprint})"
        )
    # the best validation's weights when the run kept them (what its test metrics were scored with)
    ckpt = checkpoint_files.latest(run / BEST_DIR) or checkpoint_files.latest(run / CHECKPOINT_DIR)
    if ckpt is None:
        raise DataError(f"--from-run {run}: no complete checkpoint under {run / 'checkpoints'}")
    keys = checkpoint_files.keys(ckpt)
    wanted: dict[str, str] = {}
    for f in features:
        table = table_of(spec, f)
        found = [k for k in keys if k.startswith("model.") and k.endswith(f".{table}.weight")]
        if len(found) != 1:
            raise DataError(
                f"--from-run {run}: checkpoint {ckpt.name} has no raw-ID table {table!r} for feature {f!r} "
                "(train a raw-ID model such as --model id or dnn for the learned source)"
            )
        wanted[f] = found[0]
    try:
        state = checkpoint_files.read_tensors(ckpt, list(wanted.values()))
    except CheckpointError as e:
        raise DataError(f"--from-run {run}: {e}") from None
    out = {}
    for f, key in wanted.items():
        emb = state[key].float()
        if len(emb) < spec.table_rows(f):
            raise DataError(
                f"--from-run {run}: table {table_of(spec, f)!r} has {len(emb)} rows, "
                f"feature {f!r} needs {spec.table_rows(f)}"
            )
        out[f] = emb
    return out


# -- the tokenizer's own short run: a factorization machine -------------------------------------------
class FM(nn.Module):
    """Factorization machine over every sparse feature (mean-pooled for multi-valued ones; item-valued
    features share the item's table) and a linear term over the dense features.

    logit = b + <w, dense> + sum_f w_f + 1/2 * sum_d ((sum_f v_f)^2 - sum_f v_f^2)   (B,)
    """

    def __init__(self, spec: DatasetSpec, dim: int) -> None:
        super().__init__()
        self.spec = spec
        self.tables = {table_of(spec, f.name): spec.table_rows(f.name) for f in spec.sparse}
        self.index = {t: i for i, t in enumerate(self.tables)}
        self.feature_tables = [self.index[table_of(spec, f.name)] for f in spec.sparse]
        """The table of each sparse feature, in ``spec.sparse``'s order."""
        self.v = nn.ModuleList(
            nn.EmbeddingBag(n, dim, mode="mean", sparse=True, include_last_offset=True)
            for n in self.tables.values()
        )
        self.w = nn.ModuleList(
            nn.EmbeddingBag(n, 1, mode="mean", sparse=True, include_last_offset=True)
            for n in self.tables.values()
        )
        for v, w in zip(self.v, self.w):
            nn.init.normal_(v.weight, std=0.01)
            nn.init.zeros_(w.weight)
        self.dense = nn.Linear(len(spec.dense), 1) if spec.dense else None
        self.bias = nn.Parameter(torch.zeros(1))

    def pooled(self, batch, tables: nn.ModuleList) -> list[Tensor]:
        """Each sparse feature's pooled rows of its table in ``tables`` (``self.v`` or ``self.w``)."""
        jts = batch.sparse.to_dict()
        return [
            tables[i](jts[f.name].values(), jts[f.name].offsets())
            for f, i in zip(self.spec.sparse, self.feature_tables)
        ]

    def forward(self, batch) -> tuple[Tensor, Tensor]:
        """-> logits (B,), the factors of this batch (B, F, D) (for the L2 penalty)."""
        first = self.bias.expand(len(batch.labels))
        for w in self.pooled(batch, self.w):
            first = first + w.squeeze(1)
        v = torch.stack(self.pooled(batch, self.v), 1)
        pairs = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
        logits = first + pairs
        if self.dense is not None:
            logits = logits + self.dense(batch.dense).squeeze(1)
        return logits, v

    def embeddings(self, feature: str) -> Tensor:
        """[rows, D + 1]: each row's factor and first-order weight."""
        i = self.index[table_of(self.spec, feature)]
        return torch.cat([self.v[i].weight, self.w[i].weight], 1).detach()


def train_fm(
    data_dir: str | os.PathLike,
    spec: DatasetSpec,
    features: list[str],
    cfg: FMConfig,
    progress: bool = True,
    leave_out: tuple[tuple[str, ...], int, int] | None = None,
    logit: bool = True,
) -> dict[str, Tensor]:
    """Train an FM on the train split (never valid/test); {feature: FloatTensor[rows, D + 1]}, in the
    FM's logit frame (``logit_frame``; ``logit=False``: the raw ``[v, w]``).

    ``leave_out`` (fold keys, F, j): the rows of fold j (``store.sid.row_folds``) take no part: their
    labels and their IDs' penalty are masked out of the loss."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    model = FM(spec, cfg.dim)
    sparse = [p for m in (*model.v, *model.w) for p in m.parameters()]
    dense = [p for n, p in model.named_parameters() if not n.startswith(("v.", "w."))]
    opts = [torch.optim.SparseAdam(sparse, lr=cfg.lr), torch.optim.Adam(dense, lr=cfg.lr)]
    reader = split_reader(data_dir, spec, cfg.batch_size, cfg.seed, shuffle=True)
    bar = tqdm(total=cfg.epochs * len(reader), desc="learn FM embeddings", unit="step", disable=not progress)
    train_loss = [0.0, 0]  # this epoch's summed BCE and rows

    def epoch_batches(epoch: int):
        reader.set_epoch(epoch)
        train_loss[:] = [0.0, 0]
        return reader

    def loss(batch) -> Tensor:
        logits, v = model(batch)
        keep = torch.ones_like(logits)
        if leave_out is not None:
            keep = (row_folds(batch.sparse, leave_out[0], leave_out[1]) != leave_out[2]).float()
        n = keep.sum().clamp(min=1.0)
        per_row = nn.functional.binary_cross_entropy_with_logits(
            logits, batch.labels.float(), reduction="none"
        )
        bce = (per_row * keep).sum() / n
        train_loss[0] += float(bce.detach()) * float(n)
        train_loss[1] += int(n)
        bar.update(1)
        return bce + cfg.l2 * (v.pow(2).sum((1, 2)) * keep).sum() / n

    def end_epoch(epoch: int) -> None:
        log.info("FM epoch %d: train logloss %.4f", epoch, train_loss[0] / max(train_loss[1], 1))

    fit(cfg.epochs, epoch_batches, loss, opts, end_epoch)
    loss_sum = train_loss[0]
    bar.close()
    if not math.isfinite(loss_sum):
        raise DataError(f"{data_dir}: the FM's train loss is not finite (lower --fm.lr)")
    if not logit:
        return {f: model.embeddings(f) for f in features}
    return logit_frame(model, split_reader(data_dir, spec, 8192, 0, shuffle=False), features, progress)


@torch.no_grad()
def logit_frame(model: FM, reader, features: list[str], progress: bool = True) -> dict[str, Tensor]:
    """{feature: [rows, D + 1]}: the FM's rows ``e = [v, w]`` times M^(1/2), where M = E[c c^T] over
    the rows of ``reader`` and c = [s, 1], s the sum of the row's factors of every other feature.

    The FM's logit depends on a feature's row through <e, c> (w + <v, s>), so replacing e by e' moves
    it by <e - e', c> and E[<e - e', c>^2] = |(e - e') M^(1/2)|^2: in this frame a quantizer's squared
    error is the mean squared change of the logit it causes. An item-valued feature's rows (one table
    shared by several features) take M summed over those features' occurrences."""
    spec = model.spec
    dim = model.v[0].embedding_dim
    wanted = {model.index[table_of(spec, f)] for f in features}
    moment = {i: torch.zeros(dim + 1, dim + 1, dtype=torch.float64) for i in wanted}
    seen = {i: 0 for i in wanted}
    for batch in tqdm(reader, desc="FM logit frame", unit="batch", disable=not progress):
        v = torch.stack(model.pooled(batch, model.v), 1)
        total = v.sum(1)
        ones = torch.ones(len(v), 1)
        for k, i in enumerate(model.feature_tables):
            if i in wanted:
                c = torch.cat([total - v[:, k], ones], 1).double()
                moment[i] += c.t() @ c
                seen[i] += len(c)
    out = {}
    for f in features:
        i = model.index[table_of(spec, f)]
        lam, vec = torch.linalg.eigh(moment[i] / max(seen[i], 1))
        root = (vec * lam.clamp(min=0).sqrt()) @ vec.t()
        out[f] = (model.embeddings(f).double() @ root).float()
    return out
