"""The comparison report: markdown tables and PNG plots from finished trainer run folders.

``python -m launch.report --run id=DIR --run store=DIR [--run NAME=DIR ...] [--sids SIDS] [--scaling DIR] --out REPORT``

A DIR is one run folder (it holds summary.json) or a folder of run folders (one per seed, e.g.
``launch.compare --seeds 3``'s OUT/id); naming an arm several times adds seeds. Every run must be on
the same dataset (summary.json's dataset fingerprint). ``launch.compare`` writes its report through
this same code. Run folders and REPORT are local; the dataset the runs name (for the setup line and the
Bayes-optimal row) and SIDS may be URIs (``s3://``, ``gs://``, ... through data_pipeline/fs.py).

Reads each run's summary.json (test metrics of the best-validation and of the last weights, per-epoch
validation, throughput, embedding bytes per rank), its test predictions (predictions/test.parquet)
and the tokenizer's meta.json, and writes REPORT/report.md, REPORT/significance.json,
REPORT/auc_vs_epoch.png and REPORT/tensorboard/<arm>[/<seed>] (links to each run's TensorBoard
folder, so ``tensorboard --logdir REPORT/tensorboard`` shows them side by side). Each metric is the
mean +- standard deviation over an arm's seeds; the "Significance" section tests each arm against the
baseline (``id``) on the test split: a paired bootstrap over users for AUC, GAUC and logloss, and
DeLong's test for the AUC of each seed pair (launch/stats.py). The verdict reads "Not comparable:
REASONS." instead when a tokenized feature's test coverage (of the test rows whose ID occurs in the
train split, the share whose ID has real SIDs; the worst over the seeds' SID tables) is below 0.5 or
it has no real SIDs, when the test split has one class, or when an arm scored NaN test AUC; the console
lines (`console_lines`) add each feature's coverage and collision rates. Every section is always
present; one whose inputs are missing says what to run.

Modules, each importing only those listed before it:

* ``text``: table cells, mean ± standard deviation over seeds, markdown tables, arm names;
* ``runs``: run folders, their summary.json, and their test predictions paired row by row;
* ``tokenizer``: the SID tables' figures, their not-comparable reasons, the "Tokenizer" section;
* ``sections``: the sections read from the summaries (setup, test metrics, epochs, tail items,
  throughput, embeddings, scaling);
* ``plots``: the per-epoch plot and the TensorBoard links;
* ``significance``: the paired tests, comparability, the verdict, the "Significance" section;
* ``write``: report.md and significance.json in the report folder, and the console lines;
* ``frontier``: the accuracy-memory frontier (frontier.md, .json, .png) of run folders, for
  ``launch.frontier`` and ``--frontier``;
* ``cli``: the command line (``__main__`` runs it).

This package re-exports the names the rest of the project uses.
"""

from launch.report.cli import ReportArgs, main, parse_runs
from launch.report.plots import link_tensorboard, plot_epochs, tensorboard_names
from launch.report.runs import (
    PREDICTIONS,
    Paired,
    Run,
    as_summaries,
    auc_of,
    dataset_key,
    epoch_rows,
    find_runs,
    load_runs,
    load_summary,
    natural_key,
    pair_label,
    paired_predictions,
    per_epoch,
    read_predictions,
    reported_weights,
    run_name,
    scores_of,
    seed_pairs,
)
from launch.report.sections import (
    bayes_optimal,
    ceiling_row,
    section_embeddings,
    section_epochs,
    section_scaling,
    section_setup,
    section_tail,
    section_test,
    section_throughput,
)
from launch.report.significance import (
    BASELINE,
    RESAMPLES,
    comparability,
    headline,
    interval,
    metric_title,
    not_comparable,
    p_text,
    section_significance,
    significance,
)
from launch.report.text import (
    LABELS,
    count,
    finite,
    finite_mean,
    finite_sd,
    fmt,
    human_bytes,
    label,
    md_table,
    signed,
    spread,
)
from launch.report.tokenizer import (
    FeatureSids,
    check_sids,
    coverage_of,
    embedding_dim,
    feature_lines,
    has_real_sids,
    read_meta,
    section_selection,
    section_tokenizer,
    sid_features,
    sid_reasons,
    worst_features,
)
from launch.report.write import (
    PLOT,
    REPORT_ENTRIES,
    REPORT_FILE,
    SECTIONS,
    SIGNIFICANCE,
    console_lines,
    read_significance,
    verdicts,
    write_report,
)

__all__ = [
    "BASELINE", "LABELS", "PLOT", "PREDICTIONS", "REPORT_ENTRIES", "REPORT_FILE", "RESAMPLES", "SECTIONS",
    "SIGNIFICANCE", "FeatureSids", "Paired", "ReportArgs", "Run", "as_summaries", "auc_of", "bayes_optimal",
    "ceiling_row", "check_sids", "comparability", "console_lines", "count", "coverage_of", "dataset_key",
    "embedding_dim", "epoch_rows", "feature_lines", "find_runs", "finite", "finite_mean", "finite_sd", "fmt",
    "has_real_sids", "headline", "human_bytes", "interval", "label", "link_tensorboard", "load_runs",
    "load_summary", "main", "md_table", "metric_title", "natural_key", "not_comparable", "p_text",
    "pair_label", "paired_predictions", "parse_runs", "per_epoch", "plot_epochs", "read_meta",
    "read_predictions", "read_significance", "reported_weights", "run_name", "scores_of", "section_embeddings",
    "section_epochs", "section_scaling", "section_selection", "section_setup", "section_significance",
    "section_tail", "section_test", "section_throughput", "section_tokenizer", "seed_pairs", "sid_features",
    "sid_reasons", "signed", "significance", "spread", "tensorboard_names", "verdicts", "worst_features",
    "write_report",
]  # fmt: skip
