"""Training under torchrun: one model trained by N processes with DistributedDataParallel.

torchrun (`torchrun --nproc-per-node=N -m train ...`, or multi-node with --nnodes and
--rdzv-endpoint) sets RANK, LOCAL_RANK and WORLD_SIZE. Without them, or with WORLD_SIZE=1,
everything here is the single-process identity and training is exactly what it was.

The rules (README "Several processes"):
- backend gloo on CPU, nccl on CUDA (each process on cuda:LOCAL_RANK);
- --batch-size is the global batch, split evenly: every process trains on batch / N images a
  step, so the steps per epoch, the schedule and --lr stay those of one process;
- each epoch a seeded shuffle is cut into N disjoint shards (DistributedSampler, drop_last:
  at most N - 1 images of an epoch are skipped, a different few each epoch);
- seeds per rank (augmentation, M2m / DRS re-sampling) are rank_seed(seed, rank): rank 0 keeps
  the seed, rank r adds r * 1,000,003, so two seeds' streams never coincide across ranks; the
  initial weights are identical (same seed; DDP also broadcasts them from rank 0);
- plain BatchNorm: each process normalises its own shard of the batch; rank 0's running
  statistics are broadcast before every forward and before validation;
- rank 0 alone evaluates, calibrates, writes the run directory and plots; the others wait and
  receive its metrics (or its one-line error) by broadcast, not from the file system.
"""
from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from cli_errors import UserError


@dataclass(frozen=True)
class Context:
    """This process's place in the training job."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process, no process group

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        """--device cuda under torchrun means this process's GPU, cuda:LOCAL_RANK."""
        if self.active and requested == "cuda":
            return torch.device("cuda", self.local_rank)
        return torch.device(requested)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over the processes (in place; returned for chaining)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, value: object) -> list[object]:
        """Every process's `value`, in rank order, on every process."""
        if not self.active:
            return [value]
        gathered: list[object] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def on_main(self, work) -> object:
        """Run `work()` on rank 0 only and hand its result to every rank; a UserError raised
        there is raised on every rank, so all exit with the same one-line error."""
        if not self.active:
            return work()
        message = [None, None]
        if self.is_main:
            try:
                message[1] = work()
            except UserError as exc:
                message[0] = str(exc)
        dist.broadcast_object_list(message, src=0)
        if message[0] is not None:
            raise UserError(message[0])
        return message[1]

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's BatchNorm running statistics (every buffer) on every rank."""
        if self.active:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)


SINGLE = Context()
_context: Context | None = None
# the other ranks wait in a collective while rank 0 evaluates and writes a run (or a study
# reports), which on a large run outlasts torch's 10-30 min default
TIMEOUT = datetime.timedelta(hours=2)
SEED_STRIDE = 1_000_003


def rank_seed(seed: int, rank: int) -> int:
    """This rank's seed for augmentation and re-sampling; rank 0 (and one process) keeps `seed`."""
    return seed + rank * SEED_STRIDE


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun set it (1 without torchrun); read before any process group."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number "
                        "(set by torchrun)") from None


def context(device: str = "cpu") -> Context:
    """This process's Context; the process group is initialised on first use (env:// from
    torchrun: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) and destroyed at exit."""
    global _context
    if _context is None:
        if world_size_from_env() == 1:
            _context = SINGLE
        else:
            backend = "nccl" if device.startswith("cuda") else "gloo"
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            if backend == "nccl":  # CUDA tensors over nccl, the CPU ones (loss sums) over gloo
                torch.cuda.set_device(local_rank)
                dist.init_process_group("cpu:gloo,cuda:nccl", timeout=TIMEOUT,
                                        device_id=torch.device("cuda", local_rank))
            else:
                dist.init_process_group("gloo", timeout=TIMEOUT)
            atexit.register(_destroy)
            _context = Context(dist.get_rank(), dist.get_world_size(), local_rank, backend)
    return _context


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shutdown() -> None:
    """End a torchrun job together: a barrier first, so that no rank closes its connections
    while another still reads the last broadcast (that read then aborts), and no rank exits
    before the others printed their error (torchrun stops the rest when one exits). An error
    found before the process group existed starts a gloo group just for this barrier."""
    global _context
    if world_size_from_env() > 1:
        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=5))
        dist.barrier()
        dist.destroy_process_group()
    _context = None


def epoch_order(n: int, epoch: int, seed: int, ctx: Context,
                generator: torch.Generator) -> torch.Tensor:
    """The indices this process trains on in `epoch`: all n in a random order for one
    process (drawn from `generator`, as always); a disjoint shard of a shuffle seeded by
    (seed, epoch) under DDP."""
    if not ctx.active:
        return torch.randperm(n, generator=generator)
    sampler = DistributedSampler(range(n), num_replicas=ctx.world_size, rank=ctx.rank,
                                 shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def shard_size(n: int, ctx: Context) -> int:
    """len(epoch_order(n, ...)): all n for one process, n // world_size under DDP (drop_last)."""
    return n // ctx.world_size if ctx.active else n


def shard_report(shards: list[torch.Tensor], n: int, checksums: list[float] | None = None) -> dict:
    """Per epoch: images each rank trained on, images two ranks shared, images none saw, and
    whether every rank ended the epoch with the same weights (DDP kept the replicas in sync)."""
    seen = [set(shard.tolist()) for shard in shards]
    union = set().union(*seen)
    shared = sum(len(a & b) for i, a in enumerate(seen) for b in seen[i + 1:])
    report = {"per_rank": [len(s) for s in seen], "shared": shared, "skipped": n - len(union)}
    if checksums is not None:
        report["replicas_equal"] = len(set(checksums)) == 1
    return report


def weights_checksum(module: torch.nn.Module) -> float:
    """A number that changes with any parameter (compared across ranks, not stored)."""
    with torch.no_grad():
        return float(sum(p.double().sum() + (p.double() ** 2).sum() for p in module.parameters()))
