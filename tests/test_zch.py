"""The "id-zch" arm: the ID model whose tokenized features' raw-ID tables are TorchRec managed-collision
tables of ``--model.id_zch.rows`` rows (``store.models.zch``)."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection
from torchrec.modules.mc_modules import DistanceLFU_EvictionPolicy, LRU_EvictionPolicy
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from data_pipeline.cli import ConfigError
from data_pipeline.spec import DatasetSpec
from store.models.config import ModelConfig
from store.models.layers import low_cardinality_features
from store.models.zch import IdZchConfig, ZchCounts, managed_collection, zch_counts
from store.models.zoo import batch_transform, build_model
from store.sid import sid_sources
from tests.test_arms import _train
from tests.test_sid import NUM_ITEMS, tiny_batch, tiny_spec
from trainer import distributed as D
from trainer.checkpoint import CheckpointManager

ROWS = 16


def test_id_zch_trains_and_its_tables_hold_the_budget(run, tiny_data, tmp_path):
    summary = _train(run, tiny_data, tmp_path / "zch", "id-zch", "--model.id_zch.rows", str(ROWS))
    assert summary["steps"] > 0 and 0.0 < summary["logloss"] < 2.0
    spec = DatasetSpec.load(tiny_data)
    sources = list(sid_sources(spec))  # the tokenized features, one table each: t_item, t_user_id
    assert sources == ["item_id", "user_id"]
    width = 4 * ModelConfig().embedding_dim  # float32 bytes per row
    static = sum(spec.feature(f).vocab_size for f in low_cardinality_features(spec)) * width
    assert summary["embedding_bytes_per_rank"] == [static + len(sources) * ROWS * width]
    # on CPU the collection inside is planned like any other; the remapper stays whole
    plan = {r["table"]: r["module"] for r in summary["sharding_plan"]}
    assert plan["t_item"] == plan["t_user_id"] == "model.items.ec._embedding_module"
    zch = summary["zch"]
    assert set(zch) == {"t_item", "t_user_id"}
    for table, c in zch.items():
        assert c["rows"] == ROWS and 0 < c["occupied"] <= ROWS - 1, (table, c)
        assert c["admissions"] == c["evicted"] + c["occupied"] and c["admitted"] <= c["admissions"]
    assert zch["t_user_id"]["evicted"] > 0  # 60 users for 15 rows


def test_id_zch_buffers_survive_resume(run, tiny_data, tmp_path):
    """A run killed after its step-4 checkpoint and resumed ends as the uninterrupted one: same
    scores, same admission and eviction counts (the MC modules' buffers are in the checkpoint)."""
    flags = ["--model.id_zch.rows", str(ROWS), "--batch-size", "96", "--checkpoint.every", "4"]
    flags += ["--checkpoint.keep", "10", "--model.num_layers", "1"]
    ref = _train(run, tiny_data, tmp_path / "ref", "id-zch", *flags)
    assert ref["steps"] == 10 and ref["zch"]["t_user_id"]["evicted"] > 0

    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "ref", killed)
    (killed / "summary.json").unlink()
    for step in (8, 10):  # as if killed after step 4's checkpoint
        shutil.rmtree(killed / "checkpoints" / f"step_{step}")
    saved = CheckpointManager.keys(killed / "checkpoints" / "step_4")
    for buffer in ("_mch_sorted_raw_ids", "_mch_remapped_ids_mapping", "_mch_counts", "_zch_admitted_ids"):
        assert (
            f"model.model.items.ec._managed_collision_collection._managed_collision_modules.t_item.{buffer}"
            in saved
        )
    resumed = _train(run, tiny_data, killed, "id-zch", *flags, "--resume")
    assert resumed["steps"] == ref["steps"] and resumed["zch"] == ref["zch"]
    assert resumed["logloss"] == ref["logloss"] and resumed["auc"] == ref["auc"]


def _reference_distance_lfu(batches: list[list[int]], slots: int) -> dict[str, int]:
    """DistanceLFU by hand: after each batch (one round per step), every ID seen in it competes with the
    residents; score = count / (step - last step seen + 1), a resident's count summed over its stay, a
    newcomer's the batch's; the ``slots`` best keep or take a row."""
    residents: dict[int, tuple[int, int]] = {}  # id -> (count, last step seen)
    ever: set[int] = set()
    admissions = evicted = 0
    for step, batch in enumerate(batches, start=1):
        seen = Counter(batch)
        candidates = {i: (residents[i][0] + seen[i], step) if i in seen else residents[i] for i in residents}
        candidates |= {i: (c, step) for i, c in seen.items() if i not in residents}
        score = {i: c / (step - last + 1) for i, (c, last) in candidates.items()}
        kept = sorted(score, key=score.get, reverse=True)[:slots]
        assert len(kept) < slots or score[kept[-1]] > max(
            [s for i, s in score.items() if i not in kept], default=-1
        ), "a tie at the cut"
        admissions += sum(i not in residents for i in kept)
        evicted += sum(i not in kept for i in residents)
        ever |= set(kept)
        residents = {i: candidates[i] for i in kept}
    return {"admitted": len(ever), "admissions": admissions, "evicted": evicted, "occupied": len(residents)}


def _table(rows: int, eviction: str = "lfu") -> ManagedCollisionEmbeddingBagCollection:
    config = EmbeddingBagConfig(
        name="t_item",
        embedding_dim=4,
        num_embeddings=rows,
        feature_names=["item_id"],
        pooling=PoolingType.MEAN,
    )
    ebc = EmbeddingBagCollection(tables=[config])
    zch = IdZchConfig(rows=rows, eviction=eviction)
    return managed_collection(ebc, zch, {"t_item": 64}, device=None)


def _feed(table: ManagedCollisionEmbeddingBagCollection, ids: list[int]) -> None:
    table(_kjt(ids))


def _kjt(ids: list[int]) -> KeyedJaggedTensor:
    return KeyedJaggedTensor.from_lengths_sync(
        ["item_id"], torch.tensor(ids), torch.ones(len(ids), dtype=torch.long)
    )


def test_a_small_zch_table_admits_and_evicts_exactly():
    """8 rows (7 for IDs, row 7 shared), 50 IDs: step 1 IDs 1..7 16..10 times, 8..50 twice; step 2
    IDs 48..50 20 times, 8..20 once; step 3 ID 5 (evicted in step 2) 30 times, ID 21 3 times."""
    batches = [
        [i for i in range(1, 8) for _ in range(17 - i)] + [i for i in range(8, 51) for _ in range(2)],
        [i for i in (48, 49, 50) for _ in range(20)] + list(range(8, 21)),
        [5] * 30 + [21] * 3,
    ]
    expected = _reference_distance_lfu(batches, slots=7)
    # by hand: 7 in; 48..50 take the rows of 7, 6, 5 (scores 5, 5.5, 6 < 20); 5 takes 4's (13/3)
    assert expected == {"admitted": 10, "admissions": 11, "evicted": 4, "occupied": 7}
    table = _table(8)
    mch = table._managed_collision_collection._managed_collision_modules["t_item"]
    assert isinstance(mch._eviction_policy, DistanceLFU_EvictionPolicy)
    for batch in batches:
        _feed(table, batch)
    counts = zch_counts(table)["t_item"]
    assert counts == ZchCounts(rows=8, **expected, buffer_bytes=counts.buffer_bytes)
    # per row: admitted once more than evicted exactly where an ID sits now
    held = torch.zeros(8, dtype=torch.long)
    held[mch._mch_remapped_ids_mapping[mch._mch_sorted_raw_ids != torch.iinfo(torch.int64).max]] = 1
    assert torch.equal(mch._zch_admissions - mch._zch_evictions, held)
    assert mch._zch_admitted_ids.nonzero().flatten().tolist() == [1, 2, 3, 4, 5, 6, 7, 48, 49, 50]
    # evaluation only reads the map: resident IDs have rows of their own, the others share row 7
    table.eval()
    rows = table._managed_collision_collection(_kjt([5, 48, 1, 4, 21, 33])).values().tolist()
    assert len(set(rows[:3])) == 3 and max(rows[:3]) < 7 and rows[3:] == [7, 7, 7]
    assert zch_counts(table)["t_item"] == counts

    lru = _table(8, "lru")
    assert isinstance(lru._managed_collision_collection._managed_collision_modules["t_item"]._eviction_policy,
                      LRU_EvictionPolicy)  # fmt: skip
    for batch in batches:
        _feed(lru, batch)
    c = zch_counts(lru)["t_item"]
    assert c.occupied == 7 and c.admissions == c.evicted + c.occupied and c.evicted >= 2
    lru.eval()  # the two IDs of the last step are the most recent: both hold rows, 33 does not
    rows = lru._managed_collision_collection(_kjt([5, 21, 33])).values().tolist()
    assert rows[0] != rows[1] and max(rows[:2]) < 7 and rows[2] == 7


def test_id_zch_model_has_the_id_models_tokens_and_budget_rows():
    spec = tiny_spec()
    cfg = ModelConfig(id_item_tokens=3, id_zch=IdZchConfig(rows=ROWS))
    zch, raw = build_model("id-zch", spec, cfg, None), build_model("id", spec, cfg, None)
    assert isinstance(zch.items.ec, ManagedCollisionEmbeddingBagCollection)
    configs = zch.items.ec._embedding_module.embedding_bag_configs()
    assert {c.name: c.num_embeddings for c in configs} == {"t_item": ROWS}  # serves item_id and hist_items
    assert configs[0].feature_names == ["item_id", "hist_items"]
    mch = zch.items.ec._managed_collision_collection._managed_collision_modules["t_item"]
    assert mch.id_range == NUM_ITEMS and mch._eviction_interval == 1
    assert zch.num_item_tokens == raw.num_item_tokens == 3 and zch.num_fixed_tokens == raw.num_fixed_tokens
    assert batch_transform("id-zch", spec, None, cfg) is None  # raw batches: the remap is in the forward
    batch = tiny_batch(spec, rows=64)
    assert torch.isfinite(zch(batch).logits).all()
    assert zch_counts(zch)["t_item"].admissions > 0


def test_several_cpu_processes_are_refused_naming_the_flag():
    model = build_model("id-zch", tiny_spec(), ModelConfig(), None, device=torch.device("meta"))
    two = D.DistEnv(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), backend="gloo")
    with pytest.raises(ConfigError, match=r"--nproc 2 .*managed-collision.*--nproc 1"):
        D.check_managed_collisions(model, two)
    D.check_managed_collisions(model, D.DistEnv(0, 1, 0, torch.device("cpu"), "gloo"))
    D.check_managed_collisions(build_model("id", tiny_spec(), ModelConfig(), None), two)  # no MC: fine
    tables = {t.name: t for t in D.embedding_tables(model)}
    assert tables["t_item"].managed and not tables["t_user_age"].managed
    assert D.auto_sharding_type(tables["t_item"], 2, torch.device("cuda"), 4096) == "row_wise"


def test_a_bad_budget_exits_2_naming_the_flag(run, tiny_data, tmp_path):
    for flag, value in (("rows", "1"), ("eviction", "fifo"), ("eviction_interval", "0")):
        done = run("-m", "trainer", "--data", str(tiny_data), "--model", "id-zch", "--out", str(tmp_path / "o"),
                   f"--model.id_zch.{flag}", value)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert f"--model.id_zch.{flag} must be" in done.stderr
