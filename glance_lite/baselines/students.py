"""The TS baseline: *Uninformed Students* (Bergmann et al., CVPR 2020), built on the run's own Local-Net.

The paper's main competitor (TS [7] in Tab. 1 and Fig. 4, Sec. 4.2) looks at local patches only.  We
run it beside glance-lite on equal terms: same data, same preset, and, as the teacher, the very
fine-tuned Local-Net ``L`` of the glance-lite run (Eq. 4).  An ensemble of ``M`` students
``S_1..S_M`` (the same :class:`~glance_lite.models.local_net.LocalNet` architecture, randomly initialised with
different seeds) regresses the teacher's *standardised* descriptor on patches of the good training
images::

    y(p)  = (L(p) - mu) / sigma                 (mu, sigma: per-dimension, over the training patches)
    loss  = (1/n) ||S_m(p) - y(p)||^2           (one student at a time; Eq. 1 of the paper with D = id)

The anomaly score of a patch is the regression error plus the predictive variance of the ensemble::

    e(p) = || mean_m S_m(p) - y(p) ||^2
    v(p) = (1/n) sum_k Var_m[ S_m(p)_k ]        (population variance over the M students)
    s(p) = (e(p) - mean_e) / std_e + (v(p) - mean_v) / std_v

with ``mean_e, std_e, mean_v, std_v`` taken over every raster-grid patch of held-out *training*
images (never test images).  Patch scores are computed on the same raster grid as glance-lite
(:func:`glance_lite.score.scoring.patch_grid`, stride ``preset.score_stride``) with the same exact
fully-convolutional feature extraction (:func:`glance_lite.models.fast_features.local_features_at`, which falls
back to :meth:`~glance_lite.models.local_net.LocalNet.dense`), and turned into a per-pixel map with the same
inverse-distance-weighted interpolation (:func:`glance_lite.score.idw.idw_interpolate`), so that both
methods differ only in how a patch is scored.

Design decisions (each a deviation from Uninformed Students, for the book's errata page):

* Deviation (teacher): Uninformed Students distils its teacher from ResNet-18 with distillation,
  metric-learning and compactness losses; we reuse the fine-tuned Local-Net of the glance-lite run as the
  teacher, so that TS and glance-lite share the local feature and differ only in the anomaly score.
* Deviation (one scale): the original averages the scores of students for p = 17, 33 and 65
  (multi-scale); we use the preset's single patch size, as glance-lite does.
* Deviation (maps): the original scores every pixel position and averages the scores of all
  receptive fields that cover a pixel; we score the raster grid of glance-lite and interpolate with
  IDW (``preset.idw_power``, ``preset.idw_neighbours``), for an equal comparison.
* Deviation (training samples): the original trains the students densely on whole images.  On the
  CPU, independent random patches with the per-patch forward lowered the held-out regression error
  faster per second than dense training on crops with :meth:`LocalNet.dense` (offline ``cable`` at
  128 px, p = 33, a random teacher, lr 1e-3, same machine: validation MSE 0.19 after 70 s of
  64-patch batches against 0.45-0.50 after 55-95 s of dense steps on one or four 64 x 64 crops).
  So each step regresses ``preset.batch_size`` random patches drawn from a cached pool of
  ``preset.finetune_patches`` training patches whose teacher descriptors are computed once.  The
  dense machinery is used for scoring.
* Deviation (budget) and the stop rule: the original trains each student for 100 epochs at learning
  rate 1e-4.  We train each student at ``min(5 * preset.lr, 1e-3)`` (Adam, ``preset.weight_decay``)
  until it has *converged*, judged on held-out data: every ``eval_every`` steps the mean squared error
  on :data:`HELDOUT_PATCHES` patches of the held-out training images (never trained on) is recorded,
  and a student stops at the first evaluation ``t >= min_steps`` where that error fell by less than
  :data:`STOP_TOL` (1 %) over the last :data:`STOP_WINDOW` (a fifth) of its steps, or at the cap
  ``max_steps``.  ``min_steps`` gives the ensemble at least the joint stage's compute: ``M * min_steps
  >= preset.global_steps`` (``cpu``: 1,000 steps per student against 3,000 joint steps);
  ``max_steps = 1.5 * min_steps`` bounds the time (:func:`stop_rule`).  Each student's held-out curve,
  its stop step and the rule are recorded in ``students.pt`` and ``metrics_ts.json``.  Stopping at a
  fixed 200 steps per student, as this baseline first did, left the students far from convergence
  (held-out error still falling fast), and the control was too weak.
* Deviation (validation set): the original normalises ``e`` and ``v`` with statistics of a
  validation set of anomaly-free images.  MVTec AD has none, so we hold out ``val_fraction = 10 %``
  of the training images (at least one; a seeded permutation) from student training and fit the
  statistics on them.  With fewer than two training images (or ``val_fraction = 0``) the statistics
  come from the training images themselves.
* The ensemble size ``M = 3`` is that of Uninformed Students' ensembles.  ``v`` is the mean (not the
  sum) over the descriptor dimensions of the variance; after the standardisation the score is the
  same either way.  The variance is computed from pairwise differences
  ``(1/M^2) sum_{m<m'} (S_m - S_m')^2``, which equals the population variance and is exactly zero
  when all students agree.

Defined in :doc:`/notebooks/06_mvtec_ad` (the TS column of Tab. 1 and the comparison of Fig. 4).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..common.devices import resolve_device
from ..common.fileio import GlanceError, atomic_write_json, load_torch, save_torch
from ..models.local_net import LocalNet
from ..common.presets import Preset, hardware_info, training_fields

__all__ = [
    "DEFAULT_STUDENTS",
    "VAL_FRACTION",
    "HELDOUT_PATCHES",
    "heldout_patches",
    "STOP_TOL",
    "STOP_WINDOW",
    "stop_rule",
    "student_seed",
    "fixed_rule",
    "last_window_gain",
    "stop_reason",
    "has_converged",
    "heldout_loss",
    "default_lr",
    "regression_error",
    "predictive_variance",
    "StudentEnsemble",
    "split_train_val",
    "make_pool",
    "new_student",
    "train_student",
    "train_until_converged",
    "fit_students",
    "student_patch_scores",
    "student_maps",
    "evaluate_students",
    "run_ts_baseline",
]

DEFAULT_STUDENTS = 3
"""Ensemble size M. UniStud: its ensembles use 3 students."""

VAL_FRACTION = 0.1
"""Fraction of the training images held out to normalise e and v. ours."""

_STUDENT_SEED = 7919  # offset between the per-student seeds (a prime, so seeds never collide)


HELDOUT_PATCHES = 1024
"""Patches of the held-out training images on which each student's convergence is judged (at most;
see :func:`heldout_patches`). ours."""

STOP_TOL = 0.01
"""A student has converged when its held-out error fell by less than this fraction ... ours."""

STOP_WINDOW = 0.2
"""... over this last fraction of its steps. ours."""

CAP_FACTOR = 1.5
"""``max_steps = CAP_FACTOR * min_steps``: the cap on a student's steps. ours."""


def heldout_patches(preset: Preset) -> int:
    """Held-out patches for a run with this preset: ``min(HELDOUT_PATCHES, 4 * preset.finetune_patches)``.

    The ``cpu`` and ``paper`` presets get all :data:`HELDOUT_PATCHES`; the tiny ``smoke`` preset (32
    fine-tuning patches) gets 128, so that judging convergence does not cost more than training. ours."""
    return int(min(HELDOUT_PATCHES, 4 * int(preset.finetune_patches)))


def stop_rule(preset: Preset, n_students: int = DEFAULT_STUDENTS, cap_factor: float = CAP_FACTOR) -> dict[str, Any]:
    """The convergence rule of the students of a run with this preset (see the module docstring).

    ``min_steps = max(preset.finetune_steps // 2, ceil(preset.global_steps / n_students))``, so that the
    ensemble gets at least the joint stage's optimiser steps; ``max_steps = ceil(cap_factor * min_steps)``
    (:data:`CAP_FACTOR`, 1.5; :mod:`glance_lite.experiments.ts_cap` measures a larger cap);
    the held-out error is evaluated every ``eval_every = max(1, min_steps // 10)`` steps.
    """
    if n_students < 1:
        raise GlanceError(f"need at least one student, got {n_students}")
    if not cap_factor >= 1:
        raise GlanceError(f"the cap must be at least min_steps (cap_factor >= 1), got {cap_factor}")
    lo = max(1, int(preset.finetune_steps) // 2, -(-int(preset.global_steps) // int(n_students)))
    return {"kind": "heldout-plateau", "min_steps": lo, "max_steps": int(np.ceil(float(cap_factor) * lo)),
            "eval_every": max(1, lo // 10), "tol": STOP_TOL, "window": STOP_WINDOW,
            "heldout_patches": heldout_patches(preset)}


def fixed_rule(steps: int, n_heldout: int) -> dict[str, Any]:
    """A rule that trains every student exactly ``steps`` steps (its held-out curve, on ``n_heldout``
    patches -- :func:`heldout_patches` of the run's preset -- is still recorded)."""
    if steps < 1:
        raise GlanceError(f"need steps >= 1, got {steps}")
    return {"kind": "fixed", "min_steps": int(steps), "max_steps": int(steps), "eval_every": max(1, int(steps) // 10),
            "tol": STOP_TOL, "window": STOP_WINDOW, "heldout_patches": int(n_heldout)}


def last_window_gain(steps: list[int], losses: list[float], window: float = STOP_WINDOW) -> float | None:
    """Relative fall of the held-out error over the last ``window`` of the steps: ``(before - now) / before``.

    ``now`` is the error at the last evaluation ``t``, ``before`` the error at the last evaluation at or
    before ``(1 - window) t`` (the first one if none is).  Negative when the error rose; ``None`` with
    fewer than two evaluations or a non-positive ``before``.  A student whose gain is still above
    :data:`STOP_TOL` when it stops was stopped by the cap, not by the plateau (printed in
    :doc:`/notebooks/06_mvtec_ad`).
    """
    if len(steps) < 2 or len(steps) != len(losses):
        return None
    back = (1.0 - float(window)) * steps[-1]
    j = max(i for i, s_ in enumerate(steps) if s_ <= back) if steps[0] <= back else 0
    before, now = float(losses[j]), float(losses[-1])
    return None if before <= 0 else (before - now) / before


def stop_reason(curve: dict[str, Any], rule: dict[str, Any]) -> tuple[int, str, float | None]:
    """How a student with held-out ``curve`` (``{"steps", "loss", "stop_step"}``) stopped under ``rule``:
    ``(stop step, "cap" or "plateau", fall of its error over the last window)`` -- ``"cap"`` when it stopped
    at ``max_steps`` with its error still falling by at least ``tol`` (:func:`last_window_gain`).  A fixed
    rule's students count as stopped by the cap when their error was still falling."""
    stop = int(curve.get("stop_step", curve["steps"][-1]))
    gain = last_window_gain(curve["steps"], curve["loss"], float(rule.get("window", STOP_WINDOW)))
    capped = (rule.get("max_steps") is not None and stop >= int(rule["max_steps"])
              and gain is not None and gain >= float(rule.get("tol", STOP_TOL)))
    return stop, ("cap" if capped else "plateau"), gain


def has_converged(steps: list[int], losses: list[float], rule: dict[str, Any]) -> bool:
    """Whether a student with held-out errors ``losses`` at ``steps`` (ascending) stops now.

    It stops at ``max_steps``; before ``min_steps`` never; in between when the error at the last
    evaluation ``t`` is less than ``tol`` (relative) below the error at the last evaluation at or
    before ``(1 - window) t`` (:func:`last_window_gain`) -- a rise counts as no gain.
    """
    if not steps:
        return False
    t = steps[-1]
    if t >= rule["max_steps"]:
        return True
    if t < rule["min_steps"]:
        return False
    gain = last_window_gain(steps, losses, float(rule["window"]))
    return gain is None or gain < float(rule["tol"])


@torch.no_grad()
def heldout_loss(student: LocalNet, patches: Tensor, targets: Tensor, batch: int = 512) -> float:
    """Mean over patches of the squared error averaged over dimensions (the training loss), on uint8
    ``patches`` and standardised ``targets``."""
    dev = next(student.parameters()).device
    was = student.training
    student.eval()
    tot = 0.0
    for a in range(0, len(patches), batch):
        x = patches[a : a + batch].to(dev).float() / 255
        tot += float((student(x) - targets[a : a + batch].to(dev)).pow(2).mean(1).sum())
    student.train(was)
    return tot / max(1, len(patches))


def default_lr(preset: Preset) -> float:
    """Student learning rate ``min(5 * preset.lr, 1e-3)``: fewer steps than fine-tuning, at a higher
    rate that the Local-Net (no normalisation layers) still trains stably with (5e-3 diverged). ours."""
    return min(5.0 * float(preset.lr), 1e-3)


# ------------------------------------------------------------------------------------------------
# Scores
# ------------------------------------------------------------------------------------------------


def regression_error(preds: Tensor, target: Tensor) -> Tensor:
    """``e = ||mean_m preds[m] - target||^2`` over the last (descriptor) dimension.

    Args:
        preds: ``(M, ..., n)`` student predictions.
        target: ``(..., n)`` standardised teacher descriptors.

    Returns:
        ``(...)`` squared Euclidean errors of the ensemble mean.
    """
    if preds.shape[1:] != target.shape:
        raise ValueError(f"preds {tuple(preds.shape)} must be (M, *target.shape) with target {tuple(target.shape)}")
    return (preds.mean(0) - target).pow(2).sum(-1)


def predictive_variance(preds: Tensor) -> Tensor:
    """``v = (1/n) sum_k Var_m[preds[m, ..., k]]``, the population variance over the M students.

    Computed as ``(1/M^2) sum_{m<m'} (preds[m] - preds[m'])^2`` (the same number), which is exactly
    zero when all students agree.  ``preds`` is ``(M, ..., n)``; returns ``(...)``.
    """
    m = preds.shape[0]
    out = preds.new_zeros(preds.shape[1:-1])
    for a in range(m):
        for b in range(a + 1, m):
            out = out + (preds[a] - preds[b]).pow(2).mean(-1)
    return out / (m * m)


class StudentEnsemble(nn.Module):
    """M student Local-Nets with the teacher's standardisation and the e/v normalisation.

    Buffers: ``t_mean``, ``t_std`` (n,) -- per-dimension statistics of the teacher descriptors over
    the training patches; ``e_mean``, ``e_std``, ``v_mean``, ``v_std`` (0-d) -- statistics of the
    patch errors and variances over the held-out training images (identity until fitted).
    """

    def __init__(self, n_students: int, patch_size: int, dim: int, preset: Preset | None = None) -> None:
        super().__init__()
        if n_students < 1:
            raise ValueError(f"need at least one student, got {n_students}")
        self.preset = preset
        self.patch_size = int(patch_size)
        self.dim = int(dim)
        self.students = nn.ModuleList(LocalNet(patch_size, dim) for _ in range(n_students))
        self.register_buffer("t_mean", torch.zeros(dim))
        self.register_buffer("t_std", torch.ones(dim))
        for name, value in (("e_mean", 0.0), ("e_std", 1.0), ("v_mean", 0.0), ("v_std", 1.0)):
            self.register_buffer(name, torch.tensor(value))
        self.info: dict[str, Any] = {}

    @classmethod
    def from_students(cls, students: list[LocalNet], preset: Preset | None = None) -> "StudentEnsemble":
        """An ensemble holding copies of the weights of these students."""
        if not students:
            raise ValueError("need at least one student")
        s0 = students[0]
        ens = cls(len(students), s0.patch_size, s0.dim, preset)
        for mine, theirs in zip(ens.students, students):
            mine.load_state_dict(theirs.state_dict())
        return ens.to(next(s0.parameters()).device)

    @property
    def n_students(self) -> int:
        return len(self.students)

    def set_teacher_stats(self, targets: Tensor) -> None:
        """Fit ``t_mean``, ``t_std`` on raw teacher descriptors ``(N >= 2, n)``."""
        if targets.ndim != 2 or targets.shape[0] < 2 or targets.shape[1] != self.dim:
            raise ValueError(f"need (N >= 2, {self.dim}) teacher descriptors, got {tuple(targets.shape)}")
        t = targets.detach().double()
        self.t_mean.copy_(t.mean(0).float())
        self.t_std.copy_(t.std(0).clamp_min(1e-6).float())

    def standardise(self, y: Tensor) -> Tensor:
        """``(y - t_mean) / t_std`` on descriptors with the feature axis last."""
        return (y - self.t_mean) / self.t_std

    def forward(self, patches: Tensor) -> Tensor:
        """Predictions of every student for a batch of patches: ``(M, B, n)``."""
        return torch.stack([s(patches) for s in self.students])

    def raw_scores_at(self, teacher: LocalNet, images: Tensor, tops: Tensor, lefts: Tensor) -> tuple[Tensor, Tensor]:
        """Unnormalised ``(e, v)``, each ``(B, len(tops), len(lefts))``, of the grid patches."""
        from ..models.fast_features import local_features_at

        with torch.no_grad():
            y = local_features_at(teacher, images, tops, lefts).permute(0, 2, 3, 1)  # B,gh,gw,n
            preds = torch.stack(
                [local_features_at(s, images, tops, lefts).permute(0, 2, 3, 1) for s in self.students]
            )
            y = self.standardise(y)
            return regression_error(preds, y), predictive_variance(preds)

    def normalise(self, e: Tensor, v: Tensor) -> Tensor:
        """``e_norm + v_norm`` with the fitted statistics (on the device of ``e`` and ``v``)."""
        st = {k: float(getattr(self, k)) for k in ("e_mean", "e_std", "v_mean", "v_std")}
        return (e - st["e_mean"]) / st["e_std"] + (v - st["v_mean"]) / st["v_std"]

    def set_score_stats(self, e: Tensor, v: Tensor) -> None:
        """Fit the e/v normalisation on patch scores of anomaly-free (training) images."""
        e, v = e.detach().double().reshape(-1), v.detach().double().reshape(-1)
        if e.numel() < 2:
            raise ValueError("need at least two patch scores to fit the normalisation")
        self.e_mean.fill_(float(e.mean()))
        self.e_std.fill_(max(float(e.std()), 1e-12))
        self.v_mean.fill_(float(v.mean()))
        self.v_std.fill_(max(float(v.std()), 1e-12))

    # --- files -----------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the ensemble (weights, statistics, preset, info) atomically."""
        payload: dict[str, Any] = {
            "kind": "glance-lite students",
            "n_students": self.n_students,
            "patch_size": self.patch_size,
            "dim": self.dim,
            "preset": json.dumps(self.preset.to_dict()) if self.preset is not None else "",
            "state": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "info": json.dumps(self.info),
        }
        return save_torch(path, payload)

    @classmethod
    def load(cls, path: str | Path, map_location: Any = "cpu") -> "StudentEnsemble":
        """Load a file written by :meth:`save`; bad files raise :class:`GlanceError`."""
        path = Path(path)
        payload = load_torch(path, map_location=map_location)
        try:
            if payload.get("kind") != "glance-lite students":
                raise KeyError("kind")
            preset = Preset.from_dict(json.loads(payload["preset"])) if payload["preset"] else None
            ens = cls(int(payload["n_students"]), int(payload["patch_size"]), int(payload["dim"]), preset)
            ens.load_state_dict(payload["state"])
            ens.info = json.loads(payload.get("info") or "{}")
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
            raise GlanceError(f"{path}: not a glance-lite student ensemble ({e})") from e
        return ens.eval()

    @classmethod
    def from_run(cls, run_dir: str | Path, map_location: Any = "cpu") -> "StudentEnsemble":
        """Load ``run_dir/students.pt`` (written by :func:`fit_students`)."""
        run_dir = Path(run_dir)
        path = run_dir / "students.pt"
        if not path.is_file():
            raise GlanceError(f"{run_dir}: has no students.pt; run fit_students (the TS baseline) first")
        return cls.load(path, map_location)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def split_train_val(n: int, val_fraction: float = VAL_FRACTION, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Indices ``(train, val)`` of ``n`` training images; val holds ``round(val_fraction * n)``.

    A seeded permutation, both parts sorted.  With too few images for a split (``n < 2``, or
    ``val_fraction`` giving 0 images) both parts are all images.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    n_val = max(1, int(round(val_fraction * n))) if val_fraction > 0 else 0
    if n < 2 or n_val == 0 or n_val >= n:
        everything = torch.arange(n)
        return everything, everything
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


@torch.no_grad()
def make_pool(
    teacher: LocalNet, images: Tensor, n_patches: int, seed: int, batch: int = 256
) -> dict[str, Tensor]:
    """A pool of random training patches (uint8) and the teacher's raw descriptors of them.

    The descriptors are computed on the stored (8-bit) patches, so that cache and targets agree.
    """
    from ..train.training import crop_patches

    p = teacher.patch_size
    n, _, h, w = images.shape
    if h < p or w < p:
        raise GlanceError(f"images of {h}x{w} pixels are smaller than the {p}x{p} patch")
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(n, (n_patches,), generator=g)
    tops = torch.randint(h - p + 1, (n_patches,), generator=g)
    lefts = torch.randint(w - p + 1, (n_patches,), generator=g)
    patches = (crop_patches(images, idx, tops, lefts, p) * 255).round().clamp(0, 255).to(torch.uint8)
    dev = next(teacher.parameters()).device
    was = teacher.training
    teacher.eval()
    targets = torch.cat(
        [teacher(patches[a : a + batch].to(dev).float() / 255).cpu() for a in range(0, n_patches, batch)]
    )
    teacher.train(was)
    return {"patches": patches, "targets": targets}


def new_student(patch_size: int, dim: int, seed: int) -> LocalNet:
    """A randomly initialised student; the global random state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return LocalNet(patch_size, dim)


def student_seed(preset: Preset, k: int) -> int:
    """The seed of student ``k``: its initial weights (:func:`new_student`) and its batches."""
    return int(preset.seed) + _STUDENT_SEED * (k + 1)


def train_student(
    student: LocalNet,
    k: int,
    patches: Tensor,
    targets: Tensor,
    preset: Preset,
    steps: int,
    lr: float,
    ckpt: str | Path,
    stop_after: int | None = None,
    progress: bool = True,
):
    """Train student ``k`` to regress standardised teacher descriptors ``targets`` of ``patches``.

    Each step takes ``preset.batch_size`` random patches of the pool (uint8, (P, 3, p, p)), drawn by
    :func:`glance_lite.train.training.local_batch` with the seed ``seed + 7919 (k + 1)``, and minimises
    :func:`~glance_lite.models.local_net.distillation_loss` (the squared error averaged over dimensions).
    Resumable and exact through :func:`glance_lite.train.training.run_stage` (checkpoint ``ckpt``).
    Returns the stage's :class:`~glance_lite.train.training.StageHistory`.  Taught in
    :doc:`/notebooks/06_mvtec_ad`, whose visible student loop is checked against it.
    """
    from ..train.training import local_batch, run_stage

    dev = next(student.parameters()).device
    patches = patches.to(dev)
    targets = targets.to(dev)
    n = len(patches)
    opt = torch.optim.Adam(student.parameters(), lr=lr, weight_decay=preset.weight_decay)
    seed = student_seed(preset, k)

    from ..common.distributed import current, shard, share_of_mean

    ctx = current()
    B = min(preset.batch_size, n)

    def step_fn(step: int) -> dict[str, Tensor]:
        idx = local_batch(seed, "students", step, n, B)[shard(B, ctx)].to(dev)  # this rank's share (all of it alone)
        err = (student(patches[idx].float() / 255) - targets[idx]).pow(2).mean(1)
        return {"loss": share_of_mean(err, B)}  # sums over the ranks to the batch mean

    from ..common.devices import Precision

    return run_stage(f"students_{k}", {"student": student}, opt, step_fn, steps, ckpt,
                     preset.checkpoint_every, stop_after=stop_after, progress=progress,
                     precision=Precision(dev, preset.mixed_precision))


def train_until_converged(
    student: LocalNet,
    k: int,
    patches: Tensor,
    targets: Tensor,
    held_patches: Tensor,
    held_targets: Tensor,
    preset: Preset,
    rule: dict[str, Any],
    lr: float,
    ckpt: str | Path,
    stop_after: int | None = None,
    progress: bool = True,
) -> tuple[Any, dict[str, Any], bool]:
    """Train student ``k`` (:func:`train_student`) until :func:`has_converged` says stop.

    Every ``rule["eval_every"]`` steps (and at step 0) the held-out error (:func:`heldout_loss` on
    ``held_patches`` / ``held_targets``) is appended to the curve, which is written atomically beside
    the checkpoint (``<ckpt stem>_heldout.json``), so that a stopped call resumes the curve with the
    weights.  ``stop_after`` ends the call after that many optimiser steps.

    Returns ``(history, curve, finished)``; ``curve = {"steps", "loss", "stop_step"}``.
    """
    ckpt = Path(ckpt)
    curve_path = ckpt.with_name(ckpt.stem + "_heldout.json")
    curve: dict[str, Any] = {"steps": [], "loss": []}
    if curve_path.is_file():
        try:
            curve = json.loads(curve_path.read_text())
        except ValueError as e:
            raise GlanceError(f"{curve_path}: unreadable held-out curve ({e}); delete it and {ckpt}") from e
    every, top = int(rule["eval_every"]), int(rule["max_steps"])
    step = int(load_torch(ckpt)["step"]) if ckpt.is_file() else 0
    hist = train_student(student, k, patches, targets, preset, step, lr, ckpt, progress=False)  # loads weights
    bar = tqdm(total=top, initial=step, desc=f"student {k}", disable=not progress, leave=False)
    remaining = stop_after
    try:
        while True:
            if (step % every == 0 or step >= top) and (not curve["steps"] or curve["steps"][-1] < step):
                curve["steps"].append(step)
                curve["loss"].append(heldout_loss(student, held_patches, held_targets))
                atomic_write_json(curve_path, curve)
                bar.set_postfix(heldout=f"{curve['loss'][-1]:.4f}")
            if has_converged(curve["steps"], curve["loss"], rule):
                curve["stop_step"] = curve["steps"][-1]
                return hist, curve, True
            if remaining is not None and remaining <= 0:
                return hist, curve, False
            target = min(top, (step // every + 1) * every)
            hist = train_student(student, k, patches, targets, preset, target, lr, ckpt, stop_after=remaining,
                                 progress=False)
            ran = len(hist.records) - step
            step = len(hist.records)
            bar.update(ran)
            if remaining is not None:
                remaining -= ran
            if step < target:
                return hist, curve, False
    finally:
        bar.close()


def _check_category(run_dir: Path, category: str) -> dict[str, Any]:
    cfg_path = run_dir / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if cfg.get("category") not in (None, category):
        raise GlanceError(f"{run_dir}: was fitted on category {cfg.get('category')!r}, not {category!r}")
    return cfg


def fit_students(
    run_dir: str | Path,
    data_root: str | Path,
    category: str,
    n_students: int = DEFAULT_STUDENTS,
    steps: int | None = None,
    progress: bool = True,
    lr: float | None = None,
    val_fraction: float = VAL_FRACTION,
    stop_after: int | None = None,
    device: str | torch.device | None = None,
    cap_factor: float = CAP_FACTOR,
) -> Path:
    """Train the TS baseline's students for a finished glance-lite run; writes ``run_dir/students.pt``.

    The teacher is the run's fine-tuned Local-Net.  Each student trains until it has converged on
    held-out patches (:func:`stop_rule`, :func:`train_until_converged`); ``steps`` instead trains each
    exactly that many steps (:func:`fixed_rule`); ``cap_factor`` sets the rule's cap (:func:`stop_rule`).
    ``lr`` defaults to :func:`default_lr`.  Resumable:
    the teacher-descriptor pools (training and held-out) are cached in
    ``run_dir/checkpoints/students_cache.pt`` and each student has its own checkpoint and held-out
    curve ``run_dir/checkpoints/students_<k>.pt`` / ``students_<k>_heldout.json``; re-running continues
    where a stopped call ended.  ``stop_after`` ends the call after that many optimiser steps in total
    (students.pt is then not written yet).  An existing ``students.pt`` trained with the same settings
    is reused; one with other settings raises :class:`GlanceError` (delete it and the ``students_*``
    checkpoints).

    Returns the path of ``students.pt``.
    """
    from ..models.model import GlanceModel
    from ..data.mvtec import find_category
    from ..score.scoring import patch_grid
    from ..train.training import load_train_images

    run_dir = Path(run_dir)
    model = GlanceModel.load(run_dir)
    _check_category(run_dir, category)
    p = model.preset
    if n_students < 1:
        raise GlanceError(f"need n_students >= 1, got {n_students}")
    rule = stop_rule(p, n_students, cap_factor) if steps is None else fixed_rule(int(steps), heldout_patches(p))
    lr = default_lr(p) if lr is None else float(lr)
    settings = {"n_students": int(n_students), "rule": rule, "lr": lr, "val_fraction": float(val_fraction),
                "pool": int(p.finetune_patches), "seed": int(p.seed), "batch_size": int(p.batch_size)}
    out = run_dir / "students.pt"
    if out.is_file():
        old = StudentEnsemble.load(out).info.get("settings")
        if old != settings:
            raise GlanceError(f"{out}: holds students trained with other settings ({old}); delete it and "
                              f"{run_dir / 'checkpoints'}/students_* to train with {settings}")
        return out
    dev = resolve_device(device)
    teacher = model.local_net.to(dev).eval()
    cat = find_category(data_root, category)
    images = load_train_images(cat, p)
    train_idx, val_idx = split_train_val(len(images), val_fraction, p.seed + 11)

    ck = run_dir / "checkpoints"
    cache_path = ck / "students_cache.pt"
    pool_key = json.dumps({k: settings[k] for k in ("val_fraction", "pool", "seed")}
                          | {"n_images": len(images), "image_size": p.image_size,
                             "heldout": rule["heldout_patches"]}, sort_keys=True)
    from ..common.distributed import main_says

    if main_says(cache_path.is_file()):  # the ranks must take this branch alike (barriers)
        cache = load_torch(cache_path)
        if cache.get("key") != pool_key:
            raise GlanceError(f"{cache_path}: was made with other settings; delete it and "
                              f"{ck}/students_* to start the students again")
    else:
        from ..common.distributed import cached

        def make() -> dict[str, Any]:
            t0 = time.perf_counter()
            pool = make_pool(teacher, images[train_idx], p.finetune_patches, p.seed + 5)
            held = make_pool(teacher, images[val_idx], rule["heldout_patches"], p.seed + 6)
            return {**pool, "held_patches": held["patches"], "held_targets": held["targets"], "key": pool_key,
                    "seconds": time.perf_counter() - t0}

        cache = cached(cache_path, make)  # data-parallel: rank 0 makes it, the others read it

    ens = StudentEnsemble(n_students, p.patch_size, p.descriptor_dim, p)
    ens.set_teacher_stats(cache["targets"])
    targets = ens.standardise(cache["targets"])
    held_targets = ens.standardise(cache["held_targets"])
    students, hists, curves = [], [], []
    remaining = stop_after
    for k in range(n_students):
        student = new_student(p.patch_size, p.descriptor_dim, student_seed(p, k)).to(dev)
        ckpt = ck / f"students_{k}.pt"
        before = int(load_torch(ckpt)["step"]) if ckpt.is_file() else 0
        if remaining is not None and remaining <= 0:
            return out
        h, curve, done = train_until_converged(student, k, cache["patches"], targets, cache["held_patches"],
                                               held_targets, p, rule, lr, ckpt, stop_after=remaining,
                                               progress=progress)
        if remaining is not None:
            remaining -= len(h.records) - before
        if not done:
            return out
        students.append(student)
        hists.append(h)
        curves.append(curve)

    ens = StudentEnsemble.from_students(students, p)
    ens.set_teacher_stats(cache["targets"])
    t0 = time.perf_counter()
    val = images[val_idx]
    tops, lefts = patch_grid(val.shape[2], val.shape[3], p.patch_size, p.score_stride)
    es, vs = [], []
    ens.eval()
    for i in range(len(val)):
        e, v = ens.raw_scores_at(teacher, val[i : i + 1].to(dev), tops, lefts)
        es.append(e.cpu())
        vs.append(v.cpu())
    ens.set_score_stats(torch.cat(es), torch.cat(vs))
    ens.info = {
        "settings": settings,
        "teacher": f"fine-tuned Local-Net of {run_dir.name} ({model.teacher} distilled)",
        "n_train_images": int(len(train_idx)),
        "n_val_images": int(len(val_idx)),
        "val_in_sample": bool(torch.equal(train_idx, val_idx)),
        "pool_seconds": round(float(cache.get("seconds", 0.0)), 2),
        "student_seconds": [round(h.seconds, 2) for h in hists],
        "stats_seconds": round(time.perf_counter() - t0, 2),
        "final_losses": [h.final() for h in hists],
        "first_losses": [h.records[0]["loss"] for h in hists],
        "stop_steps": [c["stop_step"] for c in curves],
        "heldout_curves": curves,
        "converged": [c["stop_step"] < rule["max_steps"] or rule["kind"] == "fixed" for c in curves],
        "score_stats": {k: float(getattr(ens, k)) for k in ("e_mean", "e_std", "v_mean", "v_std")},
        "hardware": hardware_info(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    from ..common.distributed import on_main

    on_main(lambda: ens.cpu().save(out))
    return out


# ------------------------------------------------------------------------------------------------
# Maps and evaluation
# ------------------------------------------------------------------------------------------------


def student_patch_scores(
    ensemble: StudentEnsemble, local_net: LocalNet, images: Tensor, stride: int | None = None
) -> dict[str, Tensor]:
    """TS patch scores on the raster grid: ``dict(score, e, v (B, gh, gw), tops (gh,), lefts (gw,))``.

    ``score = e_norm + v_norm``; ``e`` and ``v`` are unnormalised.  ``stride`` defaults to
    ``preset.score_stride`` (``1``: every patch position).
    """
    from ..score.scoring import patch_grid

    p = ensemble.patch_size
    if local_net.patch_size != p or local_net.dim != ensemble.dim:
        raise GlanceError(f"teacher ({local_net.patch_size}px, {local_net.dim}-d) does not match the students "
                          f"({p}px, {ensemble.dim}-d)")
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise GlanceError(f"images must be a (B, 3, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    h, w = images.shape[-2:]
    s = stride or (ensemble.preset.score_stride if ensemble.preset is not None else 4)
    tops, lefts = patch_grid(h, w, p, s)
    dev = ensemble.t_mean.device
    es, vs = [], []
    flags = ensemble.training, local_net.training
    ensemble.eval()
    local_net.eval()
    try:
        for i in range(images.shape[0]):
            e, v = ensemble.raw_scores_at(local_net, images[i : i + 1].float().to(dev), tops, lefts)
            es.append(e.cpu())
            vs.append(v.cpu())
    finally:
        ensemble.train(flags[0])
        local_net.train(flags[1])
    e, v = torch.cat(es), torch.cat(vs)
    return {"score": ensemble.normalise(e, v), "e": e, "v": v, "tops": tops, "lefts": lefts}


def student_maps(
    ensemble: StudentEnsemble,
    local_net: LocalNet,
    images: Tensor,
    stride: int | None = None,
    power: float | None = None,
    neighbours: int | None = None,
) -> Tensor:
    """Per-pixel TS anomaly maps ``(B, H, W)``: grid patch scores, then IDW as in glance-lite.

    ``local_net`` is the teacher (the run's fine-tuned Local-Net).  ``power`` / ``neighbours``
    default to ``preset.idw_power`` / ``preset.idw_neighbours``.
    """
    from ..score.idw import idw_interpolate
    from ..score.scoring import patch_centres

    sc = student_patch_scores(ensemble, local_net, images, stride)
    pr = ensemble.preset
    pw = (pr.idw_power if pr is not None else 2.0) if power is None else float(power)
    nb = (pr.idw_neighbours if pr is not None else 9) if neighbours is None else neighbours
    cy, cx = patch_centres(sc["tops"], sc["lefts"], ensemble.patch_size)
    return idw_interpolate(sc["score"], cy, cx, images.shape[2], images.shape[3], power=pw, neighbours=nb)


def _metrics(maps: np.ndarray, masks: np.ndarray | None, labels: np.ndarray) -> dict[str, float | None]:
    from ..evaluate.metrics import summary_metrics

    return summary_metrics(maps, masks, labels)

def evaluate_students(
    run_dir: str | Path, data_root: str | Path, category: str, progress: bool = True,
    device: str | torch.device | None = None, preset: Preset | None = None,
) -> dict[str, Any]:
    """Score the test split with the TS baseline; writes ``run_dir/metrics_ts.json`` and ``ts_maps.npz``.

    The metrics are those of :func:`glance_lite.evaluate.evaluation.evaluate_run` (image AUROC from the
    map maxima, pixel AUROC, AU-PRO up to FPR 0.3), so ``metrics.json`` and ``metrics_ts.json``
    compare directly.  ``preset`` (default: the run's) gives the scoring grid and the IDW settings
    (``score_stride``, ``idw_power``, ``idw_neighbours``), as ``evaluate_run(..., preset=)`` does for
    glance-lite, so that a variant that changes only how runs are scored scores TS the same way; its
    training fields must be the run's.
    """
    from ..models.model import GlanceModel
    from ..train.training import git_commit

    run_dir = Path(run_dir)
    model = GlanceModel.load(run_dir)
    cfg = _check_category(run_dir, category)
    dev = resolve_device(device)
    ens = StudentEnsemble.from_run(run_dir).to(dev)
    model.to(dev)
    p = model.preset
    if ens.preset is not None and training_fields(ens.preset) != training_fields(p):  # scoring fields may differ
        raise GlanceError(f"{run_dir / 'students.pt'}: was trained with another preset than {run_dir / 'model.pt'}")
    if preset is not None:
        if training_fields(preset) != training_fields(p):
            raise GlanceError(f"{run_dir}: was fitted with another preset than {preset.name!r} (only scoring fields may differ)")
        p = preset
    from .test_split import save_maps_npz, score_test_split

    tm = score_test_split(data_root, category, p, lambda x: student_maps(
        ens, model.local_net, x, stride=p.score_stride, power=p.idw_power, neighbours=p.idw_neighbours),
        f"TS {category}", progress)
    maps_a, masks_a, labels_a = tm["maps"], tm["masks"], tm["labels"]
    info = ens.info
    result: dict[str, Any] = {
        "method": "TS (Uninformed Students) on the run's fine-tuned Local-Net",
        "category": category,
        **_metrics(maps_a, masks_a, labels_a),
        "n_students": ens.n_students,
        "n_test": len(labels_a),
        "seconds_per_image": tm["seconds_per_image"],
        "preset": p.name,
        "preset_fields": p.to_dict(),
        "teacher": info.get("teacher", model.teacher),
        "students": {k: info.get(k) for k in ("settings", "n_train_images", "n_val_images", "val_in_sample",
                                               "pool_seconds", "student_seconds", "stats_seconds",
                                               "final_losses", "stop_steps", "converged", "heldout_curves",
                                               "score_stats")},
        "fit_seconds": round(float(info.get("pool_seconds", 0) or 0) + sum(info.get("student_seconds") or [])
                             + float(info.get("stats_seconds", 0) or 0), 1),
        "hardware": hardware_info(),
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_git_commit": cfg.get("git_commit"),
        "data_root": str(Path(data_root).resolve()),
    }

    save_maps_npz(run_dir / "ts_maps.npz", maps_a, masks_a, labels_a, tm["defects"], tm["paths"])
    atomic_write_json(run_dir / "metrics_ts.json", result)
    return result


def run_ts_baseline(run_dir: str | Path, data_root: str | Path, category: str, progress: bool = True,
                    device: str | torch.device | None = None, preset: Preset | None = None) -> dict[str, Any]:
    """Fit (or reuse) the students of a finished run and evaluate them: the TS column of Tab. 1.

    An existing ``run_dir/students.pt`` is evaluated as it is, whatever its rule (one written before
    students recorded a rule and a held-out curve is refused); otherwise the students are trained (or
    their training resumed) with the defaults of :func:`fit_students`.
    ``preset`` (default: the run's) gives the scoring fields (:func:`evaluate_students`).
    Returns the dict written to ``run_dir/metrics_ts.json``.
    """
    from ..models.model import GlanceModel
    from ..train.training import scale_dir, scale_preset
    from .test_split import save_maps_npz

    existing = Path(run_dir) / "students.pt"
    if not existing.is_file():
        fit_students(run_dir, data_root, category, progress=progress, device=device)
    elif "rule" not in (StudentEnsemble.load(existing).info.get("settings") or {}):
        raise GlanceError(f"{existing}: students trained a fixed number of steps with no held-out curve (an older "
                          f"file); delete it and {Path(run_dir) / 'checkpoints'}/students_* to train them to convergence")
    result = evaluate_students(run_dir, data_root, category, progress=progress, device=device, preset=preset)
    extra = GlanceModel.load(run_dir).preset.extra_patch_sizes
    if not extra:
        return result
    # multi-scale (as in Uninformed Students): the students of every patch size, each map standardised
    # with its own training statistics (StudentEnsemble.normalise), averaged
    size0 = result["preset_fields"]["patch_size"]
    singles = {f"p{size0}": result}
    for size in extra:
        sub = scale_dir(run_dir, size)
        if not (sub / "students.pt").is_file():
            fit_students(sub, data_root, category, progress=progress, device=device)
        sub_preset = None if preset is None else scale_preset(preset, size)
        singles[f"p{size}"] = evaluate_students(sub, data_root, category, progress=progress, device=device,
                                                preset=sub_preset)
    folders = [Path(run_dir)] + [scale_dir(run_dir, size) for size in extra]
    loaded = [np.load(f / "ts_maps.npz") for f in folders]
    maps_a = np.mean([d["maps"] for d in loaded], axis=0)
    d0 = loaded[0]
    masks_a = d0["masks"] if d0["masks"].size else None
    result = dict(result, **_metrics(maps_a, masks_a, d0["labels"]),
                  method="TS (Uninformed Students), multi-scale: standardised maps of each patch size averaged",
                  patch_sizes=[size0, *extra],
                  scales={k: {m: v.get(m) for m in ("image_AUROC", "pixel_AUROC", "AU-PRO")} for k, v in singles.items()},
                  seconds_per_image=round(sum(v["seconds_per_image"] for v in singles.values()), 4),
                  fit_seconds=round(sum(v["fit_seconds"] for v in singles.values()), 1))

    save_maps_npz(Path(run_dir) / "ts_maps.npz", maps_a, masks_a, d0["labels"], d0["defects"], d0["paths"])
    atomic_write_json(Path(run_dir) / "metrics_ts.json", result)
    return result
