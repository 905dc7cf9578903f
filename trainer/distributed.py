"""Process group, sharding plan and `DistributedModelParallel`: distribution wraps the model from outside.

The model zoo builds single-device models whose sparse embeddings all live in TorchRec
`EmbeddingBagCollection` / `EmbeddingCollection` modules (on the meta device, so no rank ever holds a
whole raw-ID table). Here we

1. start a process group (torchrun's env, or a one-process group on a free local port),
2. attach the sparse optimizer to the embedding weights (fused into the backward by TorchRec),
3. pick a sharding type per table (automatic default, per-table overrides) and let TorchRec's
   `EmbeddingShardingPlanner` place the shards (`collective_plan`: every rank gets rank 0's plan),
4. wrap the model in `DistributedModelParallel` (dense part data-parallel).

A managed-collision collection (ID-ZCH, ``store.models.zch``: a stateful raw-ID -> row remapper in front
of an embedding collection) is sharded with its tables, row-wise, on CUDA only (TorchRec's MC sharders
offer row-wise alone, which gloo lacks). On CPU its sharders are left out: the planner shards the
embedding collection inside like any other and the remapper stays whole in the one process; several
CPU processes are refused (`check_managed_collisions`), as each would remap the IDs its own way.

Every collective the trainer runs outside TorchRec and DCP is here too (`barrier`, `all_reduce`,
`all_gather_floats`, `gather_tensors`, `broadcast_from_main`); each is a no-op in a group of one.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingEnv, ShardingPlan, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.modules.mc_embedding_modules import BaseManagedCollisionEmbeddingCollection

from data_pipeline.cli import ConfigError
from store.models.layers import EXCLUSIVE_INPUT

log = logging.getLogger(__name__)

SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "data_parallel")
"""What `--sharding.default` and `--sharding.tables` accept (TorchRec's `ShardingType` values)."""
CPU_SHARDING_TYPES = ("table_wise", "column_wise", "data_parallel")
"""TorchRec shards these on CPU (gloo); row-wise needs GPUs."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process runs."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_cuda(local_rank: int = 0, flag: str = "--device cuda") -> None:
    """ConfigError (exit 2) naming ``flag`` when this process cannot use GPU ``local_rank``: a torch
    built without CUDA, no GPU visible, or fewer GPUs than the processes started on this node."""
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            why = f"torch {torch.__version__} is built without CUDA"
        else:
            why = f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU"
        raise ConfigError(f"{flag}: CUDA is not available on this machine ({why}); use --device cpu or auto")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(
            f"{flag}: process LOCAL_RANK={local_rank} needs GPU {local_rank}, but this node has "
            f"{count} GPU(s); start at most {count} processes per node"
        )


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group torchrun/TorchX describe in the environment, or make a 1-process one.

    device: "auto" (cuda if available), "cpu" or "cuda". CPU uses gloo, CUDA nccl.
    """
    flag = f"--device {device}"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    launched = "WORLD_SIZE" in os.environ  # torchrun / TorchX set RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank = int(os.environ["RANK"]) if launched else 0
    world_size = int(os.environ["WORLD_SIZE"]) if launched else 1
    local_rank = int(os.environ.get("LOCAL_RANK", rank)) if launched else 0
    if device == "cuda":
        check_cuda(local_rank, flag)
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        if launched:
            dist.init_process_group(backend=backend)
        else:  # plain `python -m trainer`: a group of one on a free local port
            init = f"tcp://127.0.0.1:{_free_port()}"
            dist.init_process_group(backend=backend, init_method=init, rank=0, world_size=1)
    return DistEnv(rank, world_size, local_rank, dev, backend)


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# -- collectives ---------------------------------------------------------------------------------
def _several_ranks() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _several_ranks():
        dist.barrier()


_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce `t` over ranks in place ("sum", "min" or "max") and return it."""
    if _several_ranks():
        dist.all_reduce(t, op=_REDUCE_OPS[op])
    return t


def all_gather_floats(values: list[float], device: torch.device) -> list[list[float]]:
    """[values of rank 0, values of rank 1, ...] (small float vectors, the same length on every rank)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if not _several_ranks():
        return [t.tolist()]
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [o.tolist() for o in out]


def gather_tensors(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor from every rank (rank order); ranks may hold different lengths.

    The result is on `t`'s device. torchmetrics pads to the longest rank, all-gathers and trims
    (imported here: the package pulls in scipy and transformers, seconds at every one-process start).
    """
    if not _several_ranks():
        return t
    from torchmetrics.utilities.distributed import gather_all_tensors

    home = t.device
    if dist.get_backend() == "nccl":  # nccl moves only CUDA tensors
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    return torch.cat(gather_all_tensors(t)).to(home)


def broadcast_from_main(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rank 0's `t` on every rank (sent through `device`; returned on `t`'s device)."""
    if not _several_ranks():
        return t
    sent = t.to(device)
    dist.broadcast(sent, src=0)
    return sent.to(t.device)


@dataclass(frozen=True)
class TableInfo:
    """One embedding table of the model, as the planner sees it."""

    name: str
    num_embeddings: int
    embedding_dim: int
    features: tuple[str, ...]
    pooled: bool
    """True: in an EmbeddingBagCollection; False: in an EmbeddingCollection (sequence features)."""
    exclusive_input: bool = False
    """Its collection receives a KJT holding only the features it serves (``EXCLUSIVE_INPUT``)."""
    managed: bool = False
    """Behind a managed-collision module (its collection inside a ManagedCollision*Collection)."""


def embedding_tables(model: nn.Module) -> list[TableInfo]:
    """Every table of every EmbeddingBagCollection / EmbeddingCollection in the model."""
    tables = []
    managed = {id(m._embedding_module) for m in managed_collections(model)}
    for module in model.modules():
        if isinstance(module, EmbeddingBagCollection):
            configs, pooled = module.embedding_bag_configs(), True
        elif isinstance(module, EmbeddingCollection):
            configs, pooled = module.embedding_configs(), False
        else:
            continue
        exclusive = bool(getattr(module, EXCLUSIVE_INPUT, False))
        tables += [
            TableInfo(
                c.name,
                c.num_embeddings,
                c.embedding_dim,
                tuple(c.feature_names),
                pooled,
                exclusive,
                id(module) in managed,
            )
            for c in configs
        ]
    return tables


def managed_collections(model: nn.Module) -> list[BaseManagedCollisionEmbeddingCollection]:
    """The model's managed-collision collections (unsharded)."""
    return [m for m in model.modules() if isinstance(m, BaseManagedCollisionEmbeddingCollection)]


def check_managed_collisions(model: nn.Module, env: DistEnv) -> None:
    """ConfigError (exit 2) when several CPU processes would each hold a whole managed-collision
    remapper: TorchRec shards it row-wise only, on GPUs; replicas would map IDs to rows apart."""
    if env.world_size > 1 and env.device.type != "cuda" and managed_collections(model):
        raise ConfigError(
            f"--nproc {env.world_size} (WORLD_SIZE): this model's managed-collision tables cannot be "
            "sharded on CPU (TorchRec shards them row-wise only, on GPUs) and would remap IDs differently "
            "in each process; run one process (--nproc 1) or on CUDA"
        )


def embedding_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weights of all embedding collections (what the fused sparse optimizer updates)."""
    params = []
    for module in model.modules():
        if isinstance(module, EmbeddingBagCollection | EmbeddingCollection):
            params.extend(module.parameters())
    return params


def auto_sharding_type(
    table: TableInfo, world_size: int, device: torch.device, replicate_max_rows: int
) -> str:
    """The default: replicate tiny tables (SID codebooks, low-cardinality features), shard big ones.

    Big tables go row-wise on GPU (balanced whatever the number of tables) and table-wise on CPU
    (gloo has no row-wise). The choice for a tiny table does not depend on the world size, so a
    checkpoint holds the same optimizer state whatever the number of ranks (TorchRec trains
    data-parallel tables with the dense optimizer, sharded ones with the fused one).

    Tiny tables of an EmbeddingCollection (sequence features) are replicated only on GPU and only
    when the collection receives a KJT of its own features (``exclusive_input``, e.g. STORE's SID
    codebooks on ``batch.sid`` with ``--model.history_tokens``): TorchRec's data-parallel
    EmbeddingCollection does not drop the KJT keys it does not serve, and on CPU FBGEMM's dense
    kernel (fbgemm-gpu-cpu 1.8.0) ignores ``PoolingMode.NONE`` and returns one pooled row per bag.
    """
    if table.managed and device.type == "cuda":
        return "row_wise"  # TorchRec's only sharding of a managed-collision collection
    if table.num_embeddings <= replicate_max_rows:
        if table.pooled or (table.exclusive_input and device.type == "cuda"):
            return "data_parallel"
    return "row_wise" if device.type == "cuda" else "table_wise"


def choose_sharding_types(
    tables: list[TableInfo],
    default: str,
    overrides: dict[str, str],
    world_size: int,
    device: torch.device,
    replicate_max_rows: int,
) -> dict[str, str]:
    """Sharding type per table: per-table override, else `default` ("auto" = `auto_sharding_type`).

    Raises ValueError naming the flag for unknown tables and for row-wise on CPU.
    """
    names = {t.name for t in tables}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(
            f"--sharding.tables names unknown tables {unknown}; this model's tables are {sorted(names)}"
        )
    chosen = {}
    for t in tables:
        if t.name in overrides:
            kind, flag = overrides[t.name], f"--sharding.tables {t.name}={overrides[t.name]}"
        elif default != "auto":
            kind, flag = default, f"--sharding.default {default}"
        else:
            kind, flag = auto_sharding_type(t, world_size, device, replicate_max_rows), ""
        if kind == "row_wise" and device.type != "cuda" and world_size > 1:
            raise ValueError(
                f"{flag}: row_wise sharding needs GPUs (TorchRec's CPU/gloo path shards "
                f"{', '.join(CPU_SHARDING_TYPES)}); pick one of those or run on CUDA"
            )
        if t.managed and device.type == "cuda" and kind != "row_wise":
            raise ValueError(
                f"{flag}: {t.name} is a managed-collision table, which TorchRec shards row_wise only on CUDA"
            )
        if kind == "data_parallel" and not t.pooled and flag:
            if device.type != "cuda":
                raise ValueError(
                    f"{flag}: {t.name} is a sequence (EmbeddingCollection) table, which TorchRec "
                    "cannot replicate on CPU (FBGEMM's CPU dense kernel pools sequence lookups); "
                    "use table_wise or column_wise, or run on CUDA"
                )
            if not t.exclusive_input:
                log.warning(
                    "%s: %s is a sequence (EmbeddingCollection) table; TorchRec's data-parallel "
                    "EmbeddingCollection fails if the batch KJT holds features it does not serve",
                    flag, t.name,
                )  # fmt: skip
        chosen[t.name] = kind
    return chosen


def build_plan(
    model: nn.Module,
    sharding_types: dict[str, str],
    env: DistEnv,
    sharders: list,
) -> ShardingPlan:
    """TorchRec's planner with one allowed sharding type per table; every rank gets rank 0's plan."""
    constraints = {name: ParameterConstraints(sharding_types=[ShardingType(kind).value])
                   for name, kind in sharding_types.items()}  # fmt: skip
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=env.world_size, compute_device=env.device.type),
        constraints=constraints,
    )
    pg = dist.GroupMember.WORLD
    return planner.collective_plan(model, sharders, pg)


def describe_plan(plan: ShardingPlan) -> list[dict]:
    """One row per table: module, table, sharding type, kernel, ranks (for the start-up printout)."""
    rows = []
    for module_path, module_plan in plan.plan.items():
        for table, ps in module_plan.items():
            rows.append(
                {
                    "module": module_path,
                    "table": table,
                    "sharding": ps.sharding_type,
                    "kernel": ps.compute_kernel,
                    "ranks": list(ps.ranks) if ps.ranks is not None else "all",
                }
            )
    return rows


def format_plan(rows: list[dict]) -> str:
    header = f"{'module':<24} {'table':<22} {'sharding':<14} {'kernel':<10} ranks"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['module']:<24} {r['table']:<22} {r['sharding']:<14} {r['kernel']:<10} {r['ranks']}")
    return "\n".join(lines)


def sparse_optimizer_class(name: str) -> tuple[type[torch.optim.Optimizer], dict]:
    """The optimizer TorchRec fuses into the embedding backward (FBGEMM TBE) for `--optim.sparse`."""
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    if name == "rowwise_adagrad":
        return RowWiseAdagrad, {"eps": 1e-8}
    if name == "adagrad":
        return torch.optim.Adagrad, {"eps": 1e-8}
    if name == "adam":
        return torch.optim.Adam, {"eps": 1e-8}
    if name == "sgd":
        return torch.optim.SGD, {}
    raise ValueError(f"--optim.sparse must be one of rowwise_adagrad, adagrad, adam, sgd, got {name!r}")


def shard_model(
    model: nn.Module,
    env: DistEnv,
    sharding_types: dict[str, str],
    sparse_optimizer: str,
    sparse_lr: float,
    weight_decay: float = 0.0,
) -> tuple[DistributedModelParallel, ShardingPlan]:
    """Fuse the sparse optimizer into the embedding backward, plan, and wrap in DMP.

    `model` may hold its embedding tables on the meta device: DMP materialises only the local shards.
    `weight_decay`: L2 penalty of the sharded tables, applied by FBGEMM's fused optimizer to the rows
    each batch touches (its `WeightDecayMode.L2`).
    """
    # TorchRec's way of fusing: mark the embedding weights; DMP turns the mark into a fused TBE
    # optimizer (sharded tables) or an in-backward optimizer (data-parallel tables).
    from torch.distributed.optim import _apply_optimizer_in_backward

    cls, kwargs = sparse_optimizer_class(sparse_optimizer)
    params = embedding_parameters(model)
    _apply_optimizer_in_backward(cls, params, {"lr": sparse_lr, "weight_decay": weight_decay, **kwargs})
    if weight_decay:
        # The mark's kwargs become FBGEMM's fused params; FBGEMM ignores weight_decay unless a decay
        # mode is set (and the torch optimizer the mark was built with would refuse the mode).
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode

        for p in params:
            p._optimizer_kwargs[0]["weight_decay_mode"] = WeightDecayMode.L2
    from torchrec.distributed.sharding_plan import get_default_sharders

    sharders = get_default_sharders()
    check_managed_collisions(model, env)
    if env.device.type != "cuda":  # shard the collections inside; the remappers stay whole (see above)
        sharders = [s for s in sharders if not _managed_collision_sharder(s)]
    plan = build_plan(model, sharding_types, env, sharders)
    dmp = DistributedModelParallel(
        module=model,
        device=env.device,
        env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
        plan=plan,
        sharders=sharders,
    )
    return dmp, plan


def _managed_collision_sharder(sharder) -> bool:
    module_type = getattr(sharder, "module_type", None)
    return isinstance(module_type, type) and issubclass(module_type, BaseManagedCollisionEmbeddingCollection)


def pipeline_blocker(dmp: DistributedModelParallel) -> str | None:
    """Why TorchRec's training pipeline cannot rewrite this model, or None if it can.

    `TrainPipelineSparseDist` fx-traces the forward from the root down to the sharded embedding
    modules (modules without sharded children are leaves) to find that their input is a plain
    attribute of the batch. A forward that is not symbolically traceable on that path (e.g.
    `torch.ones(batch_size, n)` with a traced size) makes the pipeline fail on its first batch;
    probing here lets the trainer fall back to the plain loop with a clear warning instead.
    """
    # TorchRec's own tracer and leaf rule (defined in train_pipeline.utils in older releases,
    # re-exported there from train_pipeline.tracing in newer ones).
    try:
        from torchrec.distributed.train_pipeline.utils import Tracer, _get_leaf_module_names
    except ImportError:  # cannot probe on this TorchRec: let the pipeline try
        return None
    model = dmp.module  # as the pipeline does: the module under DMP / DDP
    try:
        Tracer(leaf_modules=_get_leaf_module_names(model)).trace(model)
    except Exception as e:  # any tracing failure means the pipeline would fail the same way
        return f"{type(e).__name__}: {e}"
    return None
