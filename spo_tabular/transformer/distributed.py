"""Process-group plumbing for torchrun: rank, world size, device, and the two collectives training needs.

Data parallelism here is exact: every rank draws the same global batch from shared generators and keeps
its shard (rows r, r + world, ...), each rank's loss is its share of the global loss, and the gradients
are summed, so K processes follow the one-process math up to float summation order.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """This process's place in the run: rank, world size, device, and whether it created the process group."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        """Rank 0 logs, evaluates and writes checkpoints."""
        return self.rank == 0

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch: the union over ranks is the whole batch."""
        return t[self.rank::self.world]

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Σ over ranks, in place (a no-op in one process)."""
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def sum_grads(self, model: torch.nn.Module):
        """Σ over ranks of every gradient: the ranks' losses are shares of one global loss."""
        if self.world > 1:
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def broadcast(self, model: torch.nn.Module):
        """Rank 0's parameters on every rank."""
        if self.world > 1:
            for p in model.parameters():
                dist.broadcast(p.data, src=0)

    def finish(self):
        """Wait until every rank is done, through the rendezvous store rather than a collective.

        A gloo worker thread may release the last collective's work object (holding Python tensors) only
        after the main thread has begun interpreter shutdown, which aborts the process (seen in ~1 run in
        8 on a loaded 2-core machine). Waiting on the store leaves seconds between the last collective and
        the exit of every rank.
        """
        if self.world > 1:
            store = dist.distributed_c10d._get_default_store()
            key = f"spo_tabular/finish/{next(_FINISH_CALLS)}"        # same sequence of calls on every rank
            if store.add(key, 1) == self.world:
                store.set(key + "/all", "1")
            store.wait([key + "/all"])


_FINISH_CALLS = itertools.count()


def setup_distributed(device: str) -> Dist:
    """Rank, world size and device from torchrun's environment; gloo on CPU, NCCL on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but torch.cuda.is_available() is False")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return Dist(rank, world, dev, owns)
