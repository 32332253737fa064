"""``glance-lite validate``: a validation protocol that never reads a test image.

Why.  Every setting of the method (preset fields, training lengths, lambda_s, ...) must be chosen
without looking at the test split that the results are reported on, otherwise the reported numbers
are tuned to it.  This module is the one place where settings are compared: it fits, evaluates and
compares glance-lite with the TS (Uninformed Students) baseline on a suite of *validation sources*,
and users can tune on their own data the same way::

    glance-lite validate --out data/validation                       # the default suite
    glance-lite validate --source /data/mvtec_ad:bottle --out val --set global_steps=3000 --name long

A source is ``ROOT:CATEGORY[:heldout|test]``:

* ``test``    -- the category's own test split.  Only for data whose test split is fair to tune on:
  the generated offline categories (:mod:`glance_lite.data.offline_data`, synthetic; ``offline`` may be
  given as ROOT) and Intel's hazelnut toy set.  It is the default for the offline set.
* ``heldout`` -- the default for every other root.  A deterministic tenth (at least two images) of
  ``train/good`` is held out; the other 90 % is the training set.  The held-out images become
  ``test/good``, and copies of them with pasted *synthetic defects* become ``test/<type>``, with
  exact masks in ``ground_truth/<type>/<stem>_mask.png``.  Nothing under the category's ``test/``
  (or ``ground_truth/``) folder is ever read.  :func:`make_heldout` writes this set in MVTec AD
  layout (``<out>/data/<category>/...`` plus a ``manifest.json``), atomically and deterministically,
  and re-uses it when it exists and matches; the package's ``fit``, ``evaluate_run`` and
  ``run_ts_baseline`` then run on it unchanged.

The synthetic defects (:data:`DEFECT_TYPES`), each drawn at a random place and size (a side of about
8-22 % of the image's shorter side):

* ``cut_paste``    -- a rectangle cut from another training image or from another place of the same
  image, scaled (0.75-1.25), often rotated, colour-jittered, and pasted elsewhere (CutPaste-like);
* ``stain``        -- an irregular ellipse (:func:`glance_lite.data.stains.stain_mask`, at image scale)
  filled with a random colour, partly transparent, with light noise;
* ``rotated_crop`` -- a disk of the image replaced by a copy of itself rotated by 30-330 degrees.

The mask of a defect is its footprint: every pixel outside it is bit-identical to the clean held-out
image.  A draw whose mean absolute change inside the mask is below :data:`MIN_MEAN_CHANGE` grey
levels (e.g. a rotated disk of a uniform background) is invisible and is drawn again, up to
:data:`TRIES` times, then dropped (the manifest lists dropped samples).  Grey-level sources
(``screw``) stay grey.

Results go to ``<out>/<preset-name>/validation.json``: one row per source (glance AU-PRO, pixel and
image AUROC, IAD-only and DAD-only AU-PRO, TS AU-PRO and pixel AUROC, glance - TS, seconds), the mean
row, the preset fields, git commit, hardware and date.  Runs live in ``<out>/runs``; a re-run skips
the sources already finished with the same preset, teacher and data, and a failing source is
reported with its error without stopping the others.

Deviation: synthetic defects are not real defects.  They are local, mostly high-contrast changes,
closer to the DAD head's training stains than to MVTec AD's scratches, cracks and logical defects,
so absolute numbers on held-out sets say little about test-set numbers; they are for *comparing*
settings.  The held-out tenth is also taken away from the training set of the validation runs, which
train on 90 % of the images that the final runs use.

Defined in :doc:`/book/cli`.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from ..baselines.controls import CONTROLS
from ..common.fileio import DatasetError, GlanceError, atomic_write_json, default_mode, short_hash
from ..common.presets import (CHOICES, Preset, get_preset, hardware_info, keyed_training_fields, same_local_net,
                              same_preset)

__all__ = [
    "finished_rows",
    "HELDOUT_VERSION",
    "DEFECT_TYPES",
    "MIN_MEAN_CHANGE",
    "MIN_TRAIN_IMAGES",
    "TRIES",
    "Source",
    "parse_source",
    "borrow_ts",
    "ts_lenders",
    "default_sources",
    "heldout_split",
    "synthetic_defect",
    "mean_change",
    "make_heldout",
    "validate",
    "mean_row",
    "validation_table_markdown",
    "run_cli",
]

HELDOUT_VERSION = 1
"""Bumped whenever the held-out generator changes; :func:`make_heldout` then rebuilds."""

_GENERATOR_NAME = "glance_lite.validation"
"""The ``generator`` of the held-out manifests: a stored identifier, not the module's import path (kept
when the module moved to ``glance_lite.experiments``, so existing held-out folders stay recognised)."""

DEFECT_TYPES: tuple[str, ...] = ("cut_paste", "stain", "rotated_crop")
"""The synthetic defect types; each is one ``test/<type>`` folder of a held-out set."""

MIN_MEAN_CHANGE = 10.0
"""Minimum mean absolute change (grey levels, 0-255) inside a defect's mask; below it, redraw. ours."""

TRIES = 12
"""Draws per synthetic defect before the sample is dropped."""

MIN_TRAIN_IMAGES = 10
"""A held-out source needs at least this many images in ``train/good``."""

MODES = ("heldout", "test")

LEGACY_LOCAL_NETS: dict[str, str] = {
    "localnet-p33-d128-efficientnet_lite0-t96": "2d68dad2d014c802681c29e9f131445598fcc11f29e9095a92f4fe2d9b6cf5db",
    "localnet-p17-d128-efficientnet_lite0-t96": "14bc44591d4c8b456d158c1cf7241576aedf01a9778031e4c6506e5e2a998633",
}
"""SHA-256 of the first weights shipped under each name.  Rows written before rows recorded their
Local-Net (``row["local_net"]``) were all fitted from these (each name was shipped once until then,
git history); :func:`local_net_id` reads them so, and a run key leaves them out so that those rows'
keys stay valid."""


# ----------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One validation source: a category of a dataset root, evaluated on ``mode`` (heldout or test)."""

    root: Path
    category: str
    mode: str

    @property
    def name(self) -> str:
        """``<root folder name>-<category>-<mode>``: names the row and the run folder."""
        return f"{self.root.name}-{self.category}-{self.mode}"

    def __str__(self) -> str:
        return f"{self.root}:{self.category}:{self.mode}"


def _is_offline_root(root: Path) -> bool:
    from ..data.offline_data import read_manifest

    m = read_manifest(root)
    return bool(m) and m.get("generator") == "glance_lite.offline_data"  # offline_data's stored identifier


def _source(root: Path, category: str, mode: str | None, what: str) -> Source:
    if not root.is_dir():
        raise GlanceError(f"{what}: dataset root {root} not found")
    if not category or not (root / category / "train" / "good").is_dir():
        from ..data.mvtec import list_categories

        found = ", ".join(list_categories(root)) or "none"
        raise GlanceError(f"{what}: {root / category} has no train/good folder (categories found: {found})")
    if mode is None:
        mode = "test" if _is_offline_root(root) else "heldout"
    if mode not in MODES:
        raise GlanceError(f"{what}: mode must be 'heldout' or 'test', not {mode!r}")
    if mode == "test" and not (root / category / "test").is_dir():
        raise GlanceError(f"{what}: {root / category / 'test'} not found (use :heldout)")
    if mode == "heldout":
        _check_count(_train_files(root, category), root / category / "train" / "good", what)
    return Source(root, category, mode)


def _check_count(files: list[Path], folder: Path, what: str = "held-out") -> None:
    if len(files) < MIN_TRAIN_IMAGES:
        raise GlanceError(f"{what}: {folder} holds {len(files)} training images; a held-out split needs "
                          f"at least {MIN_TRAIN_IMAGES}")


def parse_source(spec: str | Source) -> Source:
    """``ROOT:CATEGORY[:heldout|test]`` -> :class:`Source`; ROOT ``offline`` is the offline set.

    The mode defaults to ``test`` for the offline set and ``heldout`` otherwise.  A missing root or
    category raises :class:`GlanceError` naming it.
    """
    if isinstance(spec, Source):
        return _source(spec.root, spec.category, spec.mode, str(spec))
    parts = str(spec).split(":")
    mode = None
    if len(parts) >= 3 and parts[-1] in MODES:
        mode = parts.pop()
    if len(parts) < 2 or not parts[-1] or not ":".join(parts[:-1]):
        raise GlanceError(f"--source {spec!r}: expected ROOT:CATEGORY[:heldout|test]")
    category, root_s = parts[-1], ":".join(parts[:-1])
    if root_s == "offline":
        from .chapters import offline_root

        root = offline_root()
    else:
        root = Path(root_s).expanduser()
    return _source(root, category, mode, f"--source {spec!r}")


def default_sources() -> list[Source]:
    """The default suite: every offline category (test split), Intel's hazelnut toy set (test split)
    when present, and MVTec AD ``bottle`` and ``screw`` held out when present."""
    from ..data.offline_data import OFFLINE_CATEGORIES
    from ..common.paths import data_dir, shared_category
    from .reproduce import default_roots

    roots = dict(default_roots())  # generates the offline set when needed
    out = [Source(roots["offline"], c, "test") for c in OFFLINE_CATEGORIES
           if (roots["offline"] / c / "train" / "good").is_dir()]
    haz = shared_category("hazelnut_toy", "hazelnut")
    if haz is None and (data_dir() / "hazelnut_toy" / "hazelnut" / "train" / "good").is_dir():
        haz = data_dir() / "hazelnut_toy" / "hazelnut"
    if haz is not None:
        out.append(Source(haz.parent, haz.name, "test"))
    mv = roots.get("mvtec_ad")
    for c in ("bottle", "screw"):
        if mv is not None and (mv / c / "train" / "good").is_dir():
            out.append(Source(mv, c, "heldout"))
    return out


# ----------------------------------------------------------------------------------------------
# the held-out split and its synthetic defects
# ----------------------------------------------------------------------------------------------


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator depending only on ``seed`` and the keys (stable across runs and platforms)."""
    ints = [int(seed) & 0xFFFFFFFF]
    for k in keys:
        ints.append(zlib.crc32(k.encode()) if isinstance(k, str) else int(k) & 0xFFFFFFFF)
    return np.random.default_rng(np.random.SeedSequence(ints))


def _train_files(source_root: Path, category: str) -> list[Path]:
    """The images of ``source_root/category/train/good`` (never anything under ``test/``)."""
    from ..data.mvtec import _images_in

    d = Path(source_root) / category / "train" / "good"
    if not Path(source_root).is_dir():
        raise GlanceError(f"{source_root}: dataset root folder not found")
    if not d.is_dir():
        raise GlanceError(f"{d}: not found (a held-out source needs ROOT/CATEGORY/train/good)")
    return _images_in(d)


def heldout_split(names: Sequence[str], category: str, seed: int = 0,
                  fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """(training names, held-out names) of a category's ``train/good`` file names, both sorted.

    A deterministic ``fraction`` (rounded, at least 2) is held out, chosen by a random permutation
    that depends only on ``seed`` and ``category``.
    """
    names = sorted(names)
    if not 0.0 < float(fraction) <= 0.5:
        raise GlanceError(f"fraction must be in (0, 0.5], not {fraction}")
    if len(names) < MIN_TRAIN_IMAGES:
        raise GlanceError(f"{category}: {len(names)} training images; a held-out split needs at least "
                          f"{MIN_TRAIN_IMAGES}")
    k = max(2, int(round(fraction * len(names))))
    perm = _rng(seed, "heldout", category).permutation(len(names))
    held = sorted(names[i] for i in perm[:k])
    held_set = set(held)
    return [n for n in names if n not in held_set], held


def _pixels(path: Path) -> np.ndarray:
    """An image as uint8 (H, W, C): C = 1 for grey-level images (all channels equal), else 3."""
    from ..data.mvtec import load_image

    a = (load_image(path, None).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    if (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all():
        return a[..., :1].copy()
    return a


def _pil(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)


def _arr(im: Image.Image, c: int) -> np.ndarray:
    a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a[..., :c]


def _png_bytes(a: np.ndarray) -> bytes:
    """PNG bytes with fixed settings and no metadata, so the same pixels give the same bytes."""
    buf = io.BytesIO()
    (Image.fromarray(a) if a.ndim == 2 else _pil(a)).save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


def _transform(patch: np.ndarray, scale: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale and rotate a patch; returns (pixels, footprint) with no pixel blended with the border."""
    h, w, c = patch.shape
    size = (max(2, int(round(w * scale))), max(2, int(round(h * scale))))
    im = _pil(patch).resize(size, Image.BILINEAR)
    ones = Image.new("L", size, 255)
    if angle:
        im = im.rotate(angle, Image.BILINEAR, expand=True)
        ones = ones.rotate(angle, Image.BILINEAR, expand=True)
    return _arr(im, c), np.asarray(ones) == 255


def _cut_paste(img: np.ndarray, rng: np.random.Generator, donor: Callable[[int], np.ndarray] | None,
               n_donors: int) -> tuple[np.ndarray, np.ndarray] | None:
    H, W, C = img.shape
    m = min(H, W)
    h = int(round(rng.uniform(0.08, 0.22) * m))
    w = int(round(h * rng.uniform(0.5, 2.0)))
    h, w = int(np.clip(h, 3, H // 2)), int(np.clip(w, 3, W // 2))
    same = donor is None or n_donors == 0 or rng.random() < 0.5
    src = img
    if not same:
        src = donor(int(rng.integers(n_donors)))
        if src.shape[:2] != (H, W):
            src = _arr(_pil(src).resize((W, H), Image.BILINEAR), C)
        if src.shape[2] != C:  # a colour donor for a grey image, or the reverse
            src = src.mean(2, keepdims=True).round().astype(np.uint8) if C == 1 else np.repeat(src, 3, 2)
    y0, x0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    scale = rng.uniform(0.75, 1.25)
    angle = float(rng.uniform(-180, 180)) if rng.random() < 0.6 else 0.0
    patch, foot = _transform(src[y0:y0 + h, x0:x0 + w], scale, angle)
    gain = rng.uniform(0.75, 1.25)
    shift = rng.uniform(-20, 20, size=C)
    patch = np.clip(patch.astype(np.float32) * gain + shift + 0.5, 0, 255).astype(np.uint8)
    ph, pw = foot.shape
    if ph >= H or pw >= W or not foot.any():
        return None
    ty, tx = int(rng.integers(0, H - ph + 1)), int(rng.integers(0, W - pw + 1))
    if same and math.hypot(ty + ph / 2 - y0 - h / 2, tx + pw / 2 - x0 - w / 2) < 0.5 * max(h, w):
        return None  # pasted (almost) onto itself
    out = img.copy()
    region = out[ty:ty + ph, tx:tx + pw]
    region[foot] = patch[foot]
    mask = np.zeros((H, W), bool)
    mask[ty:ty + ph, tx:tx + pw] = foot
    return out, mask


def _stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    from ..data.stains import stain_mask

    H, W, C = img.shape
    p = int(np.clip(round(rng.uniform(0.15, 0.4) * min(H, W)), 8, min(H, W)))
    sm = stain_mask(p, rng)
    y, x = int(rng.integers(0, H - p + 1)), int(rng.integers(0, W - p + 1))
    colour = rng.uniform(0, 255, size=C)
    alpha = rng.uniform(0.5, 0.95)
    noise = rng.normal(0.0, 6.0, size=(p, p, C))
    region = img[y:y + p, x:x + p].astype(np.float32)
    fill = np.clip(alpha * colour + (1 - alpha) * region + noise + 0.5, 0, 255).astype(np.uint8)
    out = img.copy()
    out[y:y + p, x:x + p][sm] = fill[sm]
    mask = np.zeros((H, W), bool)
    mask[y:y + p, x:x + p] = sm
    return out, mask


def _rotated_crop(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    H, W, C = img.shape
    r = int(np.clip(round(rng.uniform(0.05, 0.12) * min(H, W)), 3, min(H, W) // 2 - 1))
    cy, cx = int(rng.integers(r, H - r)), int(rng.integers(r, W - r))
    box = img[cy - r:cy + r + 1, cx - r:cx + r + 1]
    rot = _arr(_pil(box).rotate(float(rng.uniform(30, 330)), Image.BILINEAR), C)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = yy**2 + xx**2 <= (r - 1) ** 2  # every rotated pixel inside comes from inside the box
    out = img.copy()
    out[cy - r:cy + r + 1, cx - r:cx + r + 1][disk] = rot[disk]
    mask = np.zeros((H, W), bool)
    mask[cy - r:cy + r + 1, cx - r:cx + r + 1] = disk
    return out, mask


def mean_change(clean: np.ndarray, defective: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute change (grey levels) inside ``mask``, over pixels and channels."""
    if not mask.any():
        return 0.0
    d = np.abs(defective.astype(np.int16) - clean.astype(np.int16))
    return float(d[mask].mean())


def synthetic_defect(kind: str, img: np.ndarray, rng_of_try: Callable[[int], np.random.Generator],
                     donor: Callable[[int], np.ndarray] | None = None, n_donors: int = 0,
                     min_change: float = MIN_MEAN_CHANGE, tries: int = TRIES
                     ) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Draw a visible synthetic defect of ``kind`` on ``img`` (uint8, (H, W, C)).

    ``rng_of_try(t)`` gives the generator of draw ``t``; ``donor(i)`` the pixels of training image
    ``i`` (for ``cut_paste``).  Returns ``(defective, mask, draw)`` for the first draw whose mean
    absolute change inside the mask is at least ``min_change``, or ``None`` after ``tries`` draws.
    Pixels outside the mask are never changed.
    """
    if kind not in DEFECT_TYPES:
        raise GlanceError(f"unknown synthetic defect {kind!r}; choose one of {list(DEFECT_TYPES)}")
    for t in range(tries):
        rng = rng_of_try(t)
        if kind == "cut_paste":
            res = _cut_paste(img, rng, donor, n_donors)
        elif kind == "stain":
            res = _stain(img, rng)
        else:
            res = _rotated_crop(img, rng)
        if res is None:
            continue
        out, mask = res
        if mask.sum() >= 16 and mean_change(img, out, mask) >= min_change:
            return out, mask, t
    return None


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _identity(source_root: Path, category: str, seed: int, fraction: float, per_type: int | None,
              files: list[Path]) -> dict[str, Any]:
    return {
        "generator": _GENERATOR_NAME,
        "version": HELDOUT_VERSION,
        "source_root": str(Path(source_root).resolve()),
        "category": category,
        "seed": int(seed),
        "fraction": float(fraction),
        "per_type": per_type,
        "defect_types": list(DEFECT_TYPES),
        "min_mean_change": MIN_MEAN_CHANGE,
        "source_files": short_hash([[f.name, f.stat().st_size] for f in files]),
    }


def _read_json(p: Path) -> dict | None:
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def make_heldout(source_root: str | os.PathLike, category: str, out_root: str | os.PathLike, seed: int = 0,
                 fraction: float = 0.1, per_type: int | None = None, progress: bool = False) -> Path:
    """Write the held-out validation set of ``source_root/category`` under ``out_root/data``; return
    ``out_root/data`` (the dataset root to give to ``fit`` and ``evaluate_run``).

    Layout (MVTec AD)::

        out_root/data/<category>/train/good/*         90 % of the source's train/good (same files)
        out_root/data/<category>/test/good/*          the held-out 10 % (same files)
        out_root/data/<category>/test/<type>/*.png    held-out images with a synthetic defect
        out_root/data/<category>/ground_truth/<type>/<stem>_mask.png
        out_root/data/<category>/manifest.json

    ``per_type`` is the number of defective images per type (default: one per held-out image).
    Only ``source_root/category/train/good`` is read.  The category folder is built in a temporary
    folder and moved into place with its manifest, so a folder with a manifest is complete; it is
    re-used when its manifest matches (generator version, source, file list, seed, fraction,
    per_type), rebuilt when not, and never overwritten when it was not written by this function.
    The same arguments give byte-identical files.
    """
    from ..data.offline_data import _move_into_place

    source_root = Path(source_root)
    files = _train_files(source_root, category)
    _check_count(files, source_root / category / "train" / "good")
    if per_type is not None and int(per_type) < 1:
        raise GlanceError(f"per_type must be at least 1 or None, not {per_type}")
    train_names, held_names = heldout_split([f.name for f in files], category, seed, fraction)
    data = Path(out_root) / "data"
    dest = data / category
    ident = _identity(source_root, category, seed, fraction, per_type, files)
    have = _read_json(dest / "manifest.json")
    if have is not None and all(have.get(k) == v for k, v in ident.items()) and \
            (dest / "train" / "good").is_dir() and (dest / "test" / "good").is_dir():
        return data
    if dest.exists() and (have is None or have.get("generator") != _GENERATOR_NAME):
        raise DatasetError(f"{dest}: exists and was not written by {_GENERATOR_NAME} (no matching "
                           f"manifest.json); refusing to overwrite it (choose another --out)")
    data.mkdir(parents=True, exist_ok=True)
    by_name = {f.name: f for f in files}
    train_files = [by_name[n] for n in train_names]
    cache: dict[int, np.ndarray] = {}

    def donor(i: int) -> np.ndarray:
        if i not in cache:
            if len(cache) > 8:
                cache.clear()
            cache[i] = _pixels(train_files[i])
        return cache[i]

    n_per = len(held_names) if per_type is None else int(per_type)
    tmp = Path(tempfile.mkdtemp(prefix=f".{category}.", suffix=".tmp", dir=data))
    os.chmod(tmp, default_mode(directory=True))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(DEFECT_TYPES) * n_per, desc=f"held-out {category}", unit="img")
    try:
        for n in train_names:
            _link_or_copy(by_name[n], tmp / "train" / "good" / n)
        for n in held_names:
            _link_or_copy(by_name[n], tmp / "test" / "good" / n)
        samples: dict[str, list[dict[str, Any]]] = {}
        dropped: list[dict[str, Any]] = []
        clean_cache: dict[str, np.ndarray] = {}
        for kind in DEFECT_TYPES:
            samples[kind] = []
            for j in range(n_per):
                src = held_names[j % len(held_names)]
                if src not in clean_cache:
                    clean_cache[src] = _pixels(by_name[src])
                img = clean_cache[src]
                res = synthetic_defect(kind, img, lambda t: _rng(seed, category, kind, j, t), donor=donor,
                                       n_donors=len(train_files))
                stem = f"{j:03d}_{Path(src).stem}"
                if res is None:
                    dropped.append({"type": kind, "index": j, "source": src})
                else:
                    out, mask, t = res
                    (tmp / "test" / kind).mkdir(parents=True, exist_ok=True)
                    (tmp / "test" / kind / f"{stem}.png").write_bytes(_png_bytes(out))
                    (tmp / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                    (tmp / "ground_truth" / kind / f"{stem}_mask.png").write_bytes(
                        _png_bytes(mask.astype(np.uint8) * 255))
                    samples[kind].append({"file": f"{stem}.png", "source": src, "draw": t,
                                          "mean_change": round(mean_change(img, out, mask), 2),
                                          "mask_pixels": int(mask.sum())})
                if bar is not None:
                    bar.update(1)
        counts = {"train/good": len(train_names), "test/good": len(held_names)}
        counts.update({f"test/{k}": len(v) for k, v in samples.items()})
        manifest = dict(ident, train=train_names, heldout=held_names, counts=counts, samples=samples,
                        dropped=dropped)
        atomic_write_json(tmp / "manifest.json", manifest)
        _move_into_place(tmp, dest)
    finally:
        if bar is not None:
            bar.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return data


# ----------------------------------------------------------------------------------------------
# the validation run
# ----------------------------------------------------------------------------------------------

NORMS = CHOICES["score_norm"]
"""The score normalisations every evaluation reports (:func:`glance_lite.score.scoring.normalise_scores`)."""

CONTROLS_VERSION = 2
"""Rows of this version hold the fair local-only controls (converged TS and nearest neighbours,
:mod:`glance_lite.baselines.controls`); older rows hold a TS trained a fixed 200 steps per student and
are fitted again when the controls are asked for."""

_NUM = ("AU-PRO", "pixel_AUROC", "image_AUROC", "iad_only_AU-PRO", "dad_only_AU-PRO", "ts_AU-PRO",
        "ts_pixel_AUROC", "knn_AU-PRO", "local_AU-PRO", "glance_minus_ts_AU-PRO", "glance_minus_ts_pixel_AUROC",
        "glance_minus_local_AU-PRO", "seconds") + tuple(
        f"{k}_{n}" for n in NORMS for k in ("AU-PRO", "iad_only_AU-PRO")) + tuple(
        f"{k}_p{size}" for size in (17, 33, 65) for k in ("AU-PRO", "ts_AU-PRO"))
"""The numeric columns of a row (the mean row averages each over the finished rows that have it)."""


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg if isinstance(e, GlanceError) else f"{type(e).__name__}: {msg}"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(float(a) - float(b), 6)


def _set_glance_minus_ts(row: dict[str, Any]) -> None:
    """A row's glance - TS and glance - strongest local control columns (AU-PRO and pixel AUROC)."""
    row["glance_minus_ts_AU-PRO"] = _diff(row.get("AU-PRO"), row.get("ts_AU-PRO"))
    row["glance_minus_ts_pixel_AUROC"] = _diff(row.get("pixel_AUROC"), row.get("ts_pixel_AUROC"))
    row["glance_minus_local_AU-PRO"] = _diff(row.get("AU-PRO"), row.get("local_AU-PRO"))


def _data_id(src: Source, data_root: Path) -> str:
    if src.mode == "heldout":
        return short_hash(_read_json(data_root / src.category / "manifest.json"))
    from ..data.offline_data import read_manifest

    m = read_manifest(src.root) if _is_offline_root(src.root) else None
    return short_hash({"root": str(src.root.resolve()), "offline": m and m.get("version")})


def run_key(preset: Preset, teacher: str, data_id: str) -> str:
    """The key of a validation run folder: a hash of the training fields, the teacher and the data, and,
    when the preset starts from shipped weights other than the first shipped under their name
    (:data:`LEGACY_LOCAL_NETS`), of those weights' SHA-256 -- so that new weights get new runs while
    the keys of rows written before stay valid.  The training fields are hashed as
    :func:`~glance_lite.common.presets.keyed_training_fields` gives them, so that removing a preset field
    renamed no run."""
    key_of: dict[str, Any] = {"preset": keyed_training_fields(preset), "teacher": teacher, "data": data_id}
    t_name = preset.teacher if teacher == "auto" else teacher
    names = [t_name] if t_name != "auto" else ["resnet18", "efficientnet_lite0"]  # "auto": whichever loads
    fresh = sorted({i for i in (_shipped_id(preset.to_dict(), n) for n in names)
                    if i is not None and i not in LEGACY_LOCAL_NETS.values()})
    if fresh:
        key_of["local_net"] = fresh
    return short_hash(key_of)


def _hardware(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`hardware_info` of this call, with ``threads`` set to the threads the rows were *fitted*
    with when they all agree (rows fitted elsewhere and merged here keep their own ``threads``), and
    ``threads_per_source`` listing them."""
    hw = hardware_info()
    per = {r["source"]: r["threads"] for r in rows if isinstance(r.get("threads"), int) and "source" in r}
    if per:
        hw["threads_per_source"] = per
        if len(set(per.values())) == 1:
            hw["threads"] = next(iter(per.values()))
    return hw


def _controls_of(row: dict[str, Any]) -> tuple[str, ...]:
    """The local-only controls a row was scored with (rows of :data:`CONTROLS_VERSION` written before
    the field existed ran both)."""
    if row.get("controls_version") != CONTROLS_VERSION:
        return ()
    return tuple(row.get("controls") or CONTROLS)


def _run_source(src: Source, out: Path, preset: Preset, teacher: str, ts: bool, progress: bool,
                old: dict | None, device: str | None = None,
                controls: Sequence[str] | None = None) -> tuple[dict[str, Any], bool]:
    """Fit, evaluate and (optionally) run the local-only controls (``controls``, default both) of one
    source; returns (row, reused).  A finished row is reused when it holds every control asked for."""
    wanted = tuple(CONTROLS if controls is None else controls)
    import torch

    from .reproduce import fit_evaluate_ts

    row: dict[str, Any] = {"source": src.name, "root": str(src.root), "category": src.category,
                           "mode": src.mode, "status": "failed"}
    t0 = time.perf_counter()
    data_root = make_heldout(src.root, src.category, out, progress=progress) if src.mode == "heldout" else src.root
    # the run folder depends on the training fields only: a variant that changes only how runs are
    # scored (e.g. score_norm) re-evaluates the same fits
    key = run_key(preset, teacher, _data_id(src, data_root))
    now = _shipped_id(preset.to_dict(), old.get("teacher")) if old else None
    same_net = now is None or row_local_net(old) in (None, now)
    fields = old.get("preset_fields") if old else None
    if isinstance(fields, dict):  # the variant's name changes no number: a row of another name counts
        fields = {**fields, "name": preset.name}
    if old and old.get("status") == "ok" and old.get("key") == key and same_net and same_preset(fields, preset) and (not ts or old.get("AU-PRO") is None
                                                                        or set(wanted) <= set(_controls_of(old))):
        if "lambda_sweep" not in old and Path(old.get("run", "")).joinpath("head_maps.npz").is_file():
            old = dict(old, lambda_sweep=lambda_sweep(Path(old["run"])))  # rows written before the sweep existed
        return old, True
    run = out / "runs" / f"{src.name}-{key}"
    row.update(key=key, run=str(run), data_root=str(data_root), preset_fields=preset.to_dict())
    m, ran, secs = fit_evaluate_ts(data_root, src.category, run, preset, teacher=teacher, ts=ts,
                                   progress=progress, device=device, overlays=0, controls=wanted)
    controls = ran
    heads = m.get("heads", {})
    row.update({k: m.get(k) for k in ("AU-PRO", "pixel_AUROC", "image_AUROC", "n_test", "teacher",
                                       "seconds_per_image")})
    ln = (_read_json(run / "config.json") or {}).get("local_net_pretrained") or {}
    row["local_net"] = {k: ln.get(k) for k in ("kind", "file", "sha256")}
    row["lambda_sweep"] = lambda_sweep(run)
    row["iad_only_AU-PRO"] = heads.get("iad_only", {}).get("AU-PRO")
    row["dad_only_AU-PRO"] = heads.get("dad_only", {}).get("AU-PRO")
    for n, nm in m.get("normalisations", {}).items():
        row[f"AU-PRO_{n}"] = nm.get("AU-PRO")
        row[f"iad_only_AU-PRO_{n}"] = nm.get("iad_only", {}).get("AU-PRO")
    for k, v in (m.get("scales") or {}).items():  # multi-scale runs: each patch size alone
        row[f"AU-PRO_{k}"] = v.get("AU-PRO")
    from .reproduce import local_comparison

    row["ts"] = None
    row.update(local_comparison(m, controls, secs))
    for k, v in ((controls.get("ts") or {}).get("scales") or {}).items():
        row[f"ts_AU-PRO_{k}"] = v.get("AU-PRO")
    tsr = row["ts"] or {}
    row["ts_AU-PRO"], row["ts_pixel_AUROC"] = tsr.get("AU-PRO"), tsr.get("pixel_AUROC")
    row["knn_AU-PRO"] = (row.get("knn") or {}).get("AU-PRO")
    row["local_AU-PRO"] = (row.get("local") or {}).get("AU-PRO")
    row["controls_version"] = CONTROLS_VERSION
    row["controls"] = sorted(ran, key=CONTROLS.index) if ts else []
    _set_glance_minus_ts(row)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["seconds_detail"] = {k: round(v, 1) for k, v in secs.items()}
    row["threads"] = torch.get_num_threads()  # what ``seconds`` was measured with (parts may be merged later)
    row["status"] = "ok"
    return row, False


SWEEP_LAMBDAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
"""The values of lambda_s (Eq. 13) every validation row is also scored at."""


def lambda_sweep(run: Path) -> dict[str, float]:
    """AU-PRO of the run's headline head maps mixed with each lambda_s of :data:`SWEEP_LAMBDAS`
    (``{"0.5": ...}``); lambda_s only changes how a run is scored, so it is chosen here, on the
    validation protocol, like the score normalisation."""
    from .reproduce import ablation_from_head_maps, pro_by_lambda

    return pro_by_lambda(ablation_from_head_maps(run, SWEEP_LAMBDAS))


def _finished(row: dict[str, Any]) -> bool:
    return row.get("status") == "ok" and row.get("AU-PRO") is not None


def finished_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of a validation file (its ``"rows"``) that finished: status ``ok`` and an AU-PRO.
    Every reader of validation files filters through this one function."""
    return [r for r in rows if _finished(r)]


def mean_row(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The mean of each numeric column over the finished rows (:func:`finished_rows`) that have a value for it."""
    ok = finished_rows(rows)
    out: dict[str, Any] = {"source": "mean", "mode": "", "status": "ok", "n_sources": len(ok)}
    for k in _NUM:
        vals = [float(r[k]) for r in ok if r.get(k) is not None]
        out[k] = round(float(np.mean(vals)), 6) if vals else None
    sweeps = [r["lambda_sweep"] for r in ok if r.get("lambda_sweep")]
    if sweeps and len(sweeps) == len(ok):
        out["lambda_sweep"] = {k: round(float(np.mean([s[k] for s in sweeps])), 6) for k in sweeps[0]}
    return out


def borrow_ts(val: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Validation results (``{variant: validation.json}``) where a variant validated without TS
    (``glance-lite validate --no-ts``) takes, source by source, the TS result of a variant that fitted
    the same Local-Net (:func:`glance_lite.common.presets.same_local_net`: they differ only in the joint
    stage or in scoring).  TS is trained and scored on the Local-Net alone, so its numbers are those
    that variant would have measured.  A borrowed row says where from (``ts_from``); the means are
    recomputed.  The input is not changed."""
    out = {}
    for name, v in val.items():
        rows = []
        donors = [(n, d) for n, d in val.items() if n != name and d.get("ts") and same_weights(d, v)]
        for r in v.get("rows", []):
            if r.get("ts_AU-PRO") is None and _finished(r):
                for n, d in donors:
                    twin = next((t for t in d["rows"] if t.get("source") == r.get("source")
                                 and t.get("ts_AU-PRO") is not None), None)
                    if twin is not None:
                        r = dict(r, ts=twin.get("ts"), ts_from=n, **{"ts_AU-PRO": twin["ts_AU-PRO"],
                                 "ts_pixel_AUROC": twin.get("ts_pixel_AUROC")})
                        _set_glance_minus_ts(r)
                        break
            rows.append(r)
        out[name] = dict(v, rows=rows, mean=mean_row(rows))
    return out


def _shipped_id(fields: dict[str, Any], teacher: str | None) -> str | None:
    """SHA-256 of the weights that a fit with these preset fields would start from now, if shipped."""
    from ..models.shipped import find_shipped, weights_name

    if fields.get("pretrained") != "shipped" or not teacher:
        return None
    args = (fields["patch_size"], fields["descriptor_dim"], teacher, fields["teacher_input_size"])
    found = find_shipped(*args)
    if found is None:
        return None
    try:
        return json.loads(found.with_suffix(".json").read_text()).get("sha256")
    except (OSError, ValueError):
        return LEGACY_LOCAL_NETS.get(weights_name(*args))


def row_local_net(row: dict[str, Any], fields: dict[str, Any] | None = None) -> str | None:
    """Which Local-Net a validation row's run started from: the shipped weights' SHA-256, ``"distilled here"``,
    or None when unknown.  A row written before rows recorded it (no ``local_net``) and fitted with
    ``pretrained = "shipped"`` started from the first weights shipped under that name
    (:data:`LEGACY_LOCAL_NETS`)."""
    from ..models.shipped import weights_name

    ln = row.get("local_net")
    if ln:
        return ln.get("sha256") or ln.get("kind")
    f = fields or row.get("preset_fields") or {}
    if f.get("pretrained") == "none":
        return "distilled here"
    if f.get("pretrained") == "shipped" and row.get("teacher"):
        return LEGACY_LOCAL_NETS.get(weights_name(f["patch_size"], f["descriptor_dim"], row["teacher"],
                                                  f["teacher_input_size"]))
    return None


def local_net_id(result: dict[str, Any]) -> str | None:
    """The Local-Net of a validation result's runs (:func:`row_local_net` of its finished rows): one
    SHA-256 or ``"distilled here"``; ``"mixed"`` when rows differ; None when no row says."""
    ids = {row_local_net(r, result.get("preset_fields")) for r in result.get("rows", []) if r.get("status") == "ok"}
    ids.discard(None)
    return None if not ids else ids.pop() if len(ids) == 1 else "mixed"


def same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two validation results fitted the same Local-Net: the same training fields outside the
    joint stage (:func:`glance_lite.common.presets.same_local_net`) *and* the same starting weights
    (:func:`local_net_id`; a shipped file can be replaced by a longer distillation)."""
    return same_local_net(a["preset_fields"], b["preset_fields"]) and local_net_id(a) == local_net_id(b)


def ts_lenders(result: dict[str, Any]) -> list[str]:
    """The variants a validation result borrowed TS from (:func:`borrow_ts`), sorted; empty when none."""
    return sorted({r["ts_from"] for r in result.get("rows", []) if r.get("ts_from")})


def validation_table_markdown(rows: Sequence[dict[str, Any]], mean: bool = True) -> str:
    """A GitHub-flavoured markdown table of validation rows (plus the mean row when ``mean``).

    The local-only controls are shown only where they are fair (rows of :data:`CONTROLS_VERSION`: TS trained
    until its held-out error stops falling, and nearest neighbours): each control's AU-PRO, the strongest of
    them, which one it is, and glance − local, glance-lite minus the strongest.  A row written before them
    shows dashes there; the mean row averages each of those columns over the rows that have it."""

    def f(v: Any, signed: bool = False) -> str:
        if v is None:
            return "–"
        return f"{float(v):+.3f}" if signed else f"{float(v):.3f}"

    def fair(r: dict[str, Any]) -> dict[str, Any]:
        if r.get("controls_version") != CONTROLS_VERSION:
            return {}
        ts, nn, loc = r.get("ts_AU-PRO"), r.get("knn_AU-PRO"), r.get("local_AU-PRO")
        which = None if loc is None else "TS" if ts is not None and ts == loc else "NN" if nn is not None else None
        return {"ts": ts, "nn": nn, "local": loc, "which": which, "diff": r.get("glance_minus_local_AU-PRO")}

    head = ["source", "mode", "AU-PRO", "pixel AUROC", "image AUROC", "IAD-only AU-PRO", "DAD-only AU-PRO",
            "TS AU-PRO", "NN AU-PRO", "strongest local", "which", "glance − local AU-PRO", "AU-PRO z-score",
            "AU-PRO position", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---", ":---"] + ["---:"] * (len(head) - 2)) + "|"]
    ok = finished_rows(rows)
    controls = [fair(r) for r in ok]

    def avg(k: str) -> float | None:
        vals = [c[k] for c in controls if c.get(k) is not None]
        return float(np.mean(vals)) if vals else None

    all_rows = list(rows) + ([mean_row(rows)] if mean and rows else [])
    for r in all_rows:
        name = str(r.get("source", "")).replace("|", "\\|")
        if r.get("source") == "mean":
            name = f"**mean** ({r.get('n_sources', 0)} sources)"
            c = {k: avg(k) for k in ("ts", "nn", "local", "diff")}
            n_fair = sum(1 for x in controls if x.get("local") is not None)
            c["which"] = f"{n_fair} with controls" if n_fair != len(ok) else ""
        else:
            c = fair(r)
        if r.get("status") != "ok":
            cells = [name, str(r.get("mode", "")), "failed"] + [""] * (len(head) - 3)
        else:
            sec = r.get("seconds")
            cells = [name, str(r.get("mode", "")), f(r.get("AU-PRO")), f(r.get("pixel_AUROC")),
                     f(r.get("image_AUROC")), f(r.get("iad_only_AU-PRO")), f(r.get("dad_only_AU-PRO")),
                     f(c.get("ts")), f(c.get("nn")), f(c.get("local")), c.get("which") or "–",
                     f(c.get("diff"), True), f(r.get("AU-PRO_zscore")), f(r.get("AU-PRO_position")),
                     "–" if sec is None else f"{float(sec):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reusable_rows(files: Iterable[str | os.PathLike]) -> dict[str, dict[str, Any]]:
    """The rows of other ``validation.json`` files, by source, each marked with ``reused_from``: what
    ``validate --reuse`` offers for reuse.  A file that cannot be read raises :class:`GlanceError` naming it.

    This is how sources split over several jobs or machines (one ``--name`` each, the same settings)
    become one variant: a final ``validate`` over every source with ``--reuse`` on the parts' files
    takes their finished rows as they are -- with their own timings -- when the run key, the
    Local-Net and every preset field but the name agree; any other source is fitted as usual.  The
    earlier file wins for a source that two files hold."""
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        d = _read_json(Path(f))
        if not isinstance(d, dict) or not isinstance(d.get("rows"), list):
            raise GlanceError(f"--reuse {f}: not a validation.json written by glance-lite validate")
        for r in d["rows"]:
            if isinstance(r, dict) and r.get("source") and r["source"] not in out:
                out[r["source"]] = {**r, "reused_from": str(f)}
    return out


def validate(sources: Iterable[str | Source] | None, out: str | os.PathLike, preset: Preset | None = None,
             teacher: str = "auto", ts: bool = True, progress: bool = True,
             results: str | os.PathLike | None = None, device: str | None = None,
             reuse: Sequence[str | os.PathLike] | None = None,
             controls: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the validation protocol on ``sources`` (default: :func:`default_sources`); return the rows.

    For each source: build the held-out set (``heldout`` mode), ``fit`` into ``out/runs/...``,
    ``evaluate_run`` and, when ``ts``, ``run_ts_baseline``.  ``out/<preset-name>/validation.json`` is
    rewritten (atomically) after every source and holds the rows of this call's sources, in order,
    and their mean.  A source already finished with the same preset, teacher and data is not run
    again; a failing source becomes a row with ``status: failed`` and its ``error``, and the others
    still run.  ``results`` puts ``<preset-name>/validation.json`` in another folder than ``out``
    (e.g. the committed ``glance_lite/results/validation``, while held-out images and runs stay in ``out``).
    ``reuse`` names other ``validation.json`` files whose finished rows of the same settings are taken
    as they are (:func:`reusable_rows`).  ``controls`` names the local-only controls (default: both,
    :data:`glance_lite.baselines.controls.CONTROLS`); each row records those it ran (``controls``).
    """
    from ..train.training import git_commit

    p = preset or get_preset()
    out = Path(out)
    srcs = [parse_source(s) for s in sources] if sources is not None else default_sources()
    if not srcs:
        raise GlanceError("validate: no sources")
    names = [s.name for s in srcs]
    for s in srcs:
        if names.count(s.name) > 1:
            raise GlanceError(f"--source {s}: two sources are named {s.name!r} (same root folder name, "
                              f"category and mode); give each its own")
    heldout_cats = [s.category for s in srcs if s.mode == "heldout"]
    for s in srcs:
        if heldout_cats.count(s.category) > 1:
            raise GlanceError(f"--source {s}: two held-out sources of category {s.category!r} would share "
                              f"{out / 'data' / s.category}; validate them into different --out folders")
    res_path = Path(results if results is not None else out) / p.name / "validation.json"
    prev = _read_json(res_path) or {}
    old_rows = reusable_rows(reuse or ())
    old_rows.update({r.get("source"): r for r in prev.get("rows", []) if isinstance(r, dict)})
    rows: list[dict[str, Any]] = []

    def write() -> None:
        atomic_write_json(res_path, {
            "protocol": "glance-lite validate: held-out training images with synthetic defects, and test "
                        "splits that are fair to tune on (offline set, hazelnut toy); no test image of a "
                        "real category is read",
            "preset": p.name, "preset_fields": p.to_dict(), "teacher_requested": teacher, "ts": ts,
            "controls": list(CONTROLS if controls is None else controls) if ts else [],
            "git_commit": git_commit(), "hardware": _hardware(rows),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "heldout_version": HELDOUT_VERSION,
            "sources": [str(s) for s in srcs], "rows": rows, "mean": mean_row(rows),
            "written_by": "glance-lite validate",
        })

    for s in srcs:
        try:
            row, reused = _run_source(s, out, p, teacher, ts, progress, old_rows.get(s.name), device, controls)
        except Exception as e:  # noqa: BLE001 - one failing source must not stop the others
            row, reused = {"source": s.name, "root": str(s.root), "category": s.category, "mode": s.mode,
                           "status": "failed", "error": _one_line(e)}, False
        rows.append(row)
        write()
        if progress:
            print(json.dumps({"source": s.name, "status": row["status"], "reused": reused,
                              **{k: row.get(k) for k in ("AU-PRO", "ts_AU-PRO", "error") if k in row}}))
    return rows


def run_cli(source_specs: Sequence[str] | None, out: str, preset: Preset, teacher: str = "auto",
            ts: bool = True, progress: bool = True, results: str | None = None, device: str | None = None,
            reuse: Sequence[str] | None = None, controls: Sequence[str] | None = None) -> int:
    """``glance-lite validate``: validate, print the markdown table, one stderr line per failed
    source; returns the exit status (1 when a source failed)."""
    import sys

    sources = [parse_source(s) for s in source_specs] if source_specs else None
    rows = validate(sources, out, preset, teacher=teacher, ts=ts, progress=progress, results=results,
                    device=device, reuse=reuse, controls=controls)
    print(validation_table_markdown(rows))
    print(Path(results if results is not None else out) / preset.name / "validation.json")
    failed = [r for r in rows if r.get("status") != "ok"]
    for r in failed:
        print(f"glance-lite: error: validate {r['source']}: {r.get('error')}", file=sys.stderr)
    return 1 if failed else 0
