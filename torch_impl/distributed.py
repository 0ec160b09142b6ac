"""Data parallelism, torch side: DDP over ``torch.distributed`` (gloo on CPU, NCCL on GPU).

The contract (global batch, shards, sums and counts, why each rank back-propagates
``N * S_local / C_global``): ``ml_patterns.distributed``. ``jax_impl.distributed`` mirrors the names.

- ``setup(backend=None)`` joins the default process group from the environment ``torchrun`` sets
  (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and returns a
  ``Context``; ``launch(fn, world_size, *args)`` starts ``world_size`` processes on this host itself
  (spawn, a free port on 127.0.0.1) and returns what ``fn(context, *args)`` returned on each rank.
- ``make_train_step(model, optimizer, context)`` wraps the model in DDP and returns
  ``step(batch, weight) -> loss``: this rank's shard in, the GLOBAL batch loss out (a detached device
  scalar, the same on every rank, no host sync). ``make_eval_step`` the same without gradients.
- Side effects (logging, checkpoints, callbacks that write) belong to ``context.is_main`` (rank 0).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ml_patterns.distributed import check_loss_sums, check_world, ddp_objective, global_mean

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

LossSums = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class Context:
    """This process's place in the data-parallel world."""

    world_size: int
    rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, writes checkpoints and runs callbacks' side effects."""
        return self.rank == 0


def setup(backend: str | None = None) -> Context:
    """Joins the default process group (``torchrun``'s environment) unless it exists; returns the Context.

    ``backend``: ``"nccl"`` when CUDA is available, else ``"gloo"``. With NCCL each process takes
    the GPU ``LOCAL_RANK``.
    """
    if not dist.is_initialized():
        missing = [name for name in _ENV if name not in os.environ]
        if missing:
            raise RuntimeError(
                f"no process group and environment variables {missing} unset: start the script with "
                "`torchrun --nproc-per-node N script.py`, or call torch_impl.distributed.launch(fn, N)"
            )
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":  # before the group: NCCL binds its communicator to the current device
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
        dist.init_process_group(backend)
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return Context(dist.get_world_size(), dist.get_rank(), device)


def teardown() -> None:
    """Leaves the default process group (a no-op without one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo") -> list[Any]:
    """Runs ``fn(context, *args)`` in ``world_size`` fresh processes on this host; returns their
    results in rank order. ``fn``, ``args`` and the results must pickle (``fn`` defined at a
    module's top level: spawned processes import it). A rank that raises makes this raise
    ``torch.multiprocessing.ProcessRaisedException`` with its traceback."""
    check_world(world_size)
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    processes = mp.start_processes(
        _worker,
        args=(fn, args, world_size, _free_port(), backend, results),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    collected: dict[int, Any] = {}
    # Read while the ranks run: a result larger than the pipe's buffer would block its writer forever.
    while not processes.join(timeout=0.05):
        while not results.empty():
            rank, value = results.get()
            collected[rank] = value
    while not results.empty():
        rank, value = results.get()
        collected[rank] = value
    return [collected[rank] for rank in range(world_size)]


def _worker(rank: int, fn, args, world_size: int, port: int, backend: str, results) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)  # N processes share the host's cores
    context = setup(backend)
    try:
        value = fn(context, *args)
        # Every rank done with its collectives before any leaves: a peer closing its connections
        # while another still talks to it aborts that one (gloo).
        dist.barrier()
        results.put((rank, value))
    finally:
        teardown()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def safe_divide(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count``; where ``count == 0`` (every position masked: ``total`` is 0 too) 0, not NaN."""
    return total / torch.where(count > 0, count, torch.ones_like(count))


class _LossSums(nn.Module):
    # DDP must see the forward pass (it prepares its gradient reducer there): route loss_sums through it.
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping, weight: torch.Tensor) -> LossSums:
        return self.model.loss_sums(batch, weight)


def _reduce(parts: LossSums) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Global ``({part: sum}, {part: count})``, detached, in one all-reduce."""
    names = list(parts)
    dtype = next(iter(parts.values()))[0].dtype
    packed = torch.stack(
        [parts[k][0].detach().to(dtype) for k in names] + [parts[k][1].detach().to(dtype) for k in names]
    )
    dist.all_reduce(packed)
    return dict(zip(names, packed[: len(names)])), dict(zip(names, packed[len(names) :]))


def make_train_step(
    model: nn.Module, optimizer: Any, context: Context
) -> Callable[[Mapping, torch.Tensor], torch.Tensor]:
    """``step(batch, weight) -> global loss`` for ``model`` (with ``loss_sums``; already on
    ``context.device``) and ``optimizer`` (anything with ``zero_grad()``/``step()`` over the model's
    parameters). DDP broadcasts rank 0's weights to every rank here."""
    check_loss_sums(model)
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    ddp = DistributedDataParallel(_LossSums(model), device_ids=device_ids)

    def step(batch: Mapping, weight: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad()
        parts = ddp(batch, weight)
        sums, counts = _reduce(parts)
        ddp_objective(parts, counts, context.world_size, safe_divide).backward()
        optimizer.step()
        return global_mean({k: (sums[k], counts[k]) for k in sums}, safe_divide)

    return step


def make_eval_step(model: nn.Module) -> Callable[[Mapping, torch.Tensor], torch.Tensor]:
    """``step(batch, weight) -> global loss`` without gradients (every rank calls it together)."""

    @torch.no_grad()
    def step(batch: Mapping, weight: torch.Tensor) -> torch.Tensor:
        sums, counts = _reduce(model.loss_sums(batch, weight))
        return global_mean({k: (sums[k], counts[k]) for k in sums}, safe_divide)

    return step


def check_batch_counts(loaders: Mapping[str, Any], context: Context) -> None:
    """Refuses, on every rank at once, loaders that yield another number of batches on some rank:
    the rank with more would wait in its next step's collective for a peer that never comes (gloo
    waits 30 minutes). Every rank's loader must yield the same global batches. Loaders without
    ``len()`` are not checked."""
    for what, loader in loaders.items():
        if loader is None or not hasattr(loader, "__len__"):
            continue
        count = len(loader)
        extremes = torch.tensor([count, -count], dtype=torch.int64, device=context.device)
        dist.all_reduce(extremes, op=dist.ReduceOp.MIN)
        fewest, most = int(extremes[0]), -int(extremes[1])
        if fewest != most:
            raise ValueError(
                f"the {what} loader yields {count} batches on rank {context.rank}, and between {fewest} and {most} "
                "across ranks: under data parallelism every rank's loader must yield the same global batches "
                "(each rank takes its own rows of every batch)"
            )
