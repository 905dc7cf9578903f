"""ID-ZCH ("id-zch", ``--model.id_zch.rows`` B): the ID twin (``store.models.store``, the same tokens as
"id": each tokenized feature's raw-ID embedding projected into K tokens) whose raw-ID tables are
TorchRec managed-collision ("zero collision hashing") tables of B rows each.

Each tokenized feature's table (``t_item``, shared by every item-valued feature as in "id", and
``t_<f>`` per other high-cardinality feature) sits behind TorchRec's ``MCHManagedCollisionModule``,
all of them in one ``ManagedCollisionCollection`` in front of the lookup:
``ManagedCollisionEmbeddingBagCollection`` (pooled history, the default) or
``ManagedCollisionEmbeddingCollection`` (``--model.history_tokens true``). The module maps raw IDs of
any size to rows: B - 1 rows hold one raw ID each, and row B - 1 is shared by every ID without a row
(TorchRec keeps the last slot for them). In training every forward records the batch's IDs, and every
``--model.id_zch.eviction_interval`` steps the IDs seen since the last round compete with the
residents for the rows (``lfu``: TorchRec's ``DistanceLFU_EvictionPolicy``, count / (steps since last
seen + 1); ``lru``: ``LRU_EvictionPolicy``); losers are evicted, winners admitted. A row freed on CPU
keeps the evicted ID's trained weights and optimizer state for its newcomer (the unsharded
``ManagedCollision*Collection``'s eviction hook is a no-op in TorchRec 1.6-1.8); TorchRec's row-wise
sharded one (GPU) re-initialises them. Evaluation only reads the map. The remap is stateful and runs
inside the forward (unlike ID-hash's data-time hash), so this model has no batch transform.

The eviction interval defaults to 1 step: an ID gets its row in the step it wins one (with k > 1, new
IDs share row B - 1 for up to k steps, and the table is empty for the first k steps), a round costs
a sort of B + (batch IDs) values, small beside the transformer, and a checkpoint then never falls
between rounds: TorchRec keeps the IDs seen since the last round in a buffer that is not saved, so
with k > 1 a resume is exact only from a checkpoint step that is a multiple of k.

Counts (``ZchCounts``, summary.json's ``zch``): ``CountingMCH`` is TorchRec's module with, per row,
the IDs admitted to it and evicted from it (the occupants before and after every round, compared row
by row: exact), and a bitmap of the raw IDs that ever held a row (``admitted``: distinct IDs, an ID
evicted and admitted again counts once) over the dataset's ID range. These are buffers of the
module, saved and restored with the model like TorchRec's own (mapping, counts, last access), so a
resumed run counts on. The bookkeeping is not embedding memory: TorchRec holds 3 to 4 int64 per row
(raw ID, row, count and/or last access), the counters 2 more, the bitmap one byte per possible ID
(``ZchCounts.buffer_bytes``), and TorchRec's buffer of the IDs seen since the last round holds 1.25 x
the first batch's IDs x the interval (a later batch with more IDs than that is counted in part).

Sharding: TorchRec shards a managed-collision collection row-wise only, and row-wise sharding needs
GPUs. On CPU the trainer therefore leaves the collection unsharded (``trainer.distributed``: the MC
sharders are left out, so the planner shards the embedding collection inside, table- or column-wise
or replicated) and refuses several processes (exit 2): a replicated remapper would give the same ID
different rows on different ranks. On CUDA the tables are sharded row-wise (the collection with
them, each rank remapping the IDs of its rows), which ``benchmarks/gpu_check.py`` runs (written
without a GPU at hand, it has not run there yet); there the
bitmap of each shard is not saved (TorchRec saves every buffer of a sharded module as rows of the
table), so a resumed sharded run counts ``admitted`` since the resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mc_embedding_modules import (
    ManagedCollisionEmbeddingBagCollection,
    ManagedCollisionEmbeddingCollection,
)
from torchrec.modules.mc_modules import (
    DistanceLFU_EvictionPolicy,
    LRU_EvictionPolicy,
    ManagedCollisionCollection,
    MCHEvictionPolicy,
    MCHManagedCollisionModule,
)

from data_pipeline.batch import Batch
from data_pipeline.spec import DatasetSpec
from store.models.flops import store_flops
from store.models.layers import item_collection
from store.models.registry import ModelSpec, flag_error
from store.models.store import RawTokens, StoreModel, _id_tokens, store_inputs
from store.sid import SidTable, sid_sources

if TYPE_CHECKING:
    from store.models.config import ModelConfig

EVICTIONS = ("lfu", "lru")
FREE = torch.iinfo(torch.int64).max
"""TorchRec's raw ID of a row that holds no ID (and of the shared last row)."""


@dataclass
class IdZchConfig:
    """ID-ZCH's own hyper-parameters (--model.id_zch.*): its managed-collision raw-ID tables."""

    rows: int = 256
    """The row budget B of each tokenized feature's raw-ID table (the item table, shared by every
    item-valued feature, and one table per other high-cardinality feature): B - 1 rows for admitted
    IDs, the last shared by the IDs without a row. The default is id-hash's (4 SIDs x 64 codes)."""
    eviction: str = "lfu"
    """Which IDs keep their rows: 'lfu' (TorchRec's DistanceLFU: count / (steps since last seen + 1))
    or 'lru' (the most recently seen)."""
    eviction_interval: int = 1
    """Training steps between admission/eviction rounds (1: an ID can get its row in the step it first
    appears, and a resume is exact from any checkpoint)."""

    def validate(self, model_config: ModelConfig) -> None:
        if self.rows < 2:
            raise flag_error("id_zch.rows", self.rows, "must be >= 2 (the last row is for IDs without a row)")
        if self.eviction not in EVICTIONS:
            raise flag_error("id_zch.eviction", self.eviction, f"must be one of {', '.join(EVICTIONS)}")
        if self.eviction_interval < 1:
            raise flag_error("id_zch.eviction_interval", self.eviction_interval, "must be >= 1")


class CountingMCH(MCHManagedCollisionModule):
    """TorchRec's ``MCHManagedCollisionModule`` counting, per row, the IDs it admitted and evicted, and
    marking the raw IDs in [0, ``id_range``) that ever held a row (no bitmap when None).

    Its constructor takes MCHManagedCollisionModule's arguments (TorchRec rebuilds it per shard)."""

    def __init__(self, *args, id_range: int | None = None, persistent_ids: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        rows, device = self._zch_size, self.device
        self.id_range = id_range
        self.register_buffer("_zch_admissions", torch.zeros(rows, dtype=torch.int64, device=device))
        self.register_buffer("_zch_evictions", torch.zeros(rows, dtype=torch.int64, device=device))
        if id_range is not None:
            ids = torch.zeros(id_range, dtype=torch.bool, device=device)
            self.register_buffer("_zch_admitted_ids", ids, persistent=persistent_ids)

    def profile(self, features):
        if not self.training:
            return super().profile(features)
        raw, rows = self._mch_sorted_raw_ids.clone(), self._mch_remapped_ids_mapping.clone()
        out = super().profile(features)
        if not torch.equal(raw, self._mch_sorted_raw_ids):  # a round changed occupants
            self._count(raw, rows)
        return out

    @torch.no_grad()
    def _count(self, raw_before: torch.Tensor, rows_before: torch.Tensor) -> None:
        """Compare each row's occupant before and after a round (rows are ``_mch_remapped_ids_mapping``,
        permuted with the sorted raw IDs; an ID keeps its row while it stays)."""
        offset = self._output_global_offset
        before, after = torch.empty_like(raw_before), torch.empty_like(raw_before)
        before[rows_before - offset] = raw_before
        after[self._mch_remapped_ids_mapping - offset] = self._mch_sorted_raw_ids
        changed = before != after
        self._zch_evictions += (changed & (before != FREE)).long()
        admitted = changed & (after != FREE)
        self._zch_admissions += admitted.long()
        if self.id_range is not None:
            ids = after[admitted]
            if ids.numel() and (ids.min() < 0 or ids.max() >= self.id_range):
                raise ValueError(
                    f"ZCH table {self._name}: raw IDs outside [0, {self.id_range}) (the dataset's ID range)"
                )
            self._zch_admitted_ids[ids] = True

    def rebuild_with_output_id_range(self, output_id_range, output_segments, device=None) -> CountingMCH:
        """TorchRec's per-shard copy (row-wise sharding), with the ID bitmap left out of the state dict
        (TorchRec saves every buffer of a sharded MC module as rows of the table)."""
        return type(self)(
            name=self._name,
            zch_size=output_id_range[1] - output_id_range[0],
            device=device or self.device,
            eviction_policy=self._eviction_policy,
            eviction_interval=self._eviction_interval,
            input_hash_size=self._input_hash_size,
            input_hash_func=self._input_hash_func,
            output_global_offset=output_id_range[0],
            output_segments=output_segments,
            buckets=len(output_segments) - 1,
            id_range=self.id_range,
            persistent_ids=False,
        )


@dataclass
class ZchCounts:
    """One managed-collision table at the end of a run (this process's rows of it)."""

    rows: int
    """Rows of the table (B; a shard's rows when sharded)."""
    admitted: int | None
    """Distinct raw IDs that ever held a row (None: no ID bitmap)."""
    admissions: int
    """IDs given a row, an ID admitted again after its eviction counted again."""
    evicted: int
    """IDs that lost their row to another (admissions = evicted + occupied)."""
    occupied: int
    """Rows holding an ID at the end (at most B - 1)."""
    buffer_bytes: int
    """Bytes of the module's saved state (TorchRec's map and eviction metadata, the counters, the bitmap;
    the buffer of IDs seen since the last round, sized by TorchRec from the first batch, comes on top)."""


def zch_counts(model: nn.Module) -> dict[str, ZchCounts]:
    """{table: ZchCounts} of every ``CountingMCH`` in ``model`` (sharded or not), in module order."""
    out = {}
    for module in model.modules():
        if isinstance(module, CountingMCH):
            ids = getattr(module, "_zch_admitted_ids", None)
            out[module._name] = ZchCounts(
                rows=module._zch_size,
                admitted=int(ids.sum()) if ids is not None else None,
                admissions=int(module._zch_admissions.sum()),
                evicted=int(module._zch_evictions.sum()),
                occupied=int((module._mch_sorted_raw_ids != FREE).sum()),
                buffer_bytes=sum(t.numel() * t.element_size() for t in module.state_dict().values()),
            )
    return out


def eviction_policy(name: str) -> MCHEvictionPolicy:
    """``--model.id_zch.eviction`` as TorchRec's policy."""
    return DistanceLFU_EvictionPolicy() if name == "lfu" else LRU_EvictionPolicy()


def managed_collection(
    collection: nn.Module, zch: IdZchConfig, id_ranges: dict[str, int], device: torch.device | None
) -> ManagedCollisionEmbeddingBagCollection | ManagedCollisionEmbeddingCollection:
    """``collection`` (an EmbeddingBagCollection or EmbeddingCollection of B-row tables) behind one
    ``CountingMCH`` per table. ``id_ranges``: {table: its raw IDs' range}. The MC modules' buffers are
    built on ``device``, on the CPU when it is meta (DMP materialises parameters only)."""
    pooled = isinstance(collection, EmbeddingBagCollection)
    configs = collection.embedding_bag_configs() if pooled else collection.embedding_configs()
    home = device if device is not None and device.type != "meta" else torch.device("cpu")
    modules = {
        c.name: CountingMCH(
            zch_size=c.num_embeddings,
            device=home,
            eviction_policy=eviction_policy(zch.eviction),
            eviction_interval=zch.eviction_interval,
            name=c.name,
            id_range=id_ranges[c.name],
        )
        for c in configs
    }
    mcc = ManagedCollisionCollection(modules, configs)
    if pooled:
        return ManagedCollisionEmbeddingBagCollection(collection, mcc)
    return ManagedCollisionEmbeddingCollection(collection, mcc)


class ZchTokens(RawTokens):
    """RawTokens over managed-collision tables: the collection returns (embeddings, None)."""

    def lookup(self, batch: Batch):
        out, _ = self.ec(batch.sparse)  # raw IDs remapped to rows inside (and, in training, counted)
        return out.to_dict() if self.pooled else out


def build_id_zch(
    spec: DatasetSpec, cfg: ModelConfig, sids: SidTable | None, device: torch.device | None
) -> StoreModel:
    """ID-ZCH: the ID twin (same tokens) with each tokenized feature's raw-ID table a managed-collision
    table of ``--model.id_zch.rows`` rows; raw batches (the remap runs in the forward)."""
    rows = cfg.id_zch.rows
    inputs = store_inputs(spec, cfg.feature_groups, None, _id_tokens(cfg, sids), cfg.embedding_init_std, rows)
    if not inputs.token_tables:  # no tokenized feature: the plain ID twin
        return StoreModel(inputs, cfg, device)
    id_ranges = {t.name: spec.table_rows(src) for t, src in zip(inputs.token_tables, sid_sources(spec))}
    pooled = not cfg.history_tokens
    d = cfg.embedding_dim
    collection = managed_collection(item_collection(inputs.token_tables, d, pooled, device), cfg.id_zch,
                                    id_ranges, device)  # fmt: skip
    lengths = {f.name: f.max_len for f in inputs.history}
    items = ZchTokens(inputs.token_tables, inputs.tokenized, inputs.num_tokens, lengths, d, pooled, device,
                      collection=collection)  # fmt: skip
    return StoreModel(inputs, cfg, device, items=items)


SPEC = ModelSpec("id-zch", build_id_zch, config=IdZchConfig, budget="rows", flops=store_flops)
