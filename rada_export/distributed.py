"""torchrun (torch.distributed): sharded feature extraction, and the ranks of DDP fine-tuning.

A plain run is a world of one. Under torchrun (RANK / WORLD_SIZE in the environment) the process
group is set up here: gloo on CPUs, NCCL when every rank on a node has its own GPU (LOCAL_RANK
picks it). Multi-node runs are torchrun's own (--nnodes, --rdzv-endpoint): nothing here changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def indices(self, n: int) -> range:
        return range(self.rank, n, self.world_size)


def init_from_env() -> Shard:
    """Joins the torchrun process group when launched by torchrun; a world of one otherwise."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return Shard()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= local_world else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)  # before the group forms, so NCCL binds each rank to its own GPU
        dist.init_process_group(backend=backend)
    return Shard(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())


def training_device(shard: Shard, wanted: str = "auto") -> torch.device:
    """Where a rank trains: its own GPU under NCCL (or the one GPU of a single process), else the CPU."""
    from .errors import RadaError

    if wanted == "cpu":
        return torch.device("cpu")
    usable = torch.cuda.is_available() and (shard.world_size == 1 or shard.backend == "nccl")
    if wanted == "cuda" and not usable:
        raise RadaError("device 'cuda' was asked for, but " + ("no GPU is visible" if not torch.cuda.is_available()
                        else "this torchrun world uses gloo (fewer GPUs than ranks on a node)"),
                        "pass device='cpu', or run one rank per GPU", field="device")
    return torch.device("cuda", shard.local_rank if shard.world_size > 1 else torch.cuda.current_device()) if usable \
        else torch.device("cpu")


def all_reduce_sum(values: list[float], shard: Shard) -> list[float]:
    """Element-wise sums over the ranks (the values themselves in a world of one)."""
    if shard.world_size == 1:
        return list(values)
    import torch.distributed as dist

    device = torch.device("cuda", shard.local_rank) if shard.backend == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def broadcast(obj: Any, shard: Shard) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if shard.world_size == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: Any, shard: Shard) -> list[Any]:
    """Every rank's ``obj``, in rank order (just ``[obj]`` in a world of one)."""
    if shard.world_size == 1:
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * shard.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def finish(shard: Shard) -> None:
    if shard.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
