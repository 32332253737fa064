"""The long Local-Net distillation that ships with the package: ``glance-lite pretrain``.

The paper pre-trains the Local-Net once on ImageNet patches (Eq. 1-3, Sec. 4.2) and fine-tunes it
per category.  The presets' own stage 1 (:func:`glance_lite.train.training.pretrain_local`) is short, to
stay inside a laptop budget; this module runs the long version once and writes weights that
:mod:`glance_lite.models.shipped` loads for every later ``fit``:

1. **Corpus.**  The bundled photographs (:func:`glance_lite.data.corpus.natural_images`) or a folder of
   the user's.  Whole photographs are held out (every ``heldout_every``-th, at least two) so that the
   reported loss on *held-out natural patches* measures generalisation, not memorisation.
2. **Patches.**  ``n_patches`` crops at six scales (0.35-2x), then the eight square symmetries, grey
   copies and colour jitter (:func:`glance_lite.data.corpus.augment_patches`).  Their teacher features are
   computed in chunks, each written atomically, so an interrupted run resumes where it stopped.
3. **Training.**  Eq. 3 with Adam, a linear warm-up and a cosine decay of the learning rate to a
   tenth (a pure function of the step, so resuming is exact), checkpoints every
   ``preset.checkpoint_every`` steps.  The held-out losses are measured every ``eval_every`` steps:
   that is the learning curve in the provenance file.
4. **Output.**  ``<out>/<name>.pt`` (float16 weights, teacher statistics) and ``<out>/<name>.json``
   (provenance: the command, steps, corpus, final training and held-out l_k and l_c, the curve, the
   git commit, hardware, seconds, size and SHA-256).  ``--ship`` copies both into
   ``glance_lite/weights/``.

Deviation: the paper's corpus is ImageNet; ours is a couple of dozen photographs shipped in
installed wheels, made varied by augmentation (see :mod:`glance_lite.data.corpus`).

Defined in :doc:`/notebooks/01_local_net` and :doc:`/book/cli`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..common.fileio import GlanceError, atomic_write_bytes, atomic_write_json, load_torch, save_torch
from ..models.local_net import local_loss
from ..common.presets import Preset, hardware_info
from ..models.shipped import WEIGHTS_DIR, half_state, sha256_file, weights_name
from .schedule import lr_schedule
from .training import LocalTrainer, git_commit

__all__ = ["DistilSettings", "lr_schedule", "split_corpus", "distil", "heldout_losses", "distillation_floor"]

SCALES = (0.35, 0.5, 0.7, 1.0, 1.4, 2.0)
"""Rescaling factors of the photographs before cropping (0.35: a wide view, 2: a close-up)."""


class DistilSettings(dict):
    """The knobs of one long distillation (a dict, so that it goes into the provenance as is)."""

    def __init__(self, steps: int = 5_000, n_patches: int = 60_000, batch_size: int = 64, lr: float = 1e-3,
                 warmup: int = 500, heldout_every: int = 8, n_heldout: int = 2_000, eval_every: int = 1_000,
                 chunk: int = 5_000, seed: int = 0, init: str | None = None,
                 extra_corpus: str | None = None) -> None:
        super().__init__(steps=int(steps), n_patches=int(n_patches), batch_size=int(batch_size), lr=float(lr),
                         warmup=int(warmup), heldout_every=int(heldout_every), n_heldout=int(n_heldout),
                         eval_every=int(eval_every), chunk=int(chunk), seed=int(seed))
        if init is not None:  # only then, so that older provenance files still compare equal
            self["init"] = str(init)
        if extra_corpus is not None:  # the digest of the extra photographs (see extra_corpus_digest)
            self["extra_corpus"] = str(extra_corpus)
        if min(self["steps"], self["n_patches"], self["batch_size"], self["eval_every"], self["chunk"]) < 1:
            raise GlanceError(f"distillation settings must be positive: {dict(self)}")
        if self["heldout_every"] < 2:
            raise GlanceError("heldout_every must be at least 2 (one photograph in heldout_every is held out)")


def split_corpus(names: list[str], heldout_every: int) -> tuple[list[int], list[int]]:
    """Indices of the training and the held-out photographs: every ``heldout_every``-th photograph
    (starting at the 4th) is held out, and at least two are."""
    held = list(range(3, len(names), heldout_every))
    if len(held) < 2:
        held = [i for i in (len(names) - 1, len(names) - 2) if i >= 0][:2]
    if len(held) < 2 or len(held) >= len(names):
        raise GlanceError(f"the corpus has {len(names)} photographs; at least 3 are needed to hold two out")
    train = [i for i in range(len(names)) if i not in held]
    return train, held


def _patches(images: list[np.ndarray], n: int, p: int, seed: int) -> torch.Tensor:
    from ..data.corpus import augment_patches, sample_patches

    return augment_patches(sample_patches(images, n, p, seed=seed, scales=SCALES), seed=seed + 1)


def _teacher_chunks(teacher: torch.nn.Module, images: list[np.ndarray], n: int, p: int, seed: int, chunk: int,
                    folder: Path, tag: str, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` augmented patches (uint8) and their teacher features (float16), made and cached chunk by chunk."""
    from ..models.teachers import teacher_features

    pats, feats = [], []
    starts = list(range(0, n, chunk))
    for k, s in enumerate(tqdm(starts, desc=f"{tag} teacher features", disable=not progress)):
        f = folder / f"{tag}-{k:04d}.pt"
        if f.is_file():
            d = load_torch(f)
        else:
            m = min(chunk, n - s)
            pt = _patches(images, m, p, seed * 100_003 + k)
            d = {"patches": (pt * 255).round().to(torch.uint8),
                 "targets": teacher_features(teacher, pt, progress=False).half()}
            save_torch(f, d)
        pats.append(d["patches"])
        feats.append(d["targets"])
    return torch.cat(pats), torch.cat(feats).float()


@torch.no_grad()
def heldout_losses(trainer: LocalTrainer, patches: torch.Tensor, targets: torch.Tensor, batch: int = 500) -> dict[str, float]:
    """Mean l_k (Eq. 1) and l_c (Eq. 2) of the trainer's networks on held-out patches (uint8 or float)."""
    was = trainer.local_net.training, trainer.decoder.training
    trainer.local_net.eval()
    trainer.decoder.eval()
    tn = (targets - trainer.mean) / trainer.std
    dev = trainer.device
    lk, lc, n = 0.0, 0.0, 0
    for s in range(0, len(patches), batch):
        x = patches[s : s + batch].to(dev)
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        z = trainer.local_net(x)
        _, parts = local_loss(trainer.decoder(z), tn[s : s + batch].to(dev), z, 1.0, 1.0)
        lk += float(parts["distillation"]) * len(x)
        lc += float(parts["compactness"]) * len(x)
        n += len(x)
    trainer.local_net.train(was[0])
    trainer.decoder.train(was[1])
    return {"distillation": lk / n, "compactness": lc / n}


FLOOR_DIMS = (16, 32, 64, 128, 256, 512)
"""Descriptor dimensions at which :func:`distillation_floor` is reported in the provenance."""


@torch.no_grad()
def distillation_floor(train_targets: torch.Tensor, heldout_targets: torch.Tensor, mean: torch.Tensor,
                       std: torch.Tensor, dims: tuple[int, ...] = FLOOR_DIMS) -> dict[str, Any]:
    """The lowest l_k (Eq. 1) that *any* ``n``-d descriptor could reach with Eq. 1's linear decoder.

    Eq. 1 regresses the (standardised) teacher feature with a linear decoder ``D(z) = W z + b`` from an
    ``n``-d descriptor ``z``.  Whatever the Local-Net computes, ``W z + b`` lies in an ``n``-d affine
    subspace, and the subspace that leaves the least mean squared error on a set of targets is spanned
    by their top ``n`` principal components (Eckart-Young).  So, per dimension ``n``:

    * ``train``: the variance of the training targets outside their top ``n`` components, divided by
      the number of teacher dimensions -- a hard lower bound on the training l_k;
    * ``heldout``: the mean squared residual of the held-out targets after projecting them on those
      same components -- what a perfect ``n``-d Local-Net with that decoder would score on held-out
      patches (an estimate, not a bound: another subspace could do slightly better there);
    * ``heldout_mean_predictor``: l_k on held-out patches of predicting the training mean for every
      patch (below 1 when the held-out photographs vary less than the training ones).

    Targets are standardised with ``mean`` and ``std`` (the trainer's statistics), as in Eq. 1.
    Taught in :doc:`/notebooks/01_local_net`.
    """
    tr = ((train_targets.double() - mean.double()) / std.double())
    ho = ((heldout_targets.double() - mean.double()) / std.double())
    centre = tr.mean(0)
    tr, ho = tr - centre, ho - centre
    d = tr.shape[1]
    evals, evecs = torch.linalg.eigh(tr.T @ tr / len(tr))  # ascending
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    total = float(evals.sum())
    rows_tr, rows_ho = [], []
    dims = tuple(sorted({min(int(n), d) for n in dims}))  # a narrow teacher (e.g. 152-d) caps the widths once
    for n in dims:
        v = evecs[:, :n]
        rows_tr.append(float(evals[n:].sum()) / d)
        rows_ho.append(float((ho - ho @ v @ v.T).pow(2).mean()))
    return {"dims": list(dims), "train": rows_tr, "heldout": rows_ho,
            "train_explained": [1 - r * d / total for r in rows_tr],
            "heldout_mean_predictor": float(ho.pow(2).mean()),
            "n_train": int(len(tr)), "n_heldout": int(len(ho))}


def distil(
    preset: Preset,
    out: str | Path,
    settings: DistilSettings | None = None,
    teacher: str = "auto",
    corpus_folder: str | Path | None = None,
    ship: bool = False,
    progress: bool = True,
    command: str | None = None,
    device: str | torch.device | None = None,
    init: str | Path | None = None,
    extra_corpus: str | Path | None = None,
) -> dict[str, Any]:
    """Run the long distillation for ``preset``'s patch size, dimension and teacher; return the provenance.

    Resumable: re-running the same call picks up the cached teacher-feature chunks, the last
    checkpoint and the learning curve.  ``ship=True`` copies the result into the package.

    ``init`` continues an earlier distillation instead of starting from random weights: ``"shipped"``
    (the package's weights for these settings) or the path of a weights file that
    :func:`glance_lite.models.shipped.load_shipped` accepts (checksum verified).  Its Local-Net, decoder
    and teacher statistics are the starting point; the learning-rate schedule starts again (a warm
    restart), and the provenance records the earlier run (``init``: name, SHA-256, steps, curve) and
    the steps of both (``total_steps``).

    ``extra_corpus`` is a folder of further photographs that join the *training* split only: the
    held-out photographs stay those of ``corpus_folder`` (by default the bundled ones), so that held-out
    l_k compares like with like between a corpus and the same corpus with more photographs.  Its digest
    (:func:`extra_corpus_digest`) enters the settings, so a resumed run cannot mix two folders.
    """
    from ..models.teachers import load_teacher

    st = settings or DistilSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_name = preset.teacher if teacher == "auto" and preset.teacher != "auto" else teacher
    from ..common.devices import resolve_device

    dev = resolve_device(device)
    tch = load_teacher(t_name, input_size=preset.teacher_input_size, verbose=progress).to(dev)
    name = weights_name(preset.patch_size, preset.descriptor_dim, tch.name, preset.teacher_input_size)
    run_preset = preset.replace(batch_size=st["batch_size"], lr=st["lr"], seed=st["seed"],
                                checkpoint_every=min(preset.checkpoint_every, st["eval_every"]))
    init_state, init_prov = _init_weights(init, preset, tch.name)
    if init_prov is not None:
        st = DistilSettings(**{**st, "init": init_prov["sha256"]})
    if extra_corpus is not None:
        st = DistilSettings(**{**st, "extra_corpus": extra_corpus_digest(extra_corpus)})
    prov_path, wpath = out / f"{name}.json", out / f"{name}.pt"
    if prov_path.is_file() and wpath.is_file():
        done = json.loads(prov_path.read_text())
        if done.get("settings") == dict(st) and done.get("sha256") == sha256_file(wpath):
            if progress:
                print(f"{wpath}: already distilled with these settings", file=sys.stderr)
            if "floor" not in done:  # provenance written before the floor was measured: add it
                images, names, tr_i, ho_i, _ = _corpus(corpus_folder, extra_corpus, st["heldout_every"])
                _, y_tr = _teacher_chunks(tch, [images[i] for i in tr_i], st["n_patches"], preset.patch_size,
                                          st["seed"], st["chunk"], out / "cache", "train", progress)
                _, y_ho = _teacher_chunks(tch, [images[i] for i in ho_i], st["n_heldout"], preset.patch_size,
                                          st["seed"] + 7, st["chunk"], out / "cache", "heldout", progress)
                raw = load_torch(wpath)
                done["floor"] = distillation_floor(y_tr, y_ho, raw["mean"].float(), raw["std"].float())
                atomic_write_json(prov_path, done)
            if ship:
                _ship(wpath, done)
            return done
    images, names, train_idx, held_idx, n_extra = _corpus(corpus_folder, extra_corpus, st["heldout_every"])
    t0 = time.perf_counter()
    cache = out / "cache"
    p_tr, y_tr = _teacher_chunks(tch, [images[i] for i in train_idx], st["n_patches"], preset.patch_size,
                                 st["seed"], st["chunk"], cache, "train", progress)
    p_ho, y_ho = _teacher_chunks(tch, [images[i] for i in held_idx], st["n_heldout"], preset.patch_size,
                                 st["seed"] + 7, st["chunk"], cache, "heldout", progress)
    feature_seconds = time.perf_counter() - t0

    trainer = LocalTrainer(run_preset, tch.dim, dev)
    if init_state is None:
        trainer.set_stats(y_tr)
    else:  # keep the earlier run's statistics: its decoder regresses targets standardised with them
        trainer.load_state(init_state)
    patches = p_tr.float().div_(255)
    curve_path = out / "curve.json"
    curve: list[dict[str, Any]] = json.loads(curve_path.read_text()) if curve_path.is_file() else []
    ckpt = out / "checkpoint.pt"
    sched = lambda s: lr_schedule(s, st["steps"], st["lr"], st["warmup"])  # noqa: E731
    hist = None
    for end in list(range(st["eval_every"], st["steps"], st["eval_every"])) + [st["steps"]]:
        if curve and curve[-1]["step"] >= end:
            continue
        hist = trainer.train("pretrain", patches, y_tr, end, ckpt, progress=progress, lr_at=sched)
        ho = heldout_losses(trainer, p_ho, y_ho)
        tail = hist.records[-min(len(hist.records), st["eval_every"]):]
        curve.append({"step": end, "train_distillation": float(np.mean([r["distillation"] for r in tail])),
                      "train_compactness": float(np.mean([r["compactness"] for r in tail])),
                      "heldout_distillation": ho["distillation"], "heldout_compactness": ho["compactness"],
                      "seconds": round(hist.seconds, 1)})
        atomic_write_json(curve_path, curve)
        if progress:
            print(f"step {end}: held-out l_k {ho['distillation']:.4f}, l_c {ho['compactness']:.4f}", file=sys.stderr)
    if hist is None:  # everything was already done: reload the final checkpoint
        hist = trainer.train("pretrain", patches, y_tr, st["steps"], ckpt, progress=False, lr_at=sched)
    # what ships is float16: measure the held-out loss of exactly that
    trainer.local_net.load_state_dict({k: v.float() for k, v in half_state(trainer.local_net.state_dict()).items()})
    trainer.decoder.load_state_dict({k: v.float() for k, v in half_state(trainer.decoder.state_dict()).items()})
    final_ho = heldout_losses(trainer, p_ho, y_ho)
    save_torch(wpath, {"local_net": half_state(trainer.local_net.state_dict()),
                       "decoder": half_state(trainer.decoder.state_dict()),
                       "mean": trainer.mean.float(), "std": trainer.std.float()})
    tail = hist.records[-min(len(hist.records), 500):]
    prov = {
        "name": name,
        "command": command or "glance_lite.train.distil.distil(...)",
        "patch_size": preset.patch_size,
        "descriptor_dim": preset.descriptor_dim,
        "teacher": tch.name,
        "teacher_input_size": preset.teacher_input_size,
        "settings": dict(st),
        "steps": st["steps"],
        "total_steps": st["steps"] + (int(init_prov.get("total_steps", init_prov["steps"])) if init_prov else 0),
        "init": None if init_prov is None else {
            "name": init_prov["name"], "sha256": init_prov["sha256"],
            "total_steps": int(init_prov.get("total_steps", init_prov["steps"])),
            "heldout": init_prov.get("heldout"), "curve": init_prov.get("curve", []),
            **({"init": init_prov["init"]} if init_prov.get("init") else {})},
        "lambda_k": preset.lambda_k,
        "lambda_c": preset.lambda_c,
        "weight_decay": preset.weight_decay,
        "corpus": {
            "source": str(corpus_folder) if corpus_folder else "bundled photographs (scikit-image, scikit-learn, matplotlib)",
            **({"extra": {"folder": Path(extra_corpus).name, "digest": st["extra_corpus"],
                          "n_photos": n_extra}} if extra_corpus is not None else {}),
            "train_photos": [names[i] for i in train_idx],
            "heldout_photos": [names[i] for i in held_idx],
            "scales": list(SCALES),
            "augmentation": "8 square symmetries, grey with p=0.2, brightness/contrast/channel gain 1 +- 0.2",
            "n_train_patches": int(len(p_tr)),
            "n_heldout_patches": int(len(p_ho)),
        },
        "final": {"train_distillation": float(np.mean([r["distillation"] for r in tail])),
                  "train_compactness": float(np.mean([r["compactness"] for r in tail]))},
        "heldout": {"distillation": final_ho["distillation"], "compactness": final_ho["compactness"],
                    "measured_with": "float16 weights as shipped"},
        "curve": curve,
        "floor": distillation_floor(y_tr, y_ho, trainer.mean.float(), trainer.std.float()),
        "seconds": round(hist.seconds, 1),
        "teacher_feature_seconds": round(feature_seconds, 1),
        "git_commit": git_commit(),
        "hardware": hardware_info(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "size_bytes": wpath.stat().st_size,
        "sha256": sha256_file(wpath),
    }
    atomic_write_json(prov_path, prov)
    if ship:
        _ship(wpath, prov)
    return prov


def extra_corpus_digest(folder: str | Path) -> str:
    """SHA-256 (first 16 hex digits) of the photographs an extra corpus folder holds: their relative
    paths and contents, in sorted order, so that renaming or changing any one changes it."""
    from ..data.corpus import corpus_files

    folder = Path(folder)
    h = hashlib.sha256()
    for p in corpus_files(folder):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _corpus(corpus_folder: str | Path | None, extra_corpus: str | Path | None,
            heldout_every: int) -> tuple[list[np.ndarray], list[str], list[int], list[int], int]:
    """Images, names, training and held-out indices, and how many photographs ``extra_corpus`` added
    (the last ones): the held-out photographs are chosen among ``corpus_folder``'s alone, and every
    photograph of ``extra_corpus`` trains."""
    from ..data.corpus import corpus_files, natural_images

    images = natural_images(corpus_folder)
    names = _names(images, corpus_folder)
    train_idx, held_idx = split_corpus(names, heldout_every)
    if extra_corpus is None:
        return images, names, train_idx, held_idx, 0
    extra = Path(extra_corpus)
    more = natural_images(extra, max_images=None)
    train_idx += list(range(len(images), len(images) + len(more)))
    names = names + [f"{extra.name}/{p.relative_to(extra).as_posix()}" for p in corpus_files(extra)]
    return images + more, names, train_idx, held_idx, len(more)


def _names(images: list[np.ndarray], corpus_folder: str | Path | None) -> list[str]:
    """Names of the corpus photographs, as the provenance lists them."""
    from ..data.corpus import bundled_photo_names

    return bundled_photo_names() if corpus_folder is None else [f"{Path(corpus_folder).name}/{i}" for i in range(len(images))]


def _init_weights(init: str | Path | None, preset: Preset, teacher: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(state, provenance)`` of the weights a distillation continues from, or ``(None, None)``."""
    from ..models.shipped import find_shipped, load_shipped

    if init is None:
        return None, None
    if str(init) == "shipped":
        path = find_shipped(preset.patch_size, preset.descriptor_dim, teacher, preset.teacher_input_size)
        if path is None:
            raise GlanceError(f"--init shipped: no shipped weights {weights_name(preset.patch_size, preset.descriptor_dim, teacher, preset.teacher_input_size)} "
                              f"in {WEIGHTS_DIR}")
    else:
        path = Path(init)
        if not path.is_file():
            raise GlanceError(f"--init {path}: no such weights file")
    state, prov = load_shipped(path)
    want = (preset.patch_size, preset.descriptor_dim, teacher, preset.teacher_input_size)
    got = (prov.get("patch_size"), prov.get("descriptor_dim"), prov.get("teacher"), prov.get("teacher_input_size"))
    if tuple(got) != want:
        raise GlanceError(f"--init {path}: distilled for (patch, dim, teacher, input size) {got}, not {want}")
    return state, prov


def _ship(wpath: Path, prov: dict[str, Any]) -> None:
    """Copy a distilled weights file and its provenance into the package (atomically)."""
    atomic_write_bytes(WEIGHTS_DIR / wpath.name, wpath.read_bytes())
    atomic_write_json(WEIGHTS_DIR / f"{wpath.stem}.json", prov)
