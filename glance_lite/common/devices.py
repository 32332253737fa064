"""Where the work runs: the one place that picks a device, moves batches and sets mixed precision.

Every stage takes a ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``; the CLI's ``--device``,
the notebooks' ``GLANCE_DEVICE``) and resolves it with :func:`resolve_device`:

* ``auto`` is ``cuda`` when CUDA is available, else ``cpu``;
* asking for a GPU that is not there is a one-line :class:`~glance_lite.common.fileio.GlanceError`, never a
  silent run on the CPU.

Data stays on the CPU, pinned when the device is a GPU (:func:`pin`), and each training step moves
its batch once, ``non_blocking`` (:func:`to_device`).  The random indices of a step are drawn on
the CPU (:func:`glance_lite.train.training.step_generators`), so a seed samples the same batches on every
device.  Checkpoints hold CPU tensors only (:func:`cpu_state`), so a run trained on a GPU evaluates
and resumes on a CPU and the other way round.

Mixed precision (preset field ``mixed_precision``, on for ``paper``): :class:`Precision` runs the
forward pass under :func:`torch.autocast` in bfloat16 where the GPU supports it, else in float16
with a gradient scaler; on the CPU it is always off, so the CPU presets and every exact-equality test
run in float32.  :func:`configure` turns on TF32 matmuls on CUDA.

Taught in :doc:`/book/cli` (section "Devices").
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Any, Iterator

import torch
from torch import Tensor, nn

from .fileio import GlanceError, cpu_state

__all__ = ["resolve_device", "device_from_env", "to_device", "pin", "cpu_state", "module_device",
           "Precision", "configure", "DEVICE_HELP"]

DEVICE_HELP = "auto (cuda if available, else cpu), cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """The ``torch.device`` named by ``spec`` (default: ``GLANCE_DEVICE``, else ``auto``).

    Raises :class:`GlanceError` (one line) for an unknown name or a GPU that is not available.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    s = (spec if spec is not None else os.environ.get("GLANCE_DEVICE", "auto")).strip().lower() or "auto"
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(s)
    except RuntimeError:
        raise GlanceError(f"device {spec!r}: expected {DEVICE_HELP}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise GlanceError(f"device {spec!r}: expected {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise GlanceError(f"device {spec!r}: CUDA is not available on this machine (use --device cpu or auto)")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise GlanceError(f"device {spec!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    return dev


def device_from_env() -> torch.device:
    """The device for notebooks: ``GLANCE_DEVICE``, else ``auto``."""
    return resolve_device(None)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for an empty module)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def pin(x: Tensor, device: torch.device) -> Tensor:
    """``x`` in pinned memory when it will be copied to a GPU (so that copies can overlap), else ``x``."""
    if device.type == "cuda" and x.device.type == "cpu" and not x.is_pinned():
        return x.pin_memory()
    return x


def to_device(x: Tensor, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """One batch to ``device`` (``non_blocking`` from pinned memory), optionally cast."""
    return x.to(device=device, dtype=dtype, non_blocking=True)


def configure(device: torch.device) -> None:
    """Backend switches for speed on CUDA: TF32 matmuls and convolutions (no effect on the CPU)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


class Precision:
    """Mixed precision for one training stage: ``with prec.autocast(): loss = ...``, then
    ``prec.backward(loss, optimizer)``.

    Enabled only when ``enabled`` and the device is CUDA: bfloat16 where the GPU has it (no scaler
    needed), else float16 with a :class:`torch.amp.GradScaler`.  Disabled, it is plain float32
    ``loss.backward(); optimizer.step()``.
    """

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.device = torch.device(device)
        self.enabled = bool(enabled) and self.device.type == "cuda"
        self.dtype: torch.dtype | None = None
        self.scaler: Any = None
        if self.enabled:
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.dtype == torch.float16:
                self.scaler = torch.amp.GradScaler("cuda")

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with torch.autocast(device_type="cuda", dtype=self.dtype):
            yield

    def backward(self, loss: Tensor, optimizer: torch.optim.Optimizer,
                 before_step: "Callable[[], None] | None" = None) -> None:
        """Back-propagate ``loss`` and take one optimiser step (scaled for float16).

        ``before_step`` runs between the two (the gradient all-reduce of data-parallel training,
        :func:`glance_lite.common.distributed.all_reduce_grads`; with float16 it sees the scaled gradients,
        and an inf on any rank reaches every rank, so all skip the step together)."""
        if self.scaler is None:
            loss.backward()
            if before_step is not None:
                before_step()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if before_step is not None:
            before_step()
        self.scaler.step(optimizer)
        self.scaler.update()

    def describe(self) -> str:
        return "float32" if not self.enabled else f"mixed ({str(self.dtype).replace('torch.', '')})"
