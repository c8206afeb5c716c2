"""Sharded attack stage over processes and nodes with ``torch.distributed`` (launched by ``torchrun``).

The attack stage (:mod:`smoothgeo.pipeline.attack`) splits a model's evaluation images into fixed *shards* of
``attacks.shard_size`` images (a parameter, like the seed: it is part of the experiment, not of the machine).
Each shard is attacked and evaluated as one independent unit whose random draws are seeded from the seed and
the shard's image range (``derive_seed(seed, "images", start, stop)``), never from a rank, a process count or
a batch position. Ranks take contiguous runs of shards (:func:`contiguous_shard`), each on its own device
(``cuda:LOCAL_RANK`` when CUDA is available, else the CPU); rank 0 gathers every shard and writes the same
``data/attacks/<model>.pt`` and ``results/attacks/<model>.csv.gz``, rows in the same order, as a
single-process run with the same parameters: byte-identical on the same kind of device and thread count
(tested on the CPU with 2 gloo processes; floating-point kernels may differ between GPU models or between CPU
and GPU). Without ``shard_size`` (the default) the stage attacks all images as one unit, as before, and
refuses to run on more than one rank.

Why shards and not "the images of rank r": :func:`smoothgeo.core.attacks.attack` seeds each attack batch with
``derive_seed(seed, "batch", b)`` (b = the batch's position) and :func:`smoothgeo.core.evaluation.compute_maps` draws
SG/UG noise for a whole batch from one generator, so an image's result depends on which images share its batch.
A fixed shard composition makes every image's result independent of the number of ranks. Inside a shard,
``attacks.batch_size`` still splits the work for memory (keep it >= shard_size for one batch per shard).

Resuming: every finished (setting, shard) is saved atomically to
``<partials>/<model>/<setting_id>@<start>-<stop>.pt`` with a hash of its configuration, by the rank that computed
it. After a killed rank (torchrun then stops the others), re-running the same command resumes every finished
shard, with any number of ranks; partials are removed once rank 0 has written the outputs. On several nodes,
put ``--partials`` on storage the nodes share, or resume with the same node layout.

Launching (``-m smoothgeo.pipeline.attack`` detects torchrun's environment; ``--distributed`` insists on it)::

    # one machine, 4 GPUs (or 4 CPU processes: OMP_NUM_THREADS is set to 1 per process by torchrun)
    torchrun --standalone --nproc_per_node 4 -m smoothgeo.pipeline.attack --params params.yaml --model natural-s0

    # two nodes with 8 GPUs each: run on every node, node_rank 0 on the node at MASTER_ADDR
    torchrun --nnodes 2 --nproc_per_node 8 --node_rank $NODE_RANK --master_addr $MASTER_ADDR \\
        --master_port 29500 -m smoothgeo.pipeline.attack --params params.yaml --model natural-s0

    # Slurm: one task per node, torchrun starts the per-GPU processes
    #SBATCH --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 --cpus-per-task=32
    head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    srun torchrun --nnodes "$SLURM_NNODES" --nproc_per_node 8 --rdzv_id "$SLURM_JOB_ID" \\
        --rdzv_backend c10d --rdzv_endpoint "$head:29500" \\
        -m smoothgeo.pipeline.attack --params params.yaml --model natural-s0

A DVC stage calls the same command in its ``cmd`` (outputs and dependencies are unchanged, since the outputs do
not depend on the number of ranks; set ``attacks.shard_size`` in params.yaml first)::

    stages:
      attack:
        foreach: ${models}
        do:
          cmd: >-
            torchrun --standalone --nproc_per_node 4 -m smoothgeo.pipeline.attack --params params.yaml
            --model ${item}
          params: [seed, data, methods, attacks]
          deps: [lib/smoothgeo, data/checkpoints/${item}.pt]
          outs:
            - data/attacks/${item}.pt
            - results/attacks/${item}.csv.gz: {cache: false}

The number of processes is not a parameter: it does not change the outputs. On a cluster, ``dvc repro`` runs
inside the Slurm allocation and the ``cmd`` is the ``srun torchrun ...`` line. The process group's timeout
(ranks wait for the slowest one before rank 0 writes) is ``SMOOTHGEO_DIST_TIMEOUT`` seconds, default 24 hours.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from smoothgeo.core.device import resolve_device
import torch.distributed as dist

__all__ = ["Context", "launched", "from_env", "device_for", "init", "contiguous_shard", "gather_to_root",
           "barrier", "shutdown"]


@dataclass(frozen=True)
class Context:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: object = None        # process group for Python objects (gloo), None = not initialised

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True when this process was started by torchrun (or any launcher setting ``RANK`` and ``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def from_env() -> Context:
    """Rank, world size and local rank from torchrun's environment variables (no process group yet)."""
    if not launched():
        raise ValueError("--distributed needs the environment of a launcher; allowed: start the stage with "
                         "torchrun --nproc_per_node N -m smoothgeo.pipeline.attack ... (see smoothgeo.pipeline.distributed)")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return Context(rank=rank, world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", rank)))


def device_for(ctx: Context, requested: str | None = "auto") -> torch.device:
    """This rank's device: ``auto``/``cuda`` -> ``cuda:LOCAL_RANK`` (when available; ``auto`` else the CPU)."""
    device = resolve_device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ctx.local_rank % max(1, torch.cuda.device_count()))
    return device


def init(ctx: Context, device: torch.device) -> Context:
    """Join the process group (nccl on CUDA, gloo on the CPU) and return ``ctx`` with an object group (gloo)."""
    timeout = timedelta(seconds=float(os.environ.get("SMOOTHGEO_DIST_TIMEOUT", 24 * 3600)))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    group = dist.new_group(backend="gloo", timeout=timeout) if dist.get_backend() != "gloo" else dist.group.WORLD
    return Context(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=ctx.local_rank, group=group)


def contiguous_shard(n_items: int, rank: int, world_size: int) -> range:
    """Items ``[n r / w, n (r + 1) / w)`` of rank r of w: contiguous, sizes differ by at most one."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is invalid; allowed: 0 <= rank < world_size={world_size}")
    return range(n_items * rank // world_size, n_items * (rank + 1) // world_size)


def gather_to_root(ctx: Context | None, obj) -> list | None:
    """Every rank's ``obj`` (picklable, CPU tensors) as a list on rank 0, ``None`` elsewhere."""
    if ctx is None or ctx.world_size == 1:
        return [obj]
    out = [None] * ctx.world_size if ctx.is_root else None
    dist.gather_object(obj, out, dst=0, group=ctx.group)
    return out


def barrier(ctx: Context | None) -> None:
    if ctx is not None and ctx.world_size > 1:
        dist.barrier(group=ctx.group)


def shutdown(ctx: Context | None) -> None:
    if ctx is not None and dist.is_initialized():
        dist.destroy_process_group()
