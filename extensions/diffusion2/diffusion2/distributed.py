"""torch.distributed plumbing: the launch context of `torchrun` (any world size) and the even split of lines.

Every rank holds both models and the whole latent matrix (43 MB at full size); it denoises its share of the
frame columns (SV3D_p) and view rows (SVD-xt), and one all-reduce per joint evaluation gives every rank the
full denoised estimate, so all ranks take the same Euler step with the same seeded noise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, n: int, rank: Optional[int] = None) -> range:
        """This rank's lines out of n: contiguous, sizes differ by at most one (ranks beyond n get none)."""
        r = self.rank if rank is None else rank
        return range(r * n // self.world_size, (r + 1) * n // self.world_size)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_reduce_max(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.active:
            dist.broadcast(t, src=src)
        return t

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def init_from_env(device: Optional[str] = None) -> DistContext:
    """Join the process group that `torchrun` describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT); NCCL on CUDA, gloo on CPU. Without torchrun: a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    on_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if on_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_cuda else "gloo", rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local)


def close(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()
        dist.destroy_process_group()
