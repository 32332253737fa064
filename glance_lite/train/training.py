"""Training: Local-Net distillation and fine-tuning (Eq. 1-4), then Global-Net + DAD (Eq. 10).

Three stages, all run by one resumable step loop (:func:`run_stage`):

1. **pretrain** -- distil the Local-Net from the teacher on natural-image patches (Eq. 3).  It does
   not depend on the category, so it is stored once per preset and teacher under
   ``data/runs/pretrain-<preset>-<teacher>/`` and shared by every category.
2. **finetune** -- the same loss on patches of the category's good training images.
3. **global** -- the Local-Net is frozen; the Global-Net and DAD head minimise
   ``l = l_IAD + lambda_t * l_DAD`` (Eq. 10) on random patches and their stained copies; one step
   is :func:`global_step`, whose loss arithmetic chapter 03 writes out and checks.

Resuming is exact.  Each step draws its randomness from generators seeded by
``(seed, stage, step)``, and checkpoints hold the weights, the optimiser state and the loss history,
so a run stopped after any checkpoint and resumed ends with the same weights, bit for bit on the
CPU, as an uninterrupted run.  Checkpoints are written atomically and loaded with
``weights_only=True``.

Defined in :doc:`/notebooks/01_local_net` (stages 1-2) and :doc:`/notebooks/03_heads_and_training`
(stage 3).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..common.devices import Precision, configure, module_device, pin, resolve_device, to_device
from ..common.distributed import (DistContext, DistError, all_reduce_grads, all_reduce_sum, barrier, cached,
                                  gather_rows, on_main, shard, share_of_mean)
from ..common.distributed import current as current_dist
from ..common.fileio import GlanceError, atomic_write_json, load_torch, save_torch, short_hash
from ..models.global_net import hole_mask
from ..models.heads import dad_loss, iad_score
from ..models.local_net import Decoder, LocalNet, compactness_loss
from ..models.model import GlanceModel
from ..common.presets import Preset, hardware_info, training_fields
from ..data.stains import add_stain

__all__ = [
    "spread_indices",
    "StageHistory",
    "run_stage",
    "step_generators",
    "crop_patches",
    "local_batch",
    "LocalTrainer",
    "pretrain_local",
    "finetune_local",
    "grid_local_cache",
    "GlobalBatch",
    "draw_global_batch",
    "global_step",
    "train_global",
    "fit",
    "git_commit",
]

_STAGE_IDS = {"pretrain": 1, "finetune": 2, "global": 3}


@dataclass
class StageHistory:
    """Loss curve of one stage: one dict of named losses per step, plus wall time."""

    stage: str
    records: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def column(self, key: str) -> np.ndarray:
        """The values of one loss over the steps."""
        return np.array([r[key] for r in self.records], dtype=float)

    def final(self, key: str = "loss", window: int = 50) -> float:
        """Mean of the last ``window`` values of ``key`` (nan when empty)."""
        v = self.column(key)
        return float(v[-window:].mean()) if len(v) else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "records": self.records, "seconds": self.seconds}


def step_generators(seed: int, stage: str, step: int) -> tuple[torch.Generator, np.random.Generator]:
    """Fresh torch and numpy generators for one step, seeded by ``(seed, stage, step)``."""
    key = [int(seed), _STAGE_IDS.get(stage, 0), int(step)]
    ss = np.random.SeedSequence(key)
    g = torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1))
    return g, np.random.default_rng(ss.spawn(1)[0])


def run_stage(
    stage: str,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    step_fn: Callable[[int], dict[str, torch.Tensor]],
    n_steps: int,
    ckpt_path: str | Path,
    every: int,
    stop_after: int | None = None,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
    precision: Precision | None = None,
    dist: DistContext | None = None,
    lr_at: Callable[[int], float] | None = None,
) -> StageHistory:
    """Run ``step_fn(step)`` for steps ``[start, n_steps)``, resuming from ``ckpt_path`` if present.

    ``step_fn`` returns a dict of losses whose ``"loss"`` entry is back-propagated.  A checkpoint is
    written every ``every`` steps and at the end.  ``stop_after`` ends the call early after that
    many steps (used to test resuming).  ``extra`` tensors are stored in, and checked against, the
    checkpoint (e.g. feature normalisation statistics).  ``precision``
    (:class:`glance_lite.common.devices.Precision`) runs ``step_fn`` under autocast and scales the loss; the
    default is float32.  Only the logged losses are copied back to the CPU in a step.  ``lr_at(step)``,
    when given, sets the optimiser's learning rate before each step (a pure function of the step, so a
    resumed stage continues exactly); otherwise the optimiser keeps its own.

    Data-parallel (``dist``, default :func:`glance_lite.common.distributed.current`): ``step_fn`` returns this
    rank's *contributions* (they sum over the ranks to the single-process losses, see
    :mod:`glance_lite.common.distributed`); the gradients and the logged losses are summed over the ranks
    before the step, and only rank 0 writes the checkpoint and shows the bar.
    """
    ctx = current_dist() if dist is None else dist
    prec = precision or Precision(torch.device("cpu"), False)
    params = [q for group in optimizer.param_groups for q in group["params"]]
    ckpt_path = Path(ckpt_path)
    hist = StageHistory(stage)
    start = 0
    if ckpt_path.is_file():
        state = load_torch(ckpt_path)
        for name, m in modules.items():
            m.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        if prec.scaler is not None and state.get("scaler"):
            prec.scaler.load_state_dict(state["scaler"])
        hist.records = json.loads(state["history"])
        hist.seconds = float(state["seconds"])

    def save(step: int) -> None:
        if not ctx.is_main:
            barrier(ctx)  # every rank reaches each checkpoint; the others wait until rank 0 has written it
            return
        save_torch(
            ckpt_path,
            {
                "stage": stage,
                "step": step,
                "modules": {n: m.state_dict() for n, m in modules.items()},
                "optimizer": optimizer.state_dict(),
                "history": json.dumps(hist.records),
                "seconds": hist.seconds,
                "extra": extra or {},
                "scaler": prec.scaler.state_dict() if prec.scaler is not None else {},
            },
        )
        barrier(ctx)

    if ctx.active:  # every rank must resume from the same checkpoint (the run folder is shared)
        starts = all_reduce_sum({f"r{r}": float(start if r == ctx.rank else 0) for r in range(ctx.world)}, ctx)
        if len(set(starts.values())) > 1:
            raise DistError(f"{stage}: the ranks resumed from different steps ({', '.join(f'{k}: {int(v)}' for k, v in sorted(starts.items()))}); "
                            f"every rank must see the same run folder ({ckpt_path.parent})")
    if start >= n_steps:
        return hist
    for m in modules.values():
        m.train()
    bar = tqdm(total=n_steps, initial=start, desc=stage, disable=not progress or not ctx.is_main, leave=False)
    done_here = 0
    t0 = time.perf_counter()
    for step in range(start, n_steps):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = float(lr_at(step))
        with prec.autocast():
            losses = step_fn(step)
        optimizer.zero_grad(set_to_none=True)
        prec.backward(losses["loss"].float(), optimizer, before_step=lambda: all_reduce_grads(params, ctx))
        rec = all_reduce_sum({k: float(v.detach()) for k, v in losses.items()}, ctx)
        if not all(np.isfinite(list(rec.values()))):
            raise GlanceError(f"{stage}: non-finite loss at step {step}: {rec}")
        hist.records.append(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{rec['loss']:.4f}")
        done_here += 1
        last = step + 1 == n_steps
        if (step + 1) % every == 0 or last or (stop_after is not None and done_here >= stop_after):
            hist.seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            save(step + 1)
        if stop_after is not None and done_here >= stop_after:
            break
    bar.close()
    for m in modules.values():
        m.eval()
    return hist


def crop_patches(images: torch.Tensor, idx: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, p: int) -> torch.Tensor:
    """Gather patches ``images[idx, :, top:top+p, left:left+p]`` for a batch, shape (B, C, p, p)."""
    ar = torch.arange(p, device=images.device)
    rows = (tops[:, None] + ar)[:, :, None]  # B,p,1
    cols = (lefts[:, None] + ar)[:, None, :]  # B,1,p
    out = images[idx[:, None, None], :, rows, cols]  # B,p,p,C
    return out.permute(0, 3, 1, 2).contiguous()


def _check_batch(batch: int, ctx: DistContext, stage: str) -> None:
    """Every rank needs at least one sample of the global batch."""
    if batch < ctx.world:
        raise DistError(f"{stage}: a global batch of {batch} cannot be shared by {ctx.world} ranks; use fewer "
                        f"ranks or a larger batch_size")


# --------------------------------------------------------------------------------------------
# Stages 1-2: Local-Net distillation
# --------------------------------------------------------------------------------------------


def local_batch(seed: int, stage: str, step: int, n: int, batch: int) -> torch.Tensor:
    """The indices of the ``batch`` cached patches (out of ``n``) that step ``step`` of a Local-Net stage
    (``"pretrain"`` or ``"finetune"``) trains on: drawn with replacement from the step's own generator
    (:func:`step_generators`), so that a resumed stage, or a loop written by hand, draws the same batches.

    Taught in :doc:`/notebooks/01_local_net`, whose visible Eq. 1-3 loop calls it and is checked against
    :meth:`LocalTrainer.train`."""
    g, _ = step_generators(seed, stage, step)
    return torch.randint(n, (batch,), generator=g)


class LocalTrainer:
    """Distils a Local-Net from cached teacher features (Eq. 1-3).

    Teacher features are standardised per dimension with the mean and standard deviation of the
    pre-training targets (as in Uninformed Students), so that the decoder regresses unit-scale
    targets.  The statistics are kept in the checkpoint and reused for fine-tuning.
    """

    def __init__(self, preset: Preset, teacher_dim: int, device: str | torch.device | None = "cpu") -> None:
        self.preset = preset
        self.device = resolve_device(device)
        self.local_net = LocalNet(patch_size=preset.patch_size, dim=preset.descriptor_dim).to(self.device)
        self.decoder = Decoder(preset.descriptor_dim, teacher_dim).to(self.device)
        self.mean = torch.zeros(teacher_dim)
        self.std = torch.ones(teacher_dim)
        self.source: dict[str, Any] = {"kind": "distilled here", "steps": preset.pretrain_steps}

    def set_stats(self, targets: torch.Tensor) -> None:
        """Per-dimension mean and standard deviation of the teacher targets.

        The standard deviation is floored at 5 % of its root-mean-square over the dimensions: a teacher
        dimension that is (nearly)
        constant on the pre-training patches would otherwise be divided by ~0 and explode on the
        fine-tuning patches, where it varies.
        """
        self.mean = targets.mean(0)
        std = targets.std(0)
        self.std = std.clamp_min(max(1e-6, 0.05 * float(std.pow(2).mean().sqrt())))

    def train(
        self,
        stage: str,
        patches: torch.Tensor,
        targets: torch.Tensor,
        steps: int,
        ckpt: Path,
        stop_after: int | None = None,
        progress: bool = True,
        lr_at: Callable[[int], float] | None = None,
    ) -> StageHistory:
        """Minimise Eq. 3 for ``steps`` steps (resuming from ``ckpt``).

        ``lr_at(step)``, when given, sets the learning rate of each step (a schedule that is a pure
        function of the step, so resuming stays exact); otherwise ``preset.lr`` is used throughout.
        """
        p = self.preset
        params = list(self.local_net.parameters()) + list(self.decoder.parameters())
        opt = torch.optim.Adam(params, lr=p.lr, weight_decay=p.weight_decay)
        dev = self.device
        tn = pin((targets.cpu() - self.mean.cpu()) / self.std.cpu(), dev)
        patches = pin(patches.cpu(), dev)
        n = len(patches)

        ctx = current_dist()
        B = min(p.batch_size, n)
        _check_batch(B, ctx, stage)

        def step_fn(step: int) -> dict[str, torch.Tensor]:
            idx = local_batch(p.seed, stage, step, n, B)[shard(B, ctx)]  # this rank's share of the global batch
            z = self.local_net(to_device(patches[idx], dev, torch.float32))
            pred = self.decoder(z)
            # Eq. 1 averaged over dimensions, as this rank's share of the batch mean
            lk = share_of_mean((pred - to_device(tn[idx], dev)).pow(2).mean(1), B)
            # Eq. 2 is a correlation over the whole batch: computed on the gathered batch, 1/world per rank
            lc = compactness_loss(gather_rows(z, B, ctx)) / ctx.world
            total = p.lambda_k * lk + p.lambda_c * lc
            return {"loss": total, "distillation": lk.detach(), "compactness": lc.detach()}

        return run_stage(
            stage,
            {"local_net": self.local_net, "decoder": self.decoder},
            opt,
            step_fn,
            steps,
            ckpt,
            p.checkpoint_every,
            stop_after=stop_after,
            progress=progress,
            precision=Precision(dev, p.mixed_precision),
            lr_at=lr_at,
        )

    def save(self, path: Path) -> None:
        save_torch(
            path,
            {
                "local_net": self.local_net.state_dict(),
                "decoder": self.decoder.state_dict(),
                "mean": self.mean,
                "std": self.std,
            },
        )

    def load(self, path: Path) -> None:
        self.load_state(load_torch(path))

    def load_state(self, s: dict[str, Any]) -> None:
        """Networks and teacher statistics from a dict as :meth:`save` writes it (or the shipped weights)."""
        self.local_net.load_state_dict(s["local_net"])
        self.decoder.load_state_dict(s["decoder"])
        self.mean, self.std = s["mean"].cpu(), s["std"].cpu()


def _teacher_targets(teacher: nn.Module, patches: torch.Tensor, progress: bool,
                     mixed_precision: bool = False) -> torch.Tensor:
    from ..models.teachers import teacher_features

    return teacher_features(teacher, patches, progress=progress, mixed_precision=mixed_precision)


def pretrain_key(preset: Preset, corpus_folder: str | Path | None = None) -> str:
    """Short hash of everything that determines the pre-trained Local-Net (so a changed preset
    never silently reuses a stale pre-training)."""
    fields = ("patch_size", "descriptor_dim", "batch_size", "lr", "weight_decay", "seed", "lambda_k", "lambda_c",
              "teacher_input_size", "pretrain_patches", "pretrain_steps")
    d = {f: getattr(preset, f) for f in fields}
    d["corpus"] = str(corpus_folder) if corpus_folder else "bundled-photos-v2"
    return short_hash(d)


def pretrain_local(
    preset: Preset,
    teacher: str = "auto",
    out_dir: str | Path | None = None,
    corpus_folder: str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    device: str | torch.device | None = "cpu",
) -> tuple[LocalTrainer, StageHistory, str]:
    """Stage 1: distil the Local-Net on natural-image patches; returns (trainer, history, teacher name).

    With ``preset.pretrained == "shipped"`` (the ``cpu`` preset's default) and weights in the package
    that match the patch size, descriptor dimension, teacher and teacher input size
    (:mod:`glance_lite.models.shipped`), those are loaded instead and nothing is trained (unless a
    ``corpus_folder`` is given: then the user asked for a distillation on their own images); the
    history is their learning curve.  ``trainer.source`` says which Local-Net was used.  Otherwise
    the result is stored in ``out_dir`` (default ``data/runs/pretrain-<preset>-<teacher>``) and
    reused by every later call with the same preset and teacher.
    """
    from ..data.corpus import natural_images, sample_patches
    from ..common.paths import runs_dir
    from ..models.teachers import load_teacher

    t = load_teacher(preset.teacher if teacher == "auto" and preset.teacher != "auto" else teacher,
                     input_size=preset.teacher_input_size, verbose=progress)
    trainer = LocalTrainer(preset, t.dim, device)
    t.to(trainer.device)
    if preset.pretrained == "shipped" and corpus_folder is None:
        from ..models.shipped import find_shipped, learning_curve, load_shipped

        found = find_shipped(preset.patch_size, preset.descriptor_dim, t.name, preset.teacher_input_size)
        if found is not None:
            state, prov = load_shipped(found)
            trainer.load_state(state)
            trainer.source = {"kind": "shipped", "file": found.name, "sha256": prov["sha256"],
                              "steps": prov.get("total_steps", prov.get("steps")), "heldout": prov.get("heldout")}
            records = [{"loss": c["train_distillation"] + c["train_compactness"], "distillation": c["train_distillation"],
                        "compactness": c["train_compactness"], "heldout_distillation": c["heldout_distillation"],
                        "heldout_compactness": c["heldout_compactness"], "step": c["step"]}
                       for c in learning_curve(prov)]  # one record per evaluation of the long run(s)
            hist = StageHistory("pretrain", records, float(prov.get("seconds", 0.0)))
            if progress:
                print(f"Local-Net: shipped weights {found.name} ({prov.get('total_steps', prov.get('steps'))} distillation steps)")
            return trainer, hist, t.name
        if progress:
            print(f"Local-Net: no shipped weights for p={preset.patch_size}, {t.name} at "
                  f"{preset.teacher_input_size}px; distilling {preset.pretrain_steps} steps here")
    out = Path(out_dir) if out_dir else runs_dir() / f"pretrain-{preset.name}-{t.name}-{pretrain_key(preset, corpus_folder)}"
    out.mkdir(parents=True, exist_ok=True)
    final = out / "local_pretrained.pt"
    if final.is_file():
        trainer.load(final)
        hist = StageHistory("pretrain")
        hist_path = out / "history.json"
        if hist_path.is_file():
            d = json.loads(hist_path.read_text())
            hist.records, hist.seconds = d["records"], d["seconds"]
        return trainer, hist, t.name

    def make() -> dict[str, torch.Tensor]:
        imgs = natural_images(corpus_folder)
        pt = sample_patches(imgs, preset.pretrain_patches, preset.patch_size, seed=preset.seed)
        return {"patches": (pt * 255).round().to(torch.uint8), "targets": _teacher_targets(t, pt, progress, preset.mixed_precision)}

    cache = cached(out / "cache.pt", make)  # data-parallel: rank 0 makes it, the others read it
    patches = cache["patches"].float() / 255
    trainer.set_stats(cache["targets"])
    hist = trainer.train("pretrain", patches, cache["targets"], preset.pretrain_steps,
                         out / "checkpoint.pt", stop_after=stop_after, progress=progress)
    if len(hist.records) >= preset.pretrain_steps:
        def write() -> None:
            trainer.save(final)
            atomic_write_json(out / "history.json", hist.to_dict())

        on_main(write)
    return trainer, hist, t.name


def _random_crops(images: torch.Tensor, n: int, p: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    N, _, H, W = images.shape
    idx = torch.randint(N, (n,), generator=g)
    tops = torch.randint(H - p + 1, (n,), generator=g)
    lefts = torch.randint(W - p + 1, (n,), generator=g)
    return crop_patches(images, idx, tops, lefts, p)


def finetune_local(
    trainer: LocalTrainer,
    train_images: torch.Tensor,
    teacher: nn.Module,
    run_dir: str | Path,
    progress: bool = True,
    stop_after: int | None = None,
) -> StageHistory:
    """Stage 2: fine-tune the Local-Net on patches of the category's good images (same loss)."""
    p = trainer.preset
    run_dir = Path(run_dir)

    def make() -> dict[str, torch.Tensor]:
        pt = _random_crops(train_images, p.finetune_patches, p.patch_size, p.seed + 1)
        return {"patches": (pt * 255).round().to(torch.uint8), "targets": _teacher_targets(teacher, pt, progress, p.mixed_precision)}

    cache = cached(run_dir / "checkpoints" / "finetune_cache.pt", make)
    return trainer.train("finetune", cache["patches"].float() / 255, cache["targets"], p.finetune_steps,
                         run_dir / "checkpoints" / "finetune.pt", stop_after=stop_after, progress=progress)


# --------------------------------------------------------------------------------------------
# Stage 3: Global-Net + DAD head (Eq. 10)
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def grid_local_cache(model: GlanceModel, images: torch.Tensor, progress: bool = True,
                     chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Z_l of every training patch on the scoring grid with step J, float16, with its coordinates.

    Returns ``(cache (N, n, gh, gw), tops (gh,), lefts (gw,))``.  The grid is the Local-Net's stride-J
    lattice (J = 4 for p = 33, 1 for p = 17), where one fully-convolutional pass computes Z_l for all
    patches at once, plus the last row and column of patches that touch the bottom and right borders
    (:meth:`glance_lite.models.local_net.LocalNet.on_grid`). These are exactly the positions the score maps
    use, so the Global-Net is trained on every hole position it is later asked about. (Without that
    last row and column, a 128-pixel image with 33-pixel patches is scored at left = 95 but trained
    only up to 92. A hole touching the border is then new to the Global-Net, and its IAD error there
    dominated the bottle maps.)

    *Deviation:* the paper crops patches at any position; we draw them from this grid so that Z_l is
    computed once per image instead of once per step, which makes joint training several times faster
    on a CPU.
    """
    outs, tops, lefts = [], None, None
    dev = module_device(model.local_net)
    for s in tqdm(range(0, len(images), chunk), desc="local features", disable=not progress, leave=False):
        z, tops, lefts = model.local_net.on_grid(to_device(images[s : s + chunk], dev))
        outs.append(z.half().cpu())
    return torch.cat(outs), tops, lefts


def _finished(ckpt: Path, n_steps: int) -> bool:
    """Whether the checkpoint ``ckpt`` holds a stage that has run all ``n_steps`` steps."""
    return ckpt.is_file() and int(load_torch(ckpt)["step"]) >= n_steps


@dataclass
class GlobalBatch:
    """The random draws of one step of the joint stage (:func:`draw_global_batch`), B samples.

    ``idx`` is the training image of each sample, ``(gi, gj)`` the grid cell of its hole and ``(tops,
    lefts)`` the hole's top-left pixel.  ``neg`` marks the DAD negatives (label 1 in Eq. 9), each
    sample with probability 1/2, whose Z* is the Local-Net feature of a stained copy of the patch.
    ``rng`` is this step's numpy generator, which draws the stains (:func:`glance_lite.data.stains.add_stain`).
    """

    idx: torch.Tensor
    gi: torch.Tensor
    gj: torch.Tensor
    tops: torch.Tensor
    lefts: torch.Tensor
    neg: torch.Tensor
    rng: np.random.Generator


def draw_global_batch(preset: Preset, step: int, n_images: int, pos_y: torch.Tensor,
                      pos_x: torch.Tensor) -> GlobalBatch:
    """Step ``step``'s ``batch_size`` samples of the joint stage, each a random image with one hole on
    the scoring grid ``pos_y x pos_x`` (:func:`grid_local_cache`), and its DAD negatives, from
    :func:`step_generators`.  A pure function of ``(preset, step)`` and the grid, so a resumed run
    draws what an uninterrupted one would.  Taught in chapter 03 (:doc:`/notebooks/03_heads_and_training`).
    """
    p, N, B = preset, int(n_images), preset.batch_size
    g, rng = step_generators(p.seed, "global", step)
    idx = torch.randint(N, (B,), generator=g)
    gi = torch.randint(len(pos_y), (B,), generator=g)
    gj = torch.randint(len(pos_x), (B,), generator=g)
    neg = torch.rand(B, generator=g) < 0.5
    return GlobalBatch(idx, gi, gj, pos_y[gi], pos_x[gj], neg, rng)


def global_step(
    model: GlanceModel,
    train_images: torch.Tensor,
    local_cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    step: int,
    dist: DistContext | None = None,
) -> dict[str, torch.Tensor]:
    """One step of the joint stage: the losses of Eq. 7, 9 and 10 on step ``step``'s batch.

    ``l = l_IAD + lambda_t * l_DAD`` (Eq. 10), with ``l_IAD = (1/n) ||Z_l - Z_g||^2`` (Eq. 7) and
    ``l_DAD`` the cross-entropy of the DAD head C on ``[Z*, Z_g]`` (Eq. 9), both averaged over the
    batch of :func:`draw_global_batch`.  Z_l is looked up in ``local_cache`` (the frozen Local-Net on
    the grid, :func:`grid_local_cache`), Z_g is the Global-Net's feature of the image with the patch
    masked out (Eq. 6), and Z* is Z_l, or for a negative the Local-Net feature of a stained copy of
    the patch.

    Returns ``{"loss", "iad", "dad"}``; ``"loss"`` carries the gradient of the Global-Net and the
    DAD head (nothing reaches the Local-Net).  :func:`train_global` calls it once per step; the caller
    back-propagates and steps the optimiser.  Data-parallel (``dist``, default
    :func:`glance_lite.common.distributed.current`): this rank's share of the losses.

    Taught in chapter 03 (:doc:`/notebooks/03_heads_and_training`), where the loss arithmetic of
    Eq. 7, 9 and 10 is written out in a plain loop and checked against :func:`train_global`.
    """
    p = model.preset
    ctx = current_dist() if dist is None else dist
    cache, pos_y, pos_x = local_cache
    dev = module_device(model.global_net)
    N, _, H, W = train_images.shape
    P = p.patch_size
    b = draw_global_batch(p, step, N, pos_y, pos_x)
    idx, gi, gj, tops, lefts, neg = b.idx, b.gi, b.gj, b.tops, b.lefts, b.neg
    B = len(idx)
    sh = shard(B, ctx)  # this rank's samples of the global batch
    loc = torch.arange(sh.start, sh.stop)
    with torch.no_grad():
        z_l = to_device(cache[idx[loc], :, gi[loc], gj[loc]], dev, torch.float32)
        z_star = z_l.clone()
        neg_loc = neg[loc]
        if neg_loc.any():
            # the stains of the whole global batch are drawn (on the CPU, device-free), so that
            # every rank draws what one process would; each rank keeps its own
            clean = crop_patches(train_images, idx[neg], tops[neg], lefts[neg], P)
            stained, _ = add_stain(clean, b.rng, min_axis=p.stain_min_axis)
            which = (torch.cumsum(neg.long(), 0) - 1)[loc][neg_loc]
            z_star[neg_loc.to(dev)] = model.local_net(to_device(stained[which], dev)).to(z_star.dtype)
    z_g = model.global_net(to_device(train_images[idx[loc]], dev),
                           hole_mask((H, W), tops[loc], lefts[loc], P, device=dev))
    l_iad = share_of_mean(iad_score(z_l, z_g), B)
    l_dad = share_of_mean(dad_loss(model.dad, z_star, z_g, neg_loc.float().to(dev), reduction="none"), B)
    return {"loss": l_iad + p.lambda_t * l_dad, "iad": l_iad, "dad": l_dad}


def train_global(
    model: GlanceModel,
    train_images: torch.Tensor,
    run_dir: str | Path,
    progress: bool = True,
    stop_after: int | None = None,
    local_cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> StageHistory:
    """Stage 3: train Global-Net and DAD head with ``l = l_IAD + lambda_t * l_DAD`` (Eq. 10).

    Each step draws B random (image, patch position) pairs, positions on the scoring grid with the
    Local-Net's stride (see :func:`grid_local_cache`).  Z_l is the frozen Local-Net feature of
    the clean patch, and Z_g the Global-Net feature of the image with the patch masked out (Eq. 6).
    With probability 1/2 a sample's DAD input Z* is the feature of the patch with a random stain
    (label 1), otherwise Z_l (label 0); see :mod:`glance_lite.models.heads` for the label convention.

    Adam runs at the preset's constant ``lr``, as the re-implementation does.  Each step is one call of
    :func:`global_step` (its draws: :func:`draw_global_batch`), back-propagated by :func:`run_stage`;
    chapter 03 writes the same loop out by hand.
    """
    p = model.preset
    model.freeze_local()
    run_dir = Path(run_dir)
    dev = module_device(model.global_net)
    train_images = pin(train_images.cpu(), dev)
    params = list(model.global_net.parameters()) + list(model.dad.parameters())
    opt = torch.optim.Adam(params, lr=p.lr, weight_decay=p.weight_decay)

    ckpt = run_dir / "checkpoints" / "global.pt"
    if local_cache is None and not _finished(ckpt, p.global_steps):  # a finished stage needs no features
        local_cache = grid_local_cache(model, train_images, progress)
    cache, pos_y, pos_x = local_cache if local_cache is not None else (None, None, None)
    if cache is not None:
        cache = pin(cache.cpu(), dev)

    ctx = current_dist()
    _check_batch(p.batch_size, ctx, "global")

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        return global_step(model, train_images, (cache, pos_y, pos_x), step, dist=ctx)

    return run_stage(
        "global",
        {"global_net": model.global_net, "dad": model.dad},
        opt,
        step_fn,
        p.global_steps,
        ckpt,
        p.checkpoint_every,
        stop_after=stop_after,
        progress=progress,
        precision=Precision(dev, p.mixed_precision),
    )


# --------------------------------------------------------------------------------------------
# The whole fit
# --------------------------------------------------------------------------------------------


def git_commit() -> str:
    """The current git commit of the repository (``unknown`` outside a checkout)."""
    from ..common.paths import repo_root

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_root(),
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


def load_train_images(category: Any, preset: Preset) -> torch.Tensor:
    """All (or ``preset.max_train_images``) good training images as one tensor (N, 3, S, S)."""
    from ..data.mvtec import MVTecDataset

    ds = MVTecDataset(category, "train", preset.image_size, max_images=preset.max_train_images)
    if len(ds) == 0:
        raise GlanceError(f"{category.root}: no training images")
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


def spread_indices(n: int, k: int) -> torch.Tensor:
    """``min(k, n)`` indices into ``range(n)``, spread evenly from the first to the last (the training
    images a run fits its scoring statistics on, :func:`glance_lite.evaluate.evaluation.score_stats`)."""
    k = min(k, n)
    return torch.linspace(0, n - 1, k).round().long().unique() if k > 0 else torch.zeros(0, dtype=torch.long)


def fit(
    data_root: str | Path,
    category: str,
    out: str | Path,
    preset: Preset,
    teacher: str = "auto",
    progress: bool = True,
    pretrain_dir: str | Path | None = None,
    corpus_folder: str | Path | None = None,
    device: str | torch.device | None = None,
) -> GlanceModel:
    """Train every stage for one category and write a run folder (see :mod:`glance_lite.models.model`).

    ``device`` (default ``GLANCE_DEVICE``, else ``auto``: CUDA when available) is where every stage
    runs (:func:`glance_lite.common.devices.resolve_device`); the run folder is device-free.

    Re-running the same command resumes from the last checkpoint of the unfinished stage.  A preset
    that differs only in evaluation fields (:data:`glance_lite.common.presets.EVALUATION_FIELDS`) resumes the
    same run; ``evaluate_run(..., preset=)`` then scores it with them.
    """
    from ..data.mvtec import find_category
    from ..models.teachers import load_teacher

    out = Path(out)
    dev = resolve_device(device)
    configure(dev)
    cat = find_category(data_root, category)
    cfg_path = out / "config.json"
    old: dict[str, Any] = {}
    if cfg_path.is_file():
        old = json.loads(cfg_path.read_text())
        if (training_fields(Preset.from_dict(old.get("preset", {}))) != training_fields(preset)
                or old.get("category") != category):
            raise GlanceError(f"{out}: holds a run with another preset or category; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    config = {
        "category": category,
        "data_root": str(Path(data_root).resolve()),
        "preset": preset.to_dict(),
        "teacher_requested": teacher,
        "git_commit": git_commit(),
        "hardware": hardware_info(),
        "device": str(dev),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    ctx = current_dist()
    if ctx.active:
        config["ranks"] = ctx.world
    # every rank passes the barrier; rank 0 writes the first config only (a resumed run keeps its own)
    on_main(lambda: cfg_path.is_file() or atomic_write_json(cfg_path, config), ctx)
    torch.manual_seed(preset.seed)
    images = load_train_images(cat, preset)

    trainer, h_pre, tname = pretrain_local(preset, teacher, pretrain_dir, corpus_folder, progress, device=dev)
    was = old.get("local_net_pretrained")
    if was and was.get("sha256") != trainer.source.get("sha256"):  # e.g. a newer glance-lite ships other weights
        raise GlanceError(f"{out}: was fitted from the Local-Net {was.get('file') or was.get('kind')} "
                          f"(sha256 {str(was.get('sha256'))[:12]}...), not from the one this fit would start from "
                          f"({trainer.source.get('file') or trainer.source.get('kind')}, sha256 "
                          f"{str(trainer.source.get('sha256'))[:12]}...); choose another --out")
    if not was:  # record it now, so that an interrupted run is checked on resume too
        config["local_net_pretrained"] = trainer.source
        on_main(lambda: atomic_write_json(cfg_path, {**(json.loads(cfg_path.read_text()) if cfg_path.is_file()
                                                        else config), "local_net_pretrained": trainer.source}), ctx)
    tch = load_teacher(tname, input_size=preset.teacher_input_size, verbose=False).to(dev)
    h_fine = finetune_local(trainer, images, tch, out, progress)

    model = GlanceModel(preset, teacher=tname)
    model.local_net.load_state_dict(trainer.local_net.state_dict())
    model.freeze_local()
    # the Global-Net must start from the same weights whether or not the run was resumed (and on
    # every device: initialised on the CPU, then moved)
    torch.manual_seed(preset.seed + 3)
    model.global_net = type(model.global_net).from_preset(preset)
    model.dad = type(model.dad)(preset.descriptor_dim, preset.dad_hidden)
    model.to(dev)
    h_glob = train_global(model, images, out, progress)
    hist = {h.stage: h.to_dict() for h in (h_pre, h_fine, h_glob)}
    config.update(
        teacher=tname,
        local_net_pretrained=trainer.source,
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        fit_seconds_this_call=round(time.perf_counter() - t_start, 1),
        stage_seconds={h.stage: round(h.seconds, 1) for h in (h_pre, h_fine, h_glob)},
        final_losses={h.stage: h.final() for h in (h_pre, h_fine, h_glob)},
    )

    def write() -> None:  # rank 0 only under torchrun
        model.save(out)
        atomic_write_json(out / "history.json", hist)
        atomic_write_json(cfg_path, config)
        try:
            from ..common.figures import plot_history

            plot_history(hist, out / "losses.png")
        except Exception:  # noqa: BLE001 - a figure must never lose a finished run
            pass

    on_main(write, ctx)
    for size in preset.extra_patch_sizes:  # multi-scale: one more complete run per patch size
        fit(data_root, category, scale_dir(out, size), scale_preset(preset, size), teacher=teacher,
            progress=progress, pretrain_dir=pretrain_dir, corpus_folder=corpus_folder, device=dev)
    return model


def scale_preset(preset: Preset, size: int) -> Preset:
    """The single-scale preset of one extra patch size of a multi-scale preset."""
    return preset.replace(patch_size=size, extra_patch_sizes=())


def scale_dir(run_dir: str | Path, size: int) -> Path:
    """Where a multi-scale run keeps the complete run of one extra patch size."""
    return Path(run_dir) / "scales" / f"p{size}"
