"""Natural-image corpus and random patches for distilling the Local-Net (Eq. 1-3).

The paper distils the Local-Net from a ResNet-18 on ImageNet patches (Sec. 4.2, following
Uninformed Students).  This module provides the images and the patches:

* :func:`natural_images` reads an ImageNet-style folder (any ``.jpg``/``.jpeg``/``.png``, searched
  recursively) when the user has one, and otherwise the photographs bundled inside scikit-image
  (astronaut, coffee, chelsea, rocket, the stereo motorcycle pair, immunohistochemistry, Hubble deep
  field, retina, camera, coins, moon, brick, grass, gravel, cell, clock, page, text) -- all shipped in
  the scikit-image wheel, so no network is needed.  Grayscale images are repeated to RGB.
  To these are added scikit-learn's two sample photographs (``china.jpg``, ``flower.jpg``) and
  matplotlib's sample portrait (``grace_hopper.jpg``), shipped in those wheels (:data:`EXTRA_PHOTOS`).
* :func:`sample_patches` draws random square crops, optionally rescaled and flipped, as a float
  tensor (n, 3, size, size) in [0, 1], deterministically for a seed.  Each image is rescaled once
  per scale and its crops are gathered in one vectorised step, so 50,000 patches of 33x33 take
  about a second on one CPU core.
* :func:`augment_patches` adds the eight square symmetries, grey copies and colour jitter, so that a
  few dozen photographs yield varied enough patches for the long distillation that ships with the
  package (:mod:`glance_lite.train.distil`).

Deviation: ~22 bundled photographs stand in for ImageNet's 1.2 million when no folder is
given; the teacher still carries ImageNet knowledge, and the Local-Net is fine-tuned on the category
afterwards.  The offline anomaly dataset also uses textures; some overlap (brick, grass, gravel) with
this corpus is harmless because distillation only sees normal, natural content.

Defined in :doc:`/notebooks/00_data`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..common.fileio import DatasetError, GlanceError

__all__ = ["SKIMAGE_PHOTOS", "EXTRA_PHOTOS", "corpus_files", "natural_images", "bundled_photo_names", "sample_patches",
           "augment_patches", "FOLDER_EXTENSIONS"]

SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "motorcycle_left",
    "motorcycle_right",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "camera",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
    "cell",
    "clock",
    "page",
    "text",
)
"""Photographs bundled with scikit-image (no download) used when no image folder is given."""

EXTRA_PHOTOS: tuple[str, ...] = ("sklearn:china.jpg", "sklearn:flower.jpg", "matplotlib:grace_hopper.jpg")
"""Further photographs shipped inside installed wheels (scikit-learn's two sample images and
matplotlib's sample portrait), added to the bundled corpus when they can be read."""

FOLDER_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
"""Extensions read from an image folder (case-insensitive)."""


def _as_rgb_uint8(a: np.ndarray, what: str) -> np.ndarray:
    """(H, W) or (H, W, 3|4) array as contiguous uint8 (H, W, 3)."""
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(np.round(a), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise GlanceError(f"{what}: expected an (H, W) or (H, W, 3) image, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _skimage_one(name: str) -> np.ndarray | None:
    from skimage import data

    if name in ("motorcycle_left", "motorcycle_right"):
        fn = getattr(data, "stereo_motorcycle", None)
        if fn is None:
            return None
        left, right, _ = fn()
        return left if name == "motorcycle_left" else right
    fn = getattr(data, name, None)
    return None if fn is None else fn()


@functools.lru_cache(maxsize=1)
def _bundled_photos() -> tuple[tuple[str, np.ndarray], ...]:
    """``(name, image)`` of every bundled photograph this installation can read (cached)."""
    out = []
    for name in SKIMAGE_PHOTOS + EXTRA_PHOTOS:
        try:
            a = _extra_one(name) if ":" in name else _skimage_one(name)
        except Exception:  # noqa: BLE001 - a photo missing from this installation is skipped
            continue
        if a is None:
            continue
        img = _as_rgb_uint8(a, name if ":" in name else f"skimage.data.{name}")
        img.flags.writeable = False
        out.append((name, img))
    if not out:
        raise DatasetError("scikit-image: none of its bundled photographs could be loaded")
    return tuple(out)


def _extra_one(name: str) -> np.ndarray | None:
    """One of :data:`EXTRA_PHOTOS` as an array, or None when this installation lacks it."""
    source, _, fname = name.partition(":")
    if source == "sklearn":
        from sklearn.datasets import load_sample_image

        return load_sample_image(fname)
    if source == "matplotlib":
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / fname
        return _load_file(path, None) if path.is_file() else None
    return None


def bundled_photo_names() -> list[str]:
    """Names of the bundled photographs that :func:`natural_images` returns, in its order."""
    return [name for name, _ in _bundled_photos()]


def _load_file(path: Path, max_side: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable image ({' '.join(str(e).split())})") from e
    if max_side is not None and max(im.size) > max_side:
        s = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def corpus_files(folder: str | Path) -> list[Path]:
    """The image files of an ImageNet-style folder, searched recursively, in sorted order (hidden
    files skipped); raises :class:`DatasetError` naming the folder when it is missing or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: image folder not found")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in FOLDER_EXTENSIONS and not p.name.startswith(".")
    )
    if not files:
        raise DatasetError(f"{folder}: no .jpg/.jpeg/.png images found (searched recursively)")
    return files


def natural_images(
    folder: str | Path | None = None,
    max_images: int | None = 2000,
    max_side: int | None = 512,
    seed: int = 0,
) -> list[np.ndarray]:
    """Natural RGB images as uint8 (H, W, 3) arrays.

    ``folder``: an ImageNet-style tree searched recursively for .jpg/.jpeg/.png; when there are more
    than ``max_images`` files a seeded random subset is read (None: all), and each image is shrunk so
    its longer side is at most ``max_side`` (None: keep).  Without a folder, scikit-image's bundled
    photographs are returned at their own size (read-only arrays, cached).
    """
    if folder is None:
        return [img for _, img in _bundled_photos()]
    files = corpus_files(folder)
    if max_images is not None and len(files) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(files), size=max_images, replace=False))
        files = [files[i] for i in keep]
    return [_load_file(p, max_side) for p in files]


def _rescaled(img: np.ndarray, scale: float, size: int) -> np.ndarray:
    """``img`` resized by ``scale`` (at least ``size`` pixels on its shorter side), uint8 (H, W, 3)."""
    from PIL import Image

    h, w = img.shape[:2]
    s = max(float(scale), size / min(h, w))
    if s == 1.0:
        return img
    nh, nw = max(size, int(round(h * s))), max(size, int(round(w * s)))
    if (nh, nw) == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR), dtype=np.uint8)


def sample_patches(
    images: Sequence[np.ndarray],
    n: int,
    size: int,
    seed: int = 0,
    scales: Sequence[float] = (0.5, 1.0, 2.0),
    flip: bool = True,
) -> torch.Tensor:
    """``n`` random square patches as float32 (n, 3, size, size) in [0, 1].

    Each patch: pick an image uniformly, pick a scale ``s`` from ``scales``, rescale the image by
    ``s`` (bilinear, antialiased when shrinking; never below ``size`` pixels on its shorter side),
    crop ``size x size`` at a uniform random position, and mirror it left-right with probability 1/2
    when ``flip``.  So ``s = 0.5`` shows twice the field of view, ``s = 2`` a close-up, and ``s = 1``
    exact pixels of the image.  Each (image, scale) is resized once and all its crops are gathered
    in one vectorised step.  The same ``seed`` gives the same patches.
    """
    if n < 0 or size < 1:
        raise GlanceError(f"sample_patches needs n >= 0 and size >= 1, got n={n}, size={size}")
    if not images:
        raise GlanceError("sample_patches needs at least one image")
    if not scales or any(not s > 0 for s in scales):
        raise GlanceError(f"scales must be positive numbers, got {tuple(scales)}")
    imgs = [_as_rgb_uint8(im, f"image {i}") for i, im in enumerate(images)]
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(imgs), size=n)
    scale_idx = rng.integers(0, len(scales), size=n)
    u_top, u_left = rng.random(n), rng.random(n)
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)

    out = torch.empty((n, 3, size, size), dtype=torch.float32)
    keys = which * len(scales) + scale_idx
    for key in np.unique(keys):
        idx = np.flatnonzero(keys == key)
        img = _rescaled(imgs[int(key) // len(scales)], float(scales[int(key) % len(scales)]), size)
        h, w = img.shape[:2]
        tops = np.floor(u_top[idx] * (h - size + 1)).astype(np.int64)
        lefts = np.floor(u_left[idx] * (w - size + 1)).astype(np.int64)
        windows = np.lib.stride_tricks.sliding_window_view(img, (size, size), axis=(0, 1))
        crops = torch.from_numpy(windows[tops, lefts])  # (k, 3, size, size) uint8, a copy
        f = torch.from_numpy(flips[idx])
        if bool(f.any()):
            crops[f] = crops[f].flip(-1)
        out[torch.from_numpy(idx)] = crops.float().div_(255.0)
    return out


def augment_patches(
    patches: torch.Tensor,
    seed: int = 0,
    rotate: bool = True,
    grey_prob: float = 0.2,
    colour_jitter: float = 0.2,
) -> torch.Tensor:
    """Photometric and geometric variety for a small photo corpus, deterministic for a seed.

    Each patch (float (n, 3, s, s) in [0, 1]) is, independently:

    * rotated by a multiple of 90 degrees and mirrored top-bottom with probability 1/2 (``rotate``),
      so that the eight symmetries of the square all occur -- industrial parts and textures appear
      at every orientation, photographs mostly upright;
    * made grey (the mean of its channels, repeated) with probability ``grey_prob`` -- grayscale
      categories (e.g. MVTec AD's screw, grid, carpet-like textures) must not be out of distribution;
    * given a brightness, contrast and per-channel gain each drawn within ``1 +- colour_jitter``.

    Returns a new tensor clipped to [0, 1]; the input is not modified.
    """
    if patches.ndim != 4 or patches.shape[1] != 3:
        raise GlanceError(f"augment_patches expects (n, 3, s, s) patches, got {tuple(patches.shape)}")
    if not 0.0 <= grey_prob <= 1.0 or not 0.0 <= colour_jitter < 1.0:
        raise GlanceError(f"grey_prob must be in [0, 1] and colour_jitter in [0, 1), got {grey_prob}, {colour_jitter}")
    n = patches.shape[0]
    g = torch.Generator().manual_seed(int(seed))
    out = patches.clone()
    if rotate and n:
        k = torch.randint(4, (n,), generator=g)
        vflip = torch.rand(n, generator=g) < 0.5
        for r in range(4):
            sel = k == r
            if r and bool(sel.any()):
                out[sel] = torch.rot90(out[sel], r, dims=(2, 3))
        if bool(vflip.any()):
            out[vflip] = out[vflip].flip(2)
    grey = torch.rand(n, generator=g) < grey_prob
    if bool(grey.any()):
        out[grey] = out[grey].mean(1, keepdim=True).expand(-1, 3, -1, -1)
    if colour_jitter > 0 and n:
        u = lambda *shape: 1.0 + colour_jitter * (2 * torch.rand(*shape, generator=g) - 1)  # noqa: E731
        gain = u(n, 3, 1, 1)
        gain[grey] = gain[grey][:, :1].expand(-1, 3, -1, -1)  # grey stays grey
        contrast, bright = u(n, 1, 1, 1), u(n, 1, 1, 1)
        mean = out.mean((1, 2, 3), keepdim=True)
        out = ((out - mean) * contrast + mean) * bright * gain
    return out.clamp_(0.0, 1.0)
