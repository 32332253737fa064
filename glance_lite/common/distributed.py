"""Data-parallel training with ``torch.distributed``: one category's ``fit`` over several processes.

``torchrun --nproc_per_node=N -m glance_lite fit ...`` starts N processes (ranks).  Each one runs the
same ``fit``; this module lets the training stages share the work of every step:

* **One global batch.**  Every rank draws the *same* global batch of the step from the step's seeded
  generators (:func:`glance_lite.train.training.step_generators`), exactly the batch one process would
  draw, and keeps only its share (:func:`shard`: contiguous, sizes differing by at most one).
  Randomness that follows the batch (the stains of the joint stage) is also drawn for the whole
  global batch, then sliced, so it too is the single-process draw.
* **Losses as contributions.**  A stage's step returns, on each rank, terms that *sum over the ranks*
  to the single-process value: a per-sample mean becomes ``sum over my samples / global batch``
  (:func:`share_of_mean`); a loss of the whole batch that does not split over samples (the
  compactness loss of Eq. 2, a correlation over the batch) is computed on the gathered batch
  (:func:`gather_rows`, differentiable) and contributes ``1 / world`` of itself on each rank.
* **Gradients summed.**  After the backward pass the gradients are summed over the ranks
  (:func:`all_reduce_grads`, one ``all_reduce`` per parameter tensor), then every rank takes the same
  optimiser step, so the replicas stay equal.  The logged losses are summed the same way.  With one
  rank every function here is the identity, so the single-process code path is the same code.

*Deviation from the usual recipe:* we sum gradients ourselves instead of wrapping the networks in
``DistributedDataParallel``: one plain all-reduce of the gradients before the step, shared by every
stage (the Local-Net's, the joint stage's and the TS students'), with no wrapper around the networks
and no hooks.  The arithmetic is DDP's; with no buckets and no overlap it is slower on many GPUs, which
does not matter at these model sizes.

**Who writes.**  Only rank 0 writes checkpoints, caches, run folders and logs (:func:`on_main`,
:func:`cached`); the other ranks wait at a barrier and read what rank 0 wrote.  A checkpoint holds
weights, optimiser state and the step, nothing that depends on the number of ranks, so a run stopped
under 2 ranks resumes under 1 (tested).

**Backend and failure.**  NCCL between GPUs, gloo between CPU processes (:func:`backend_for`).
:func:`init_from_env` reads torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` and sets a timeout
(``GLANCE_DIST_TIMEOUT`` seconds, default 300) on every collective: a rank that dies makes the others
fail with an error instead of waiting for ever.

Taught in :doc:`/scaling`.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor

from .fileio import GlanceError

__all__ = ["DistContext", "SINGLE", "current", "init_from_env", "shutdown", "backend_for", "shard",
           "share_of_mean", "gather_rows", "all_reduce_grads", "all_reduce_sum", "barrier", "on_main",
           "cached", "main_says", "DistError", "spawn_local"]


class DistError(GlanceError):
    """A distributed run cannot start or a rank failed."""


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world`` processes (``local_rank`` on its machine)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """More than one rank (collectives are needed)."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes."""
        return self.rank == 0


SINGLE = DistContext()
"""One process: every helper here is then the identity."""


def current() -> DistContext:
    """The context of the initialised default process group, or :data:`SINGLE`."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return SINGLE


def backend_for(device: torch.device | str) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _timeout() -> datetime.timedelta:
    raw = os.environ.get("GLANCE_DIST_TIMEOUT", "300")
    try:
        sec = float(raw)
    except ValueError:
        raise DistError(f"GLANCE_DIST_TIMEOUT={raw!r}: give seconds, e.g. 300") from None
    return datetime.timedelta(seconds=max(1.0, sec))


def init_from_env(device: str | None = None) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun describes in the environment; returns (context, device).

    Without ``WORLD_SIZE`` (or with 1) nothing is initialised: ``(SINGLE, resolved device)``.  Under
    torchrun each rank takes ``cuda:LOCAL_RANK`` when the device is CUDA (``auto`` on a GPU machine),
    else the CPU, and the backend follows (:func:`backend_for`).
    """
    import torch.distributed as dist

    from .devices import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    dev = resolve_device(device)
    if world <= 1:
        return SINGLE, dev
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise DistError(f"rank {rank}: LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs visible")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend_for(dev), timeout=_timeout())
    return DistContext(dist.get_rank(), dist.get_world_size(), local), dev


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, ctx: DistContext = SINGLE) -> slice:
    """This rank's contiguous share of ``n`` items (the first ``n % world`` ranks get one more)."""
    base, extra = divmod(int(n), ctx.world)
    start = ctx.rank * base + min(ctx.rank, extra)
    return slice(start, start + base + (1 if ctx.rank < extra else 0))


def share_of_mean(per_sample: Tensor, n_global: int) -> Tensor:
    """``per_sample.sum() / n_global``: this rank's share of a mean over the global batch."""
    return per_sample.sum() / float(n_global)


def gather_rows(x: Tensor, n_global: int, ctx: DistContext = SINGLE) -> Tensor:
    """The global batch ``(n_global, ...)`` from every rank's :func:`shard` of it, in rank order,
    differentiable (gradients flow back to each rank's rows).  Identity with one rank."""
    if not ctx.active:
        return x
    import torch.distributed.nn.functional as dfn

    sizes = [len(range(n_global)[shard(n_global, DistContext(r, ctx.world))]) for r in range(ctx.world)]
    width = max(sizes)
    pad = width - x.shape[0]
    xp = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
    with warnings.catch_warnings():  # deprecated in favour of a private module; the pinned torch has it
        warnings.simplefilter("ignore", FutureWarning)
        parts = dfn.all_gather(xp.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def all_reduce_grads(params: Iterable[torch.nn.Parameter], ctx: DistContext = SINGLE) -> None:
    """Sum every parameter's gradient over the ranks (missing gradients count as zero).

    The gradients are packed into one flat buffer per dtype and device and summed with one
    ``all_reduce`` each (DDP's buckets, as one bucket), then copied back."""
    if not ctx.active:
        return
    import torch.distributed as dist

    groups: dict[tuple[torch.dtype, torch.device], list[torch.nn.Parameter]] = {}
    for p in params:
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for ps in groups.values():
        flat = torch.cat([p.grad.reshape(-1) for p in ps])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        at = 0
        for p in ps:
            n = p.grad.numel()
            p.grad.copy_(flat[at : at + n].view_as(p.grad))
            at += n


def all_reduce_sum(values: dict[str, float], ctx: DistContext = SINGLE, device: torch.device | str = "cpu"
                   ) -> dict[str, float]:
    """Sum a dict of floats over the ranks (same keys on every rank)."""
    if not ctx.active:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist()))


def barrier(ctx: DistContext = SINGLE) -> None:
    """Wait for every rank (no-op with one)."""
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()


def on_main(fn: Callable[[], object], ctx: DistContext | None = None) -> None:
    """Run ``fn`` (a write) on rank 0 only, then let every rank pass a barrier."""
    ctx = current() if ctx is None else ctx
    if ctx.is_main:
        fn()
    barrier(ctx)


def main_says(flag: bool, ctx: DistContext | None = None) -> bool:
    """Rank 0's ``flag`` on every rank (one small all-reduce): for decisions such as "does this file
    exist yet", which the ranks must take alike, or their barriers would no longer pair up."""
    ctx = current() if ctx is None else ctx
    if not ctx.active:
        return bool(flag)
    return bool(all_reduce_sum({"flag": float(bool(flag)) if ctx.is_main else 0.0}, ctx)["flag"])


def cached(path: str | Path, make: Callable[[], dict], ctx: DistContext | None = None) -> dict:
    """``torch``-saved dict at ``path``: read it, or (rank 0) make and write it atomically while the
    other ranks wait, then read it.  Whether it exists is rank 0's answer (:func:`main_says`)."""
    from .fileio import load_torch, save_torch

    ctx = current() if ctx is None else ctx
    path = Path(path)
    if main_says(path.is_file(), ctx):
        return load_torch(path)
    if ctx.is_main:
        obj = make()
        save_torch(path, obj)
        barrier(ctx)
        return obj
    barrier(ctx)
    if not path.is_file():
        raise DistError(f"rank {ctx.rank}: rank 0 did not write {path}")
    return load_torch(path)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(fn: Callable[..., object], rank: int, world: int, port: int, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    ctx, _ = init_from_env("cpu")
    try:
        fn(ctx, *args)
    finally:
        shutdown()


def spawn_local(fn: Callable[..., object], world: int, *args: object, timeout: float = 300.0) -> None:
    """Run ``fn(ctx, *args)`` in ``world`` new CPU processes joined by gloo (what torchrun does on one
    machine); for tests and the scaling benchmark.  ``fn`` must be importable (module level).

    Raises :class:`DistError` naming the first rank that failed (its exit code), after stopping the
    others, or when the processes are not done within ``timeout`` seconds: a job never hangs.
    """
    import multiprocessing as mp
    import time

    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_child, args=(fn, r, world, port, args)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    try:
        while any(p.is_alive() for p in procs):
            bad = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if bad:
                raise DistError(f"rank {bad[0][0]} of {world} failed (exit code {bad[0][1]}); the job was stopped")
            if time.monotonic() > deadline:
                raise DistError(f"{world} ranks did not finish within {timeout:.0f} s; the job was stopped")
            time.sleep(0.05)
        bad = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode != 0]
        if bad:
            raise DistError(f"rank {bad[0][0]} of {world} failed (exit code {bad[0][1]})")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)
