"""Sharded feature extraction under `torchrun` (torch.distributed): each rank encodes its share.

A plain run is a world of one. Under torchrun (RANK / WORLD_SIZE in the environment) the process
group is set up here: gloo on CPUs, NCCL when every rank has a GPU.
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
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world else "gloo"
        dist.init_process_group(backend=backend)
    return Shard(dist.get_rank(), dist.get_world_size())


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
