"""The tokenizer's options, in one place and without torch: ``TokenizerOptions`` and its parts.

``TokenizerOptions`` is everything a user chooses about how SIDs are made (the architecture, the fit,
the embedding source, how rare learned IDs are handled, the validation that picks that rule, the FM
and SASRec settings); ``store.tokenizer.pipeline.TokenizeConfig`` adds what belongs to one run (the
dataset, the output folder, the seed, ``--high-card``, ``--from-run``). ``python -m store.tokenizer``
shows the options as top-level flags (``--num-sids``, ``--min-steps``, ``--select.train-rows``) and
``launch.compare`` embeds the same dataclass as its ``--tokenizer.*`` section
(``--tokenizer.num-sids``, ``--tokenizer.select.train-rows``), so each default is written here once.

The modules that use these dataclasses (quantizers, pipeline, select, learned, sasrec) import them from
here; nothing here imports torch, so the TorchX component (``launch/store.py``) can read the option
names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, get_args, get_origin, get_type_hints

import tyro

from data_pipeline.cli import ConfigError

FLAT = tyro.conf.arg(name="")
"""A nested dataclass marked so its flags carry no group name of their own (``--num-sids``, not
``--model.num-sids``); the prefixes of the groups around it are kept (``--tokenizer.num-sids``)."""


@dataclass
class TokenizerConfig:
    """Architecture of a tokenizer; saved as OUT/tokenizer/config.json."""

    method: str = "opmq"
    """'opmq' (orthogonal parallel experts), 'rqvae' (residual quantization) or 'opq' (product quantization)."""
    num_sids: int = 4
    """K: codes per item (experts / residual levels / subspaces)."""
    codebook_size: int = 64
    """C: codewords per codebook."""
    input_dim: Annotated[int, tyro.conf.Suppress] = 0
    """D: item embedding dim (set from the data)."""
    latent_dim: int = 16
    """d for OPMQ and RQ-VAE: dim of each expert's latent / of the RQ latent. OPQ uses ceil(D / K)."""
    expert_hidden: int = 0
    """OPMQ: hidden width of a GELU layer inside each expert; 0 (default): each expert is one linear map
    D -> d, the cheapest expert (SID assignment at K=32, C=300 is then dominated by the codeword search)."""
    hidden_dim: int = 256
    """Hidden width of the OPMQ decoder and of the RQ-VAE encoder/decoder."""
    commitment: float = 0.25
    """Weight of the commitment term ||z - sg(s)||^2."""
    ortho_weight: float = 0.1
    """OPMQ: weight of the orthogonal regulariser ||V V^T - I||_F^2 on the experts' weights."""
    opq_rotation: bool = True
    """OPQ: learn a rotation before product quantization (--no-opq-rotation: plain PQ)."""

    def validate(self) -> None:
        from store.sid import METHODS

        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("num_sids", "codebook_size", "input_dim", "latent_dim", "hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.expert_hidden < 0:
            raise ValueError(f"expert_hidden must be >= 0, got {self.expert_hidden}")


@dataclass
class FitConfig:
    """How a tokenizer is fitted to the embeddings."""

    epochs: int = 10
    """Passes over the training embeddings (more if needed to reach min_steps)."""
    min_steps: int = 500
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

    def validate(self, prefix: str = "--") -> None:
        """ConfigError naming the flag (``prefix`` + its name)."""
        for name in ("epochs", "batch_size", "kmeans_sample", "kmeans_iters", "reseed_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag(prefix, name)} must be >= 1, got {getattr(self, name)}")
        if self.min_steps < 0:
            raise ConfigError(f"{flag(prefix, 'min_steps')} must be >= 0, got {self.min_steps}")
        if not self.lr > 0:
            raise ConfigError(f"{flag(prefix, 'lr')} must be > 0, got {self.lr}")


@dataclass
class SelectConfig:
    """The validation that picks the rule (a bounded budget: a sample of the train and valid splits)."""

    min_counts: tuple[int, ...] = (5, 20, 50)
    """Cut-offs tried (besides ``all``), each with the reserved code and with the neighbours' SIDs."""
    train_rows: int = 200_000
    """At most this many train rows (the first ones) for the proxy and the co-occurrence counts."""
    valid_rows: int = 50_000
    """At most this many valid rows score the proxy."""
    proxy_dim: int = 8
    """The proxy FM's factor width."""
    proxy_epochs: int = 2
    """Passes of the proxy over its train rows (the best epoch's valid AUC counts)."""
    proxy_batch_size: int = 512
    """The proxy's rows per step (small steps, as the trainer takes: a leak shows once the rows are fitted)."""
    proxy_lr: float = 0.01
    """The proxy's Adam learning rate."""
    cooc_dim: int = 32
    """Width of the co-occurrence factors (truncated SVD) the neighbours' rows are predicted from."""

    def validate(self, prefix: str = "--select.") -> None:
        """ConfigError naming the flag (``prefix`` + its name)."""
        for name in ("train_rows", "valid_rows", "proxy_dim", "proxy_epochs", "proxy_batch_size", "cooc_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag(prefix, name)} must be >= 1, got {getattr(self, name)}")
        if not self.min_counts or min(self.min_counts) < 2:
            raise ConfigError(f"{flag(prefix, 'min_counts')} must be values >= 2, got {self.min_counts}")
        if not self.proxy_lr > 0:
            raise ConfigError(f"{flag(prefix, 'proxy_lr')} must be > 0, got {self.proxy_lr}")


@dataclass
class FMConfig:
    """The tokenizer's own short raw-ID run (``--embedding learned`` without ``--from-run``)."""

    dim: int = 16
    """D: factor width (the embeddings the tokenizer quantizes are D + 1 wide)."""
    epochs: int = 2
    """Passes over the train split."""
    batch_size: int = 512
    """Rows per step."""
    lr: float = 0.01
    """Adam learning rate (sparse Adam for the tables)."""
    l2: float = 1e-6
    """L2 penalty on the factors of the IDs in each batch."""
    seed: Annotated[int, tyro.conf.Suppress] = 0
    """Seed of the init and the shuffling (the CLI's --seed)."""

    def validate(self, prefix: str = "--fm.") -> None:
        """ConfigError naming the flag (``prefix`` + its name)."""
        for name in ("dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag(prefix, name)} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.l2 < 0:
            raise ConfigError(
                f"{flag(prefix, 'lr')} must be > 0 and {flag(prefix, 'l2')} >= 0, got {self.lr} and {self.l2}"
            )


@dataclass
class SASRecConfig:
    """Model and training settings of SASRec."""

    dim: int = 64
    """d: item embedding / hidden size."""
    max_len: int = 50
    """L: positions per sequence (the most recent items are kept)."""
    layers: int = 2
    """Transformer blocks."""
    heads: int = 2
    """Attention heads (must divide dim)."""
    dropout: float = 0.2
    """Dropout in embeddings and blocks."""
    epochs: int = 3
    """Passes over the train split."""
    batch_size: int = 256
    """Sequences per step."""
    lr: float = 1e-3
    """Adam learning rate."""
    num_negatives: int = 1
    """M: uniformly sampled negative items per position."""
    positives_only: bool = True
    """Learn only from rows whose label is positive (a click is the next item); False uses every row."""
    read_rows: int = 65_536
    """Rows read from parquet at a time; sequences are shuffled within such a block."""
    seed: Annotated[int, tyro.conf.Suppress] = 0
    """Seed for init, shuffling and negatives (the CLI's --seed)."""

    def validate(self, prefix: str = "--") -> None:
        """ConfigError naming the flag (``prefix`` + its name)."""
        for name in (
            "dim",
            "max_len",
            "layers",
            "heads",
            "epochs",
            "batch_size",
            "num_negatives",
            "read_rows",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag(prefix, name)} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ConfigError(
                f"{flag(prefix, 'heads')} ({self.heads}) must divide {flag(prefix, 'dim')} ({self.dim})"
            )


OOF_MODES = ("auto", "on", "off")
"""Out-of-fold codes for the train rows (``--oof``): a candidate of the selection, forced, or none."""
RARE_MODES = ("reserved", "neighbours")
"""What an ID seen fewer than min-count times in train gets (``--rare``): the reserved code, or its
neighbours' SIDs."""


@dataclass
class TokenizerOptions:
    """How SIDs are made: every choice of the tokenizer stage except the dataset, the output folder,
    the seed, the features (``--high-card``) and the run the learned rows come from (``--from-run``)."""

    model: Annotated[TokenizerConfig, FLAT] = field(default_factory=TokenizerConfig)
    """The tokenizer's architecture (--method, --num-sids, --codebook-size, ...)."""
    embedding: str = ""
    """The item's embedding source: content, text, sasrec, content+sasrec or learned (empty: content if the
    item table has embeddings, else learned); other features always use learned."""
    min_count: int = 0
    """learned: IDs seen fewer than this many times in the train split get the reserved code (or, with
    --rare neighbours, their neighbours' SIDs). 0 (default): chosen from the data, by validation
    (store.tokenizer.select): every candidate rule is scored by a proxy model on the valid split."""
    rare: str = ""
    """learned: what IDs under the cut-off get: reserved (the reserved code) or neighbours (the SIDs of
    the row their co-occurrence predicts). Empty: both are candidates (--min-count 0), else reserved."""
    oof: str = "auto"
    """learned: out-of-fold codes for the train rows. The train split's rows are hashed into --oof-folds
    folds (``store.sid.row_folds``); for each fold the tokenizer's FM learns the rows without that fold,
    and the fold's train rows take those rows' SIDs, so no training row's label reaches its own SIDs
    (valid and test rows take the SIDs of the FM's rows learned on the whole train split). auto: one
    candidate of the selection (rule ``out-of-fold``, scored like the others); on: forced; off: none."""
    oof_folds: int = 4
    """Folds of the out-of-fold codes (--oof): F + 1 short FM runs."""
    disambiguate: bool = False
    """Add one code per feature that makes the SID tuples of the IDs with real SIDs unique (the most
    frequent of IDs sharing a tuple gets 0, the next 1, ...): K + 1 codes per ID."""
    select: SelectConfig = field(default_factory=SelectConfig)
    """The validation that picks the rule for learned IDs (--min-count 0)."""
    fm: FMConfig = field(default_factory=FMConfig)
    """learned without --from-run: the small FM trained on the train split."""
    max_train_items: int = 1_000_000
    """Train on a sample of this many items."""
    encode_batch_size: int = 8192
    """Items per batch when assigning SIDs."""
    threads: int = 0
    """Torch intra-op threads (0: torch's default; 1 is much faster on a CPU shared with other jobs)."""
    fit: Annotated[FitConfig, FLAT] = field(default_factory=FitConfig)
    """How the tokenizer is fitted (--epochs, --min-steps, --lr, ...)."""
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    """SASRec embeddings (--embedding sasrec or content+sasrec)."""

    def validate(self, prefix: str = "--") -> None:
        """ConfigError naming the flag (``prefix`` + its name: ``--num-sids`` on the tokenizer's command
        line, ``--tokenizer.num-sids`` on launch.compare's), the value and the rule."""
        from store.sid import METHODS
        from store.tokenizer.embeddings import LEARNED, SOURCES

        m = self.model
        for name in ("num_sids", "codebook_size", "latent_dim", "hidden_dim"):
            if getattr(m, name) < 1:
                raise ConfigError(f"{flag(prefix, name)} must be >= 1, got {getattr(m, name)}")
        for name in ("max_train_items", "encode_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag(prefix, name)} must be >= 1, got {getattr(self, name)}")
        if m.expert_hidden < 0:
            raise ConfigError(f"{flag(prefix, 'expert_hidden')} must be >= 0, got {m.expert_hidden}")
        if m.method not in METHODS:
            raise ConfigError(
                f"{flag(prefix, 'method')} must be one of {', '.join(METHODS)}, got {m.method!r}"
            )
        if self.embedding and self.embedding not in (*SOURCES, LEARNED):
            choices = ", ".join((*SOURCES, LEARNED))
            raise ConfigError(f"{flag(prefix, 'embedding')} must be one of {choices}, got {self.embedding!r}")
        if self.min_count < 0:
            raise ConfigError(
                f"{flag(prefix, 'min_count')} must be >= 0 (0: chosen by validation), got {self.min_count}"
            )
        if self.rare and self.rare not in RARE_MODES:
            raise ConfigError(
                f"{flag(prefix, 'rare')} must be one of {', '.join(RARE_MODES)}, got {self.rare!r}"
            )
        if self.threads < 0:
            raise ConfigError(f"{flag(prefix, 'threads')} must be >= 0, got {self.threads}")
        if self.oof not in OOF_MODES:
            raise ConfigError(
                f"{flag(prefix, 'oof')} must be one of {', '.join(OOF_MODES)}, got {self.oof!r}"
            )
        if self.oof_folds < 2:
            raise ConfigError(f"{flag(prefix, 'oof_folds')} must be >= 2, got {self.oof_folds}")
        if self.oof == "on" and self.disambiguate:
            raise ConfigError(f"{flag(prefix, 'oof')} on and {flag(prefix, 'disambiguate')} do not combine")
        self.select.validate(prefix + "select.")
        self.fm.validate(prefix + "fm.")
        self.fit.validate(prefix)
        self.sasrec.validate(prefix + "sasrec.")

    def record(self) -> dict:
        """The options as the tokenizer records them among its inputs, keyed as their flags are named
        (the architecture's and the fit's fields at the top level, ``select``, ``fm`` and ``sasrec`` as
        groups); without input_dim (it comes from the data), threads (it changes no code) and the groups'
        seeds (the run's --seed sets them)."""
        d = dataclasses.asdict(self)
        model, fit = d.pop("model"), d.pop("fit")
        model.pop("input_dim")
        fit.pop("seed")
        for group in ("fm", "sasrec"):
            d[group].pop("seed")
        d.pop("threads")
        return {**model, **fit, **d}


def flag(prefix: str, name: str) -> str:
    """``--num-sids`` from ("--", "num_sids"); ``--tokenizer.select.train-rows`` from
    ("--tokenizer.select.", "train_rows")."""
    return prefix + name.replace("_", "-")


def option_fields(cls: type = TokenizerOptions, prefix: str = "") -> dict[str, type]:
    """{flag name without dashes: its type} of every leaf option, as the command line spells it
    (``num-sids``, ``select.train-rows``, ``sasrec.positives-only``): read from the dataclasses, no torch."""
    out: dict[str, type] = {}
    hints = get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        extras: tuple = ()
        if get_origin(hint) is Annotated:
            hint, *rest = get_args(hint)
            extras = tuple(rest)
        if tyro.conf.Suppress in extras:
            continue
        if dataclasses.is_dataclass(hint):
            inner = prefix if any(e is FLAT for e in extras) else f"{prefix}{f.name.replace('_', '-')}."
            out |= option_fields(hint, inner)
        else:
            out[prefix + f.name.replace("_", "-")] = hint
    return out


def option_flags(values: dict[str, str], prefix: str = "--tokenizer.") -> list[str]:
    """NAME=VALUE pairs (``{"num-sids": "8", "disambiguate": "true"}``) -> the flags that set them
    (``--tokenizer.num-sids 8 --tokenizer.disambiguate``): ConfigError for a name that is no option."""
    known = option_fields()
    args: list[str] = []
    for name, value in values.items():
        key = name.strip().replace("_", "-")
        if key not in known:
            raise ConfigError(
                f"unknown tokenizer option {name!r} (python -m store.tokenizer --help lists them)"
            )
        if known[key] is bool:
            word = str(value).strip().lower()
            if word not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                raise ConfigError(f"tokenizer option {name}: expected true or false, got {value!r}")
            group, _, leaf = key.rpartition(".")
            on = word in ("true", "yes", "1", "on")
            args.append(prefix + (key if on else (f"{group}." if group else "") + f"no-{leaf}"))
        else:
            args += [prefix + key, str(value)]
    return args
