"""Does the quantizer lose an item's click propensity? SIDs from learned rows with it weighted up.

    python benchmarks/propensity_sids.py --data DIR --from-run ID_RUN --sids SIDS --out OUT \\
        [--repeat 16] [--min-count 1]

Reads the item rows a finished raw-ID run learned, fits a ridge map from them to the items' smoothed
train log-odds (items seen 20+ times), appends that projection ``--repeat`` times to the standardized
rows (so it weighs as much as all other dimensions together at 16 for D = 16), fits OPMQ to the items
seen ``--min-count``+ times and writes a SID folder to OUT: the item's new codes, every other
feature's codes copied from ``--sids`` (a tokenizer output of the same dataset). Train STORE on it
with ``python -m trainer --model store --sids OUT``. docs/results_any_table.md ("Long-tail table")
has the figures.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from data_pipeline.spec import DatasetSpec
from store.records import SidTableMeta
from store.sid import SidTable
from store.tokenizer import learned
from store.tokenizer.embeddings import ItemEmbeddings
from store.tokenizer.pipeline import FitConfig, assign_codes, train_tokenizer
from store.tokenizer.quantizers import TokenizerConfig


def propensity_projection(
    data: str, spec: DatasetSpec, rows: torch.Tensor, fit_rows: int = 20
) -> tuple[torch.Tensor, float]:
    """(the rows' ridge projection onto the items' smoothed train log-odds [N], its correlation with them
    on the items it was fitted on: those seen ``fit_rows``+ times)."""
    n = torch.zeros(len(rows), dtype=torch.float64)  # impressions of each item (its rows, not histories)
    clicks = torch.zeros(len(rows), dtype=torch.float64)
    for b in learned.split_reader(data, spec, 8192, seed=0, shuffle=False):
        n.index_add_(0, b.item_ids, torch.ones(b.batch_size, dtype=torch.float64))
        clicks.index_add_(0, b.item_ids, b.labels.double())
    p = float(clicks.sum() / n.sum())
    target = torch.log((clicks + 10 * p) / (n - clicks + 10 * (1 - p)))
    fit = n >= fit_rows
    if int(fit.sum()) < 2:
        raise ValueError(f"fewer than 2 items seen {fit_rows}+ times in the train split")
    a = rows[fit].double()
    mean = a.mean(0)
    a0, t = a - mean, target[fit] - target[fit].mean()
    w = torch.linalg.solve(a0.T @ a0 + 1e-2 * torch.eye(a.shape[1], dtype=torch.float64), a0.T @ t)
    proj = (rows.double() - mean) @ w
    corr = torch.corrcoef(torch.stack([proj[fit], target[fit]]))[0, 1].item()
    return proj.float(), corr


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/propensity_sids.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--from-run", required=True, help="a finished raw-ID trainer run on --data")
    p.add_argument("--sids", required=True, help="a tokenizer output of --data (the other features' codes)")
    p.add_argument("--out", required=True)
    p.add_argument("--repeat", type=int, default=16, help="copies of the propensity projection appended")
    p.add_argument("--min-count", type=int, default=1, help="items seen fewer times get the reserved code")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.repeat < 0 or args.min_count < 1:
        p.error("--repeat must be >= 0 and --min-count >= 1")
    spec = DatasetSpec.load(args.data)
    item = spec.item_id
    rows = learned.from_run(args.from_run, spec, [item])[item]
    proj, corr = propensity_projection(args.data, spec, rows)
    std = (rows - rows.mean(0)) / rows.std(0).clamp(min=1e-6)
    emb = torch.cat([std, ((proj - proj.mean()) / proj.std())[:, None].repeat(1, args.repeat)], 1)
    count = learned.train_counts(args.data, spec, [item], False)[item]
    seen = (count >= args.min_count).nonzero().flatten()
    src = SidTable.load(args.sids, spec)
    reserved = SidTableMeta.from_dict(json.loads(open(f"{args.sids}/meta.json").read())).unseen_code
    cfg = TokenizerConfig(num_sids=src.num_sids, codebook_size=reserved, input_dim=emb.shape[1])
    tok = train_tokenizer(emb[seen], cfg, FitConfig(min_steps=500, seed=args.seed), progress=False)
    codes, stats = assign_codes(
        ItemEmbeddings.from_rows(emb, seen, "learned"), tok, len(emb), reserved, progress=False
    )
    meta = json.loads(open(f"{args.sids}/meta.json").read())
    tables = {f: src.tables[f].long() for f in src.tables} | {src.item_feature: codes}
    keep = {k: v for k, v in meta.items() if k not in ("method", "num_sids", "codebook_size")}
    SidTable(tables, src.codebook_size, src.method, item_feature=src.item_feature, meta=keep).save(args.out)
    print(f"propensity projection: correlation {corr:.3f} with the smoothed log-odds of items seen 20+ times")
    print(f"wrote {args.out}: {len(seen)} items tokenized, collision rate {stats['collision_rate']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
