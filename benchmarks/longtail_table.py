"""A long-tail click table shaped like real app-usage or ads logs, as a user would bring it.

    python benchmarks/longtail_table.py --out longtail.parquet [--rows 120000] [--items 12000] [--users 3000]
    python -m data_pipeline convert table --src longtail.parquet --out data/longtail \\
        --label click --user user --item item --time ts

Unlike ``data_pipeline generate`` (whose items have content embeddings and whose clicks come mostly
from topics), here the item has no content and carries most of the signal through its own click
propensity, and most IDs have only a few rows:

- items: Zipf(1.0) popularity over ``--items`` IDs, so a 120k-row table has a few rows per item for
  most of them; each item belongs to a hidden cluster; its logit offset is a cluster effect (sd 0.6)
  plus an item effect (sd 1.2);
- users: Zipf(0.8) activity; each user draws 70% of its rows from two favourite clusters (so the
  user x item co-occurrence says which items are alike) and the rest by global popularity; a small
  user effect (sd 0.3);
- eight low-cardinality context columns (hour, weekday, os, network, country, slot, app version,
  screen), each with a small effect;
- ``ts`` increases through the rows (split by time); ``click`` is drawn from the logistic model,
  calibrated to a mean CTR of ``--ctr``.

The file is a plain parquet table with raw columns (string user and item IDs), written atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

CONTEXT = {
    "hour": 24,
    "weekday": 7,
    "os": 4,
    "network": 3,
    "country": 20,
    "slot": 6,
    "app_version": 12,
    "screen": 5,
}
"""The context columns and their cardinalities."""


def _zipf_pmf(n: int, s: float) -> np.ndarray:
    w = (np.arange(n) + 1.0) ** -s
    return w / w.sum()


def make_table(rows: int, items: int, users: int, clusters: int, ctr: float, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    item_cluster = rng.integers(0, clusters, items)
    item_logit = 0.6 * rng.standard_normal(clusters)[item_cluster] + 1.2 * rng.standard_normal(items)
    item_pop = _zipf_pmf(items, 1.0)[rng.permutation(items)]
    user_act = _zipf_pmf(users, 0.8)[rng.permutation(users)]
    user_fav = rng.integers(0, clusters, (users, 2))
    user_logit = 0.3 * rng.standard_normal(users)

    user = rng.choice(users, rows, p=user_act)
    # each cluster's items with their popularity, for the favourite-cluster draws
    by_cluster = [np.flatnonzero(item_cluster == c) for c in range(clusters)]
    item = rng.choice(items, rows, p=item_pop)
    fav = rng.random(rows) < 0.7
    fav_cluster = user_fav[user, rng.integers(0, 2, rows)]
    for c in np.unique(fav_cluster[fav]):
        members = by_cluster[c]
        if len(members) == 0:
            continue
        at = np.flatnonzero(fav & (fav_cluster == c))
        p = item_pop[members] / item_pop[members].sum()
        item[at] = rng.choice(members, len(at), p=p)

    logit = item_logit[item] + user_logit[user]
    ctx = {}
    for name, card in CONTEXT.items():
        ctx[name] = rng.integers(0, card, rows)
        logit = logit + 0.15 * rng.standard_normal(card)[ctx[name]]
    # calibrate the intercept so the mean click probability is ctr (bisection on a monotone mean)
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.mean(1 / (1 + np.exp(-(logit + mid)))) < ctr else (lo, mid)
    prob = 1 / (1 + np.exp(-(logit + lo)))
    click = (rng.random(rows) < prob).astype(np.int64)
    ts = 1_700_000_000 + np.sort(rng.integers(0, 28 * 86_400, rows))
    cols = {
        "ts": ts,
        "user": pa.array([f"u{u}" for u in user]),
        "item": pa.array([f"app{i}" for i in item]),
        **ctx,
        "click": click,
    }
    return pa.table(cols)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/longtail_table.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the parquet file to write")
    p.add_argument("--rows", type=int, default=120_000)
    p.add_argument("--items", type=int, default=12_000)
    p.add_argument("--users", type=int, default=3_000)
    p.add_argument("--clusters", type=int, default=60)
    p.add_argument("--ctr", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for flag in ("rows", "items", "users", "clusters"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if not 0 < args.ctr < 1:
        p.error(f"--ctr must be in (0, 1), got {args.ctr}")
    table = make_table(args.rows, args.items, args.users, args.clusters, args.ctr, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    items = pc.count_distinct(table["item"]).as_py()
    print(
        f"wrote {out}: {table.num_rows} rows, {items} distinct items, mean CTR {np.mean(table['click']):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
