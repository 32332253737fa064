"""An offline default dataset in MVTec AD layout, made in seconds from scikit-image's bundled images.

The book and the tests need a dataset that exists on every machine, without a download.  This
module renders one from the textures and photographs that ship *inside* the scikit-image package
(``skimage.data.brick``, ``gravel``, ``grass``, ``coins``, ``coffee``, ``astronaut``, ``chelsea``;
none of them needs the network), in the official MVTec AD layout::

    <out>/<category>/train/good/000.png
    <out>/<category>/test/good/000.png
    <out>/<category>/test/<defect>/000.png
    <out>/<category>/ground_truth/<defect>/000_mask.png      (values 0 and 255)
    <out>/manifest.json

Two kinds of category mirror the two kinds of anomaly the paper talks about (Sec. 1, Fig. 1 and
Fig. 4):

* **texture** categories (``brick``, ``gravel``) with *structural* defects -- ``stain``,
  ``scratch``, ``cut``, ``hole``.  Every good image is a different random crop of the real texture,
  with a small random rotation, flips and a brightness change; a defect is drawn on top and its mask
  is exactly the set of pixels that were drawn.  A single patch that covers the defect already looks
  wrong, so a purely local model (Local-Net alone, Eq. 1-3) can find it.
* **object** categories (``board``, ``cable``) with *logical* defects -- a part ``misplaced``,
  two parts ``swapped``, a part ``missing`` or ``recoloured`` with a colour that another part has in
  every good image.  Every patch of a defective image looks like a patch of some good image; only
  the surroundings say that it is in the wrong place.  These are the cases of the paper's Fig. 1a
  (second row: "the top cable should be in green color") and Fig. 4 (transistor shift, cable swap),
  which the global-local comparison (Global-Net versus Local-Net, Eq. 7 and Eq. 11-13) is built for.

Two more texture categories stand for what real data does and the four above do not:

* ``mesh`` -- **grey, fine and regular, with tiny defects** (the failure case of MVTec AD's ``grid``,
  ``screw`` and ``zipper``: single-channel images whose defects cover a few pixels, so a model that
  is not sharp at the pixel level, or a metric dominated by large defects, misses them).  A plain
  weave of round wires (8 px period at 256x256) rendered with numpy, its wires given the grain of
  ``gravel``; every image has another phase, a rotation of up to 3 degrees, a 2 % change of period,
  a brightness change and sensor noise.  Written as 8-bit single-channel ('L') PNGs.  Defects at
  256x256: a bright ``speck`` of dust (4-6 px across), one to three dark ``pit`` marks (3-5 px each), a
  ``hairline`` scratch (2 px wide, 10-24 px long), a ``broken`` wire (a piece of one wire, 1-1.5
  periods long, left out, so the hole or the crossing wire shows).  Masks cover 5-60 pixels.
* ``plank`` -- **images of different sizes and aspect ratios** (the failure case of photographs in
  their camera's frame, and of bringing one's own data: the loader squeezes every image into one
  square, so the same material appears stretched by another factor in every image).  Wood grain
  made from ``grass`` stretched along the board, with wavy growth rings, tinted brown, at the same
  pixel scale in every image; height and width are each drawn between 0.6 and 1.3 of ``size`` and
  never within 15 % of square.  Defects as for the other textures, masks the size of their image.

Exact masks.  Texture masks are the pixels a defect was drawn on; a ``broken`` mesh wire is the set
of pixels where the mesh rendered without that piece differs from the mesh rendered with it.
Object images are rendered twice with the same random jitter: once defect-free (the *reference*)
and once with the defect.  The mask is the footprint of every part whose placement or
appearance changed, taken in *both* renderings (old and new position of a misplaced part, both slots
of a swap, the insulation of a swapped or recoloured wire, all of a missing one).  Because parts never overlap and are pasted without
blending, every pixel that differs between the two renderings lies inside the mask, and the mask is
exact by construction.  Brightness jitter and sensor noise are applied after the mask is computed.

Deviation: MVTec AD is photographed; this set is rendered from real photographs and textures with
simple geometry (square component tiles on a printed board, a three-wire cable cross-section, a
woven mesh drawn with numpy).
Texture train and test crops come from the same 512x512 source picture, so they may overlap; a
model can not memorise a test crop but it has seen the same material.  The object masks follow the
"footprint of the changed part" rule above, not a hand annotation.

Defined in :doc:`/notebooks/00_data`.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from ..common.fileio import DatasetError, GlanceError, atomic_write_json, default_mode

__all__ = [
    "GENERATOR_VERSION",
    "OFFLINE_CATEGORIES",
    "OFFLINE_DEFECTS",
    "GREY_CATEGORIES",
    "VARIABLE_SIZE_CATEGORIES",
    "DEFAULT_COUNTS",
    "OfflineSample",
    "render_sample",
    "make_offline",
    "ensure_offline",
    "default_offline_root",
    "read_manifest",
]

GENERATOR_VERSION = 3
"""Bumped whenever the rendering changes; :func:`ensure_offline` regenerates on a mismatch."""

_GENERATOR_NAME = "glance_lite.offline_data"
"""The ``generator`` of every ``manifest.json`` this module writes: a stored identifier, not the module's
import path (kept when the module moved to ``glance_lite.data``, so existing datasets stay recognised)."""

OFFLINE_CATEGORIES: dict[str, str] = {
    "brick": "texture",
    "gravel": "texture",
    "board": "object",
    "cable": "object",
    "mesh": "texture",
    "plank": "texture",
}
"""Category name -> ``"texture"`` (structural defects) or ``"object"`` (logical defects)."""

OFFLINE_DEFECTS: dict[str, list[str]] = {
    "brick": ["stain", "scratch", "cut", "hole"],
    "gravel": ["stain", "scratch", "cut", "hole"],
    "board": ["misplaced", "swapped", "missing"],
    "cable": ["swapped", "recoloured", "missing"],
    "mesh": ["speck", "pit", "hairline", "broken"],
    "plank": ["stain", "scratch", "cut", "hole"],
}
"""Category name -> its defect types (the folder names under ``test/`` and ``ground_truth/``)."""

GREY_CATEGORIES: frozenset[str] = frozenset({"mesh"})
"""Categories written as single-channel 8-bit ('L') PNGs, like MVTec AD's grid, screw and zipper."""

VARIABLE_SIZE_CATEGORIES: frozenset[str] = frozenset({"plank"})
"""Categories whose images differ in width, height and aspect ratio (each mask matches its image)."""

DEFAULT_COUNTS: dict[str, int] = {"train": 60, "test_good": 10, "test_defect": 10}
"""Images per category: good training images, good test images, test images per defect type."""


@dataclass
class OfflineSample:
    """One rendered image with everything needed to check it.

    ``image`` is what is written to disk.  ``clean`` is the same image before brightness jitter and
    noise, ``reference`` the defect-free rendering of the same jitter (equal to ``clean`` for good
    images).  ``parts`` names what sits in each slot of an object (``None`` for an empty slot);
    it is empty for textures.
    """

    image: np.ndarray  # uint8 (H, W, 3); R = G = B for GREY_CATEGORIES; H != W for VARIABLE_SIZE_CATEGORIES
    mask: np.ndarray  # bool (H, W); all False for good images
    clean: np.ndarray  # uint8 (H, W, 3)
    reference: np.ndarray  # uint8 (H, W, 3)
    parts: tuple[str | None, ...] = field(default_factory=tuple)
    reference_parts: tuple[str | None, ...] = field(default_factory=tuple)


# ----------------------------------------------------------------------------------------------
# deterministic randomness
# ----------------------------------------------------------------------------------------------


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator that depends only on ``seed`` and the keys (stable across runs and platforms)."""
    ints = [int(seed) & 0xFFFFFFFF]
    for k in keys:
        ints.append(zlib.crc32(k.encode()) if isinstance(k, str) else int(k) & 0xFFFFFFFF)
    return np.random.default_rng(np.random.SeedSequence(ints))


# ----------------------------------------------------------------------------------------------
# source images (all bundled with scikit-image)
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _skimage(name: str) -> np.ndarray:
    """A bundled scikit-image picture as uint8, (H, W) or (H, W, 3)."""
    import skimage.data

    try:
        im = getattr(skimage.data, name)()
    except Exception as e:  # noqa: BLE001 - re-raised with the picture's name
        raise DatasetError(f"skimage.data.{name}: cannot load the bundled picture ({e})") from e
    im = np.asarray(im)
    if im.ndim == 3:
        im = im[..., :3]
    return im.astype(np.uint8)


_TEXTURE_TINTS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    # category -> (colour of black, colour of white) used to tint the grey texture
    "brick": ((55, 22, 18), (235, 160, 125)),
    "gravel": ((45, 40, 35), (240, 225, 195)),
}


def _tint(grey: np.ndarray, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    g = grey.astype(np.float32)[..., None] / 255.0
    lo_a, hi_a = np.array(lo, np.float32), np.array(hi, np.float32)
    return np.clip(lo_a + g * (hi_a - lo_a) + 0.5, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=None)
def _texture_source(category: str) -> Image.Image:
    lo, hi = _TEXTURE_TINTS[category]
    return Image.fromarray(_tint(_skimage(category), lo, hi), "RGB")


@functools.lru_cache(maxsize=None)
def _grey_field(name: str, size: int) -> np.ndarray:
    """A bundled grey texture resized to (size, size), float32 with mean 0 and std 1."""
    im = Image.fromarray(_skimage(name)).resize((size, size), Image.BILINEAR)
    a = np.asarray(im, np.float32)
    return (a - a.mean()) / (a.std() + 1e-6)


# Component tiles of the ``board`` category: (picture, top, bottom, left, right) in source pixels.
_BOARD_PARTS: dict[str, tuple[str, int, int, int, int]] = {
    "coin": ("coins", 158, 218, 186, 246),
    "patch": ("astronaut", 343, 427, 130, 214),
    "cup": ("coffee", 15, 325, 145, 455),
    "eye": ("chelsea", 72, 168, 117, 213),
}
_BOARD_LAYOUT: tuple[str, ...] = ("coin", "patch", "cup", "eye")
_BOARD_SLOTS: tuple[tuple[float, float], ...] = ((0.30, 0.28), (0.30, 0.72), (0.70, 0.28), (0.70, 0.72))
_BOARD_TILE = 0.2  # tile side as a fraction of the image side


@functools.lru_cache(maxsize=None)
def _board_tile(part: str, side: int) -> np.ndarray:
    name, t, b, l, r = _BOARD_PARTS[part]
    src = _skimage(name)[t:b, l:r]
    im = Image.fromarray(src).convert("RGB").resize((side, side), Image.BICUBIC)
    return np.asarray(im, np.uint8)


_CABLE_COLOURS: dict[str, tuple[int, int, int]] = {
    "green": (60, 150, 70),
    "blue": (50, 90, 185),
    "brown": (145, 88, 45),
}
_CABLE_ORDER: tuple[str, ...] = ("green", "blue", "brown")  # top, lower right, lower left

_MESH_PERIOD = 8.0  # wire spacing in pixels at 256x256 (never below 4 pixels)
_MESH_WIRE = 0.33  # half the wire's thickness, as a fraction of the period

_PLANK_RANGE = (0.6, 1.3)  # image height and width, as fractions of the nominal size
_PLANK_MIN_ASPECT = 1.15  # width / height (or height / width) is at least this


# ----------------------------------------------------------------------------------------------
# small drawing helpers
# ----------------------------------------------------------------------------------------------


def _scale(size: int, px_at_256: float, minimum: int = 1) -> int:
    """A length given for 256x256 images, scaled to ``size`` and at least ``minimum``."""
    return max(minimum, int(round(px_at_256 * size / 256.0)))


@functools.lru_cache(maxsize=4)
def _grid(height: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column coordinates, float32 (height, width); square when ``width`` is omitted."""
    yy, xx = np.mgrid[0:height, 0:(height if width is None else width)].astype(np.float32)
    return yy, xx


def _mask_canvas(img: np.ndarray) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """An empty 'L' canvas the size of ``img`` (any shape (H, W, ...)) and a drawer for it."""
    im = Image.new("L", (img.shape[1], img.shape[0]), 0)
    return im, ImageDraw.Draw(im)


def _as_bool(im: Image.Image) -> np.ndarray:
    return np.asarray(im, np.uint8) > 0


def _paste(img: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """``img`` with the masked pixels replaced by ``colour`` (float (H, W, 3) or (3,))."""
    out = img.astype(np.float32)
    col = np.broadcast_to(np.asarray(colour, np.float32), out.shape)
    out[mask] = col[mask]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _finish(clean: np.ndarray, gain: float, noise_std: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness gain and Gaussian sensor noise, applied after the mask is fixed."""
    out = clean.astype(np.float32) * gain
    if noise_std > 0:
        out += noise_std * rng.standard_normal(size=out.shape, dtype=np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# texture categories: random crops + structural defects
# ----------------------------------------------------------------------------------------------


def _texture_crop(category: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random rotated, scaled, flipped and brightness-jittered crop of the category's texture."""
    src = _texture_source(category)
    W, H = src.size
    angle = math.radians(rng.uniform(-6.0, 6.0))
    side = rng.uniform(0.40, 0.50) * min(W, H)  # source pixels covered by the output side
    s = side / size
    half_diag = 0.5 * side * math.sqrt(2.0) + 2.0
    cx = rng.uniform(half_diag, W - half_diag)
    cy = rng.uniform(half_diag, H - half_diag)
    a, b = s * math.cos(angle), -s * math.sin(angle)
    d, e = s * math.sin(angle), s * math.cos(angle)
    h = size / 2.0
    coeffs = (a, b, cx - a * h - b * h, d, e, cy - d * h - e * h)
    crop = np.asarray(src.transform((size, size), Image.AFFINE, coeffs, Image.BILINEAR), np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1, :]
    crop = crop * rng.uniform(0.9, 1.1)
    return np.clip(crop + 0.5, 0, 255).astype(np.uint8)


def _point(img: np.ndarray, rng: np.random.Generator, margin: float = 0.15) -> np.ndarray:
    """A random (x, y) inside ``img`` at least ``margin`` of its width and height from the border."""
    wh = np.array([img.shape[1], img.shape[0]], np.float64)
    return rng.uniform(margin * wh, (1 - margin) * wh, size=2)


def _defect_stain(img: np.ndarray, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    canvas, draw = _mask_canvas(img)
    c = _point(img, rng)
    for _ in range(int(rng.integers(3, 7))):
        o = c + rng.normal(0, 0.04 * size, size=2)
        ry, rx = rng.uniform(0.03, 0.08, size=2) * size
        ry, rx = max(ry, 1.5), max(rx, 1.5)
        draw.ellipse([o[0] - rx, o[1] - ry, o[0] + rx, o[1] + ry], fill=255)
    mask = _as_bool(canvas)
    colours = np.array([(50, 32, 15), (15, 15, 20), (200, 185, 60), (40, 60, 150)], np.float32)
    colour = colours[int(rng.integers(len(colours)))]
    alpha = rng.uniform(0.55, 0.8)
    stained = (1 - alpha) * img.astype(np.float32) + alpha * colour
    return _paste(img, mask, stained), mask


def _defect_scratch(img: np.ndarray, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    canvas, draw = _mask_canvas(img)
    p0 = _point(img, rng)
    length = rng.uniform(0.3, 0.55) * size
    ang = rng.uniform(0, 2 * math.pi)
    far = np.array([img.shape[1], img.shape[0]], np.float64) - 3
    p2 = np.clip(p0 + length * np.array([math.cos(ang), math.sin(ang)]), 2, far)
    mid = (p0 + p2) / 2
    normal = np.array([-(p2 - p0)[1], (p2 - p0)[0]]) / (np.linalg.norm(p2 - p0) + 1e-6)
    p1 = mid + normal * rng.uniform(-0.25, 0.25) * length
    t = np.linspace(0, 1, 40)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # quadratic Bezier curve
    width = _scale(size, rng.uniform(3.0, 6.0))
    draw.line([tuple(p) for p in pts.tolist()], fill=255, width=width, joint="curve")
    mask = _as_bool(canvas)
    scratched = 0.35 * img.astype(np.float32) + 0.65 * np.array([235, 232, 225], np.float32)
    return _paste(img, mask, scratched), mask


def _defect_cut(img: np.ndarray, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    canvas, draw = _mask_canvas(img)
    c = _point(img, rng)
    length = rng.uniform(0.15, 0.3) * size
    ang = rng.uniform(0, math.pi)
    u = np.array([math.cos(ang), math.sin(ang)])
    n = np.array([-u[1], u[0]])
    half_w = max(1.5, rng.uniform(0.015, 0.03) * size)
    t = np.linspace(-0.5, 0.5, 24)
    bulge = np.sin(np.pi * (t + 0.5))  # a slit: pointed ends, widest in the middle
    side_a = c + np.outer(t * length, u) + np.outer(half_w * bulge, n)
    side_b = c + np.outer(t * length, u) - np.outer(half_w * bulge, n)
    poly = np.concatenate([side_a, side_b[::-1]])
    draw.polygon([tuple(p) for p in poly.tolist()], fill=255)
    mask = _as_bool(canvas)
    cut = 0.15 * img.astype(np.float32) + np.array([12, 9, 7], np.float32)
    return _paste(img, mask, cut), mask


def _defect_hole(img: np.ndarray, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    c = _point(img, rng)
    r = max(2.5, rng.uniform(0.04, 0.075) * size)
    ry, rx = r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2)
    canvas, draw = _mask_canvas(img)
    rim = _scale(size, 2.0)
    draw.ellipse([c[0] - rx - rim, c[1] - ry - rim, c[0] + rx + rim, c[1] + ry + rim], fill=128)
    draw.ellipse([c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry], fill=255)
    lab = np.asarray(canvas, np.uint8)
    mask = lab > 0
    yy, xx = _grid(img.shape[0], img.shape[1])
    rr = np.sqrt(((xx - c[0]) / rx) ** 2 + ((yy - c[1]) / ry) ** 2)[..., None]
    f = img.astype(np.float32)
    inside = 0.08 * f + 25.0 * np.clip(rr, 0, 1)  # dark, a little lighter towards the rim
    lifted = 0.5 * f + 0.5 * np.array([225, 215, 200], np.float32)  # torn, lighter edge
    out = np.where((lab == 255)[..., None], inside, np.where((lab == 128)[..., None], lifted, f))
    return _paste(img, mask, out), mask


_TEXTURE_DEFECTS: dict[str, Callable[[np.ndarray, np.random.Generator, int], tuple[np.ndarray, np.ndarray]]] = {
    "stain": _defect_stain,
    "scratch": _defect_scratch,
    "cut": _defect_cut,
    "hole": _defect_hole,
}


def _render_texture(category: str, defect: str, size: int, rng: np.random.Generator) -> OfflineSample:
    ref = _texture_crop(category, size, rng)
    if defect == "good":
        return OfflineSample(ref, np.zeros((size, size), bool), ref, ref)
    img, mask = _TEXTURE_DEFECTS[defect](ref, rng, size)
    if not mask.any():  # cannot happen with the radii above; kept as a guard for tiny sizes
        raise DatasetError(f"offline {category}/{defect}: empty defect at size {size}")
    return OfflineSample(img, mask, img, ref)


# ----------------------------------------------------------------------------------------------
# texture category "mesh": a grey woven wire mesh with defects a few pixels across
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MeshPose:
    """The random placement of one mesh image: wire period, rotation, phase and grain crop."""

    period: float  # pixels from one wire to the next
    angle: float  # radians
    phase: tuple[float, float]  # along the two wire directions, in pixels
    grain_offset: tuple[int, int]  # (row, column) of the crop in the 2x grain field


def _mesh_pose(size: int, rng: np.random.Generator) -> _MeshPose:
    period = max(4.0, _MESH_PERIOD * size / 256.0) * rng.uniform(0.98, 1.02)
    angle = math.radians(rng.uniform(-3.0, 3.0))
    phase = tuple(float(v) for v in rng.uniform(0.0, 2.0 * period, size=2))
    offset = tuple(int(v) for v in rng.integers(0, size + 1, size=2))
    return _MeshPose(period, angle, phase, offset)  # type: ignore[arg-type]


def _render_mesh_field(size: int, pose: _MeshPose,
                       gap: tuple[str, int, float, float] | None = None) -> np.ndarray:
    """The grey mesh as float32 (size, size) in [25, 225], before gain and noise.

    A plain weave: horizontal and vertical round wires, each going over and under the wires it
    crosses in turn.  ``gap = (direction, wire, start, stop)`` leaves out one piece of a wire
    (``"h"`` or ``"v"``, the wire's index, and where the piece starts and stops along the wire, in
    periods): the ``broken`` defect.
    """
    yy, xx = _grid(size)
    c = size / 2.0
    cos_t, sin_t = math.cos(pose.angle), math.sin(pose.angle)
    a = ((xx - c) * cos_t + (yy - c) * sin_t + pose.phase[0]) / pose.period  # along horizontal wires
    b = (-(xx - c) * sin_t + (yy - c) * cos_t + pose.phase[1]) / pose.period  # along vertical wires
    iu, iv = np.floor(a), np.floor(b)
    prof_h = np.clip(1.0 - ((b - iv - 0.5) / _MESH_WIRE) ** 2, 0.0, 1.0)  # cross-section of wire iv
    prof_v = np.clip(1.0 - ((a - iu - 0.5) / _MESH_WIRE) ** 2, 0.0, 1.0)  # cross-section of wire iu
    if gap is not None:
        direction, wire, start, stop = gap
        if direction == "h":
            prof_h = np.where((iv == wire) & (a >= start) & (a < stop), 0.0, prof_h)
        else:
            prof_v = np.where((iu == wire) & (b >= start) & (b < stop), 0.0, prof_v)
    # height of each wire along its length: up where it passes over a crossing wire, down under it
    h_h = np.cos(np.pi * (a - 0.5 - iv))
    h_v = -np.cos(np.pi * (b - 0.5 - iu))
    z_h = np.where(prof_h > 0, h_h + 0.5 * prof_h, -9.0)
    z_v = np.where(prof_v > 0, h_v + 0.5 * prof_v, -9.0)
    lit_h = np.sqrt(prof_h) * (0.72 + 0.14 * (h_h + 1.0))
    lit_v = np.sqrt(prof_v) * (0.72 + 0.14 * (h_v + 1.0))
    val = np.where((prof_h > 0) & (z_h >= z_v), lit_h, np.where(prof_v > 0, lit_v, 0.0))
    oy, ox = pose.grain_offset
    grain = _grey_field("gravel", 2 * size)[oy : oy + size, ox : ox + size]
    return np.clip(32.0 + 6.0 * grain + (178.0 + 12.0 * grain) * val, 25.0, 225.0).astype(np.float32)


def _mesh_paint(grey: np.ndarray, mask: np.ndarray, new: np.ndarray) -> np.ndarray:
    out = grey.copy()
    out[mask] = new[mask]
    return out


def _render_mesh(defect: str, size: int, rng: np.random.Generator) -> OfflineSample:
    pose = _mesh_pose(size, rng)
    gain = rng.uniform(0.92, 1.08)
    ref = np.clip(_render_mesh_field(size, pose) + 0.5, 0, 255).astype(np.uint8)
    f = ref.astype(np.float32)
    lo, hi = 0.1 * size, 0.9 * size
    if defect == "good":
        clean, mask = ref, np.zeros((size, size), bool)
    elif defect in ("speck", "pit"):
        canvas, draw = _mask_canvas(ref)
        c = rng.uniform(lo, hi, size=2)
        n = 1 if defect == "speck" else int(rng.integers(1, 4))
        r_lo, r_hi = (1.2, 2.4) if defect == "speck" else (0.9, 1.8)
        for _ in range(n):
            o = c + (rng.uniform(-4.0, 4.0, size=2) * size / 256.0 if n > 1 else 0.0)
            ry, rx = (max(1.0, v * size / 256.0) for v in rng.uniform(r_lo, r_hi, size=2))
            draw.ellipse([o[0] - rx, o[1] - ry, o[0] + rx, o[1] + ry], fill=255)
        mask = _as_bool(canvas)
        new = 0.25 * f + 0.75 * 248.0 if defect == "speck" else 0.2 * f + 6.0  # dust / a dark pit
        clean = np.clip(_mesh_paint(f, mask, new) + 0.5, 0, 255).astype(np.uint8)
    elif defect == "hairline":
        canvas, draw = _mask_canvas(ref)
        p0 = rng.uniform(lo, hi, size=2)
        length = rng.uniform(10.0, 24.0) * size / 256.0
        ang = rng.uniform(0, 2 * math.pi)
        p1 = np.clip(p0 + length * np.array([math.cos(ang), math.sin(ang)]), 1, size - 2)
        draw.line([tuple(p0), tuple(p1)], fill=255, width=_scale(size, 1.5, minimum=2))
        mask = _as_bool(canvas)
        clean = np.clip(_mesh_paint(f, mask, 0.3 * f + 0.7 * 240.0) + 0.5, 0, 255).astype(np.uint8)
    elif defect == "broken":
        x, y = rng.uniform(lo, hi, size=2)
        c = size / 2.0
        cos_t, sin_t = math.cos(pose.angle), math.sin(pose.angle)
        a = ((x - c) * cos_t + (y - c) * sin_t + pose.phase[0]) / pose.period
        b = (-(x - c) * sin_t + (y - c) * cos_t + pose.phase[1]) / pose.period
        length = rng.uniform(1.0, 1.5)
        if rng.random() < 0.5:
            gap = ("h", int(math.floor(b)), a - length / 2, a + length / 2)
        else:
            gap = ("v", int(math.floor(a)), b - length / 2, b + length / 2)
        clean = np.clip(_render_mesh_field(size, pose, gap) + 0.5, 0, 255).astype(np.uint8)
        mask = clean != ref  # the visible part of the missing wire piece, exactly
    else:
        raise GlanceError(f"unknown mesh defect {defect!r}")
    if defect != "good" and not mask.any():  # cannot happen with the radii above; a guard
        raise DatasetError(f"offline mesh/{defect}: empty defect at size {size}")
    out = clean.astype(np.float32) * gain + 2.0 * rng.standard_normal(size=clean.shape, dtype=np.float32)
    image = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    grey3 = lambda g: np.repeat(g[..., None], 3, axis=2)  # noqa: E731 - R = G = B
    return OfflineSample(grey3(image), mask, grey3(clean), grey3(ref))


# ----------------------------------------------------------------------------------------------
# texture category "plank": wood grain, every image another size and aspect ratio
# ----------------------------------------------------------------------------------------------


def _plank_shape(size: int, rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) between 0.6 and 1.3 of ``size`` each, never close to square."""
    while True:
        fh, fw = rng.uniform(_PLANK_RANGE[0], _PLANK_RANGE[1], size=2)
        if abs(math.log(fw / fh)) >= math.log(_PLANK_MIN_ASPECT):
            return max(16, int(round(fh * size))), max(16, int(round(fw * size)))


def _plank_crop(size: int, rng: np.random.Generator) -> np.ndarray:
    """A wood-grain picture (H, W, 3) of random shape; the grain has the same pixel scale at any shape.

    The fibres are scikit-image's ``grass`` stretched about four times along the board, the growth
    rings a wavy sine across it, tinted brown.
    """
    h, w = _plank_shape(size, rng)
    src = Image.fromarray(_skimage("grass"))
    W, H = src.size
    s = (256.0 / size) * rng.uniform(0.95, 1.05)
    sx, sy = 0.22 * s, 0.9 * s  # source pixels per output pixel, along and across the grain
    angle = math.radians(rng.uniform(-3.0, 3.0))
    a, b = sx * math.cos(angle), -sy * math.sin(angle)
    d, e = sx * math.sin(angle), sy * math.cos(angle)
    ex = 0.5 * (abs(a) * w + abs(b) * h) + 2.0
    ey = 0.5 * (abs(d) * w + abs(e) * h) + 2.0
    cx, cy = rng.uniform(ex, W - ex), rng.uniform(ey, H - ey)
    coeffs = (a, b, cx - a * w / 2 - b * h / 2, d, e, cy - d * w / 2 - e * h / 2)
    fibre = np.asarray(src.transform((w, h), Image.AFFINE, coeffs, Image.BICUBIC), np.float32)
    fibre = (fibre - fibre.mean()) / (fibre.std() + 1e-6)
    yy, xx = _grid(h, w)
    ring_period = rng.uniform(14.0, 20.0) * size / 256.0
    wave = rng.uniform(150.0, 260.0) * size / 256.0
    phase = rng.uniform(0, 2 * math.pi, size=2)
    rings = np.sin(2 * np.pi * yy / ring_period + phase[0] + 1.5 * np.sin(2 * np.pi * xx / wave + phase[1]) + 0.35 * fibre)
    grey = np.clip(0.5 + 0.12 * fibre + 0.15 * rings, 0, 1)
    img = _tint((grey * 255 + 0.5).astype(np.uint8), (85, 48, 22), (225, 170, 110)).astype(np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.5:
        img = img[::-1, :]
    img = img * rng.uniform(0.9, 1.1)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _render_plank(defect: str, size: int, rng: np.random.Generator) -> OfflineSample:
    ref = _plank_crop(size, rng)
    if defect == "good":
        return OfflineSample(ref, np.zeros(ref.shape[:2], bool), ref, ref)
    img, mask = _TEXTURE_DEFECTS[defect](ref, rng, size)
    if not mask.any():  # cannot happen with the radii above; kept as a guard for tiny sizes
        raise DatasetError(f"offline plank/{defect}: empty defect at size {size}")
    return OfflineSample(img, mask, img, ref)


# ----------------------------------------------------------------------------------------------
# object category "board": photo components on a printed circuit board
# ----------------------------------------------------------------------------------------------


def _rect(cy: float, cx: float, side: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a ``side`` x ``side`` square centred on (cy, cx), bottom/right exclusive."""
    top = int(round(cy - side / 2))
    left = int(round(cx - side / 2))
    return top, left, top + side, left + side


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = 0) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _board_background(size: int, oy: int, ox: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Table, board, copper traces and solder pads, shifted by the global jitter (oy, ox)."""
    tex = _grey_field("gravel", size)
    fine = _grey_field("grass", size)
    img = np.empty((size, size, 3), np.float32)
    img[:] = np.array([38, 38, 42], np.float32)
    img += 6.0 * fine[..., None]
    m = int(round(0.04 * size))
    board = (m + oy, m + ox, size - m + oy, size - m + ox)
    t, l, b, r = board
    pcb = np.array([22, 92, 52], np.float32)[None, None] + 7.0 * np.roll(tex, (oy, ox), (0, 1))[..., None]
    img[t:b, l:r] = pcb[t:b, l:r]
    side = int(round(_BOARD_TILE * size))
    tw = _scale(size, 3.0)
    pad_h, pad_out, pad_in = _scale(size, 22.0), _scale(size, 12.0), _scale(size, 6.0)
    metal = np.array([175, 170, 150], np.float32)[None, None] + 10.0 * np.roll(fine, (oy, ox), (0, 1))[..., None]
    copper = np.array([150, 120, 60], np.float32)
    for cy_f in sorted({cy for cy, _ in _BOARD_SLOTS}):
        cy = int(round(cy_f * size)) + oy
        img[cy - tw // 2 : cy - tw // 2 + tw, l + m : r - m] = copper  # one trace per row of parts
    for cy_f, cx_f in _BOARD_SLOTS:
        cy, cx = cy_f * size + oy, cx_f * size + ox
        top, left, bottom, right = _rect(cy, cx, side)
        ymid = int(round(cy))
        for x0, x1 in ((left - pad_out, left + pad_in), (right - pad_in, right + pad_out)):
            img[ymid - pad_h // 2 : ymid - pad_h // 2 + pad_h, x0:x1] = metal[ymid - pad_h // 2 : ymid - pad_h // 2 + pad_h, x0:x1]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), board


def _render_board(defect: str, size: int, rng: np.random.Generator) -> OfflineSample:
    side = int(round(_BOARD_TILE * size))
    j = _scale(size, 3.0)
    oy, ox = (int(v) for v in rng.integers(-j, j + 1, size=2))
    bg, board = _board_background(size, oy, ox)
    pj = _scale(size, 2.0)
    rects = []
    for cy_f, cx_f in _BOARD_SLOTS:
        dy, dx = (int(v) for v in rng.integers(-pj, pj + 1, size=2))
        rects.append(_rect(cy_f * size + oy + dy, cx_f * size + ox + dx, side))
    gain = rng.uniform(0.92, 1.08)

    ref_parts: list[str | None] = list(_BOARD_LAYOUT)
    parts = list(ref_parts)
    new_rects = list(rects)
    changed: list[int] = []
    if defect == "swapped":
        a, b = (int(v) for v in rng.choice(len(parts), size=2, replace=False))
        parts[a], parts[b] = parts[b], parts[a]
        changed = [a, b]
    elif defect == "missing":
        k = int(rng.integers(len(parts)))
        parts[k] = None
        changed = [k]
    elif defect == "misplaced":
        k = int(rng.integers(len(parts)))
        inner = (board[0] + 2, board[1] + 2, board[2] - 2, board[3] - 2)
        others = [r for i, r in enumerate(rects) if i != k]
        t0, l0 = rects[k][0], rects[k][1]
        for _ in range(200):
            dist = rng.uniform(0.45, 1.0) * side
            ang = rng.uniform(0, 2 * math.pi)
            t1 = int(round(t0 + dist * math.sin(ang)))
            l1 = int(round(l0 + dist * math.cos(ang)))
            cand = (t1, l1, t1 + side, l1 + side)
            inside = cand[0] >= inner[0] and cand[1] >= inner[1] and cand[2] <= inner[2] and cand[3] <= inner[3]
            if inside and not any(_overlap(cand, o, gap=2) for o in others):
                break
        else:  # pragma: no cover - the board always has room towards its centre
            raise DatasetError("offline board/misplaced: found no free place for the part")
        new_rects[k] = cand
        changed = [k]
    elif defect != "good":
        raise GlanceError(f"unknown board defect {defect!r}")

    def compose(names: list[str | None], where: list[tuple[int, int, int, int]]) -> np.ndarray:
        img = bg.copy()
        for name, (t, l, b, r) in zip(names, where):
            if name is not None:
                img[t:b, l:r] = _board_tile(name, side)
        return img

    reference = compose(ref_parts, rects)
    clean = compose(parts, new_rects) if changed else reference
    mask = np.zeros((size, size), bool)
    for k in changed:
        for t, l, b, r in (rects[k], new_rects[k]):
            mask[t:b, l:r] = True
    image = _finish(clean, gain, 2.0, rng)
    return OfflineSample(image, mask, clean, reference, tuple(parts), tuple(ref_parts))


# ----------------------------------------------------------------------------------------------
# object category "cable": cross-section of a three-wire cable
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _cable_layers(size: int) -> dict[str, np.ndarray]:
    """The textured colour layers of the cable (background, jacket, filler, copper, wire shading)."""
    grain = _grey_field("gravel", size)[..., None]
    fibre = _grey_field("grass", size)[..., None]
    return {
        "table": np.array([28, 28, 30], np.float32) + 4.0 * fibre,
        "jacket": np.array([150, 150, 148], np.float32) + 14.0 * grain,
        "filler": np.array([215, 210, 196], np.float32) + 8.0 * fibre,
        "copper": np.array([196, 125, 62], np.float32) + 30.0 * grain,
        "shade": 1.0 + 0.12 * fibre,
    }


def _render_cable(defect: str, size: int, rng: np.random.Generator) -> OfflineSample:
    j = 3.0 * size / 256.0
    cy = size / 2 + rng.uniform(-j, j)
    cx = size / 2 + rng.uniform(-j, j)
    rot = math.radians(rng.uniform(-5.0, 5.0))
    gain = rng.uniform(0.92, 1.08)
    yy, xx = _grid(size)
    r2 = (yy - cy) ** 2 + (xx - cx) ** 2
    R_out, R_in = 0.44 * size, 0.40 * size
    R_pos, R_ins, R_core = 0.19 * size, 0.155 * size, 0.085 * size
    L = _cable_layers(size)
    base = np.where((r2 < R_in**2)[..., None], L["filler"], np.where((r2 < R_out**2)[..., None], L["jacket"], L["table"]))

    wires: list[tuple[np.ndarray, np.ndarray]] = []  # (insulation mask, core mask) per wire
    for k in range(3):
        ang = rot - math.pi / 2 + k * 2 * math.pi / 3  # top, then clockwise on screen
        wy, wx = cy + R_pos * math.sin(ang), cx + R_pos * math.cos(ang)
        d2 = (yy - wy) ** 2 + (xx - wx) ** 2
        wires.append((d2 < R_ins**2, d2 < R_core**2))
    copper, shade = L["copper"], L["shade"]

    ref_parts: list[str | None] = list(_CABLE_ORDER)
    parts = list(ref_parts)
    changed: list[int] = []
    if defect == "swapped":
        a, b = (int(v) for v in rng.choice(3, size=2, replace=False))
        parts[a], parts[b] = parts[b], parts[a]
        changed = [a, b]
    elif defect == "recoloured":
        k = int(rng.integers(3))
        other = [c for c in _CABLE_ORDER if c != parts[k]]
        parts[k] = other[int(rng.integers(len(other)))]
        changed = [k]
    elif defect == "missing":
        k = int(rng.integers(3))
        parts[k] = None
        changed = [k]
    elif defect != "good":
        raise GlanceError(f"unknown cable defect {defect!r}")

    def compose(names: list[str | None]) -> np.ndarray:
        img = base
        for name, (ins, core) in zip(names, wires):
            if name is None:
                continue
            col = np.array(_CABLE_COLOURS[name], np.float32) * shade
            img = np.where(core[..., None], copper, np.where(ins[..., None], col, img))
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)

    reference = compose(ref_parts)
    clean = compose(parts) if changed else reference
    mask = np.zeros((size, size), bool)
    for k in changed:
        # a swapped or recoloured wire keeps its copper core; a missing wire loses all of it
        mask |= wires[k][0] & ~wires[k][1] if parts[k] is not None else wires[k][0]
    image = _finish(clean, gain, 2.0, rng)
    return OfflineSample(image, mask, clean, reference, tuple(parts), tuple(ref_parts))


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------


def render_sample(category: str, defect: str = "good", index: int = 0, seed: int = 0,
                  size: int = 256, split: str = "test") -> OfflineSample:
    """Render one image of an offline category, deterministically from (seed, category, split, defect, index).

    ``defect`` is ``"good"`` or one of ``OFFLINE_DEFECTS[category]``; ``split`` is ``"train"`` or
    ``"test"`` (it only selects another random stream).  This is what :func:`make_offline` writes
    (single-channel for :data:`GREY_CATEGORIES`).  ``size`` is the side of every image, except for
    :data:`VARIABLE_SIZE_CATEGORIES`, whose height and width vary around it.
    """
    if category not in OFFLINE_CATEGORIES:
        raise GlanceError(f"unknown offline category {category!r}; choose one of {sorted(OFFLINE_CATEGORIES)}")
    if defect != "good" and defect not in OFFLINE_DEFECTS[category]:
        raise GlanceError(f"{category!r} has no defect {defect!r}; choose one of {OFFLINE_DEFECTS[category]}")
    if split not in ("train", "test"):
        raise GlanceError(f"split must be 'train' or 'test', not {split!r}")
    if split == "train" and defect != "good":
        raise GlanceError("training images are always good")
    if size < 32:
        raise GlanceError(f"size must be at least 32 pixels, not {size}")
    rng = _rng(seed, category, split, defect, index)
    if category == "mesh":
        return _render_mesh(defect, size, rng)
    if category == "plank":
        return _render_plank(defect, size, rng)
    if OFFLINE_CATEGORIES[category] == "texture":
        return _render_texture(category, defect, size, rng)
    if category == "board":
        return _render_board(defect, size, rng)
    return _render_cable(defect, size, rng)


def _png_bytes(arr: np.ndarray, mode: str) -> bytes:
    """PNG bytes with fixed settings and no metadata (no time stamp), so files are reproducible."""
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG", compress_level=1, optimize=False)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    """Plain write into the private temporary category folder (the folder as a whole is moved atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _move_into_place(tmp: Path, dest: Path, tries: int = 5) -> None:
    """Replace ``dest`` by the folder ``tmp``; retried when a concurrent run re-creates ``dest``."""
    for attempt in range(tries):
        if dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
        try:
            os.replace(tmp, dest)
            return
        except OSError:
            if attempt == tries - 1:
                raise


def _counts(n_train: int, n_test_good: int, n_test_defect: int) -> dict[str, int]:
    for k, v in (("n_train", n_train), ("n_test_good", n_test_good), ("n_test_defect", n_test_defect)):
        if int(v) < 1:
            raise GlanceError(f"{k} must be at least 1, not {v}")
    return {"train": int(n_train), "test_good": int(n_test_good), "test_defect": int(n_test_defect)}


def _manifest(seed: int, size: int, counts: dict[str, int]) -> dict:
    cats = {}
    for name, kind in OFFLINE_CATEGORIES.items():
        per = {"train/good": counts["train"], "test/good": counts["test_good"]}
        per.update({f"test/{d}": counts["test_defect"] for d in OFFLINE_DEFECTS[name]})
        cats[name] = {"type": kind, "defects": list(OFFLINE_DEFECTS[name]), "counts": per,
                      "mode": "L" if name in GREY_CATEGORIES else "RGB",
                      "image_size": "varies" if name in VARIABLE_SIZE_CATEGORIES else "fixed"}
    return {
        "generator": _GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "size": int(size),
        "counts": dict(counts),
        "categories": cats,
        "sources": "scikit-image bundled pictures: brick, gravel, grass, coins, coffee, astronaut, chelsea",
    }


def read_manifest(root: str | os.PathLike) -> dict | None:
    """The ``manifest.json`` of an offline dataset root, or ``None`` when missing or unreadable."""
    p = Path(root) / "manifest.json"
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def _is_ours(root: Path) -> bool:
    m = read_manifest(root)
    return bool(m) and m.get("generator") == _GENERATOR_NAME


def make_offline(out: str | os.PathLike, seed: int = 0, size: int = 256, progress: bool = False,
                 n_train: int = DEFAULT_COUNTS["train"], n_test_good: int = DEFAULT_COUNTS["test_good"],
                 n_test_defect: int = DEFAULT_COUNTS["test_defect"]) -> Path:
    """Write the offline dataset (all of :data:`OFFLINE_CATEGORIES`) in MVTec AD layout under ``out``.

    The same arguments always give byte-identical files.  Each category is built in a temporary
    folder next to its destination and moved into place; ``manifest.json`` is written last, so a
    dataset with a manifest is complete.  An existing category folder is replaced only when ``out``
    holds a manifest written by this module; otherwise :class:`DatasetError` is raised rather than
    deleting someone else's data.  Returns ``Path(out)``.
    """
    out = Path(out)
    counts = _counts(n_train, n_test_good, n_test_defect)
    if int(size) < 32:
        raise GlanceError(f"size must be at least 32 pixels, not {size}")
    out.mkdir(parents=True, exist_ok=True)
    ours = _is_ours(out)
    for name in OFFLINE_CATEGORIES:
        if (out / name).exists() and not ours:
            raise DatasetError(f"{out / name}: exists and {out / 'manifest.json'} was not written by "
                               f"{_GENERATOR_NAME}; refusing to overwrite it (choose another --out)")
    if (out / "manifest.json").exists():
        (out / "manifest.json").unlink()  # the dataset is incomplete until the new manifest is written

    jobs: list[tuple[str, str, str, int]] = []
    for name in OFFLINE_CATEGORIES:
        jobs += [(name, "train", "good", i) for i in range(counts["train"])]
        jobs += [(name, "test", "good", i) for i in range(counts["test_good"])]
        for d in OFFLINE_DEFECTS[name]:
            jobs += [(name, "test", d, i) for i in range(counts["test_defect"])]

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="offline dataset", unit="img")
    try:
        for name in OFFLINE_CATEGORIES:
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=out))
            os.chmod(tmp, default_mode(directory=True))
            try:
                for cat, split, defect, i in jobs:
                    if cat != name:
                        continue
                    s = render_sample(name, defect, i, seed=seed, size=size, split=split)
                    stem = f"{i:03d}"
                    if name in GREY_CATEGORIES:  # R = G = B: one channel on disk
                        png = _png_bytes(np.ascontiguousarray(s.image[..., 0]), "L")
                    else:
                        png = _png_bytes(s.image, "RGB")
                    _write(tmp / split / defect / f"{stem}.png", png)
                    if defect != "good":
                        m = s.mask.astype(np.uint8) * 255
                        _write(tmp / "ground_truth" / defect / f"{stem}_mask.png", _png_bytes(m, "L"))
                    if bar is not None:
                        bar.update(1)
                _move_into_place(tmp, out / name)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if bar is not None:
            bar.close()
    atomic_write_json(out / "manifest.json", _manifest(seed, size, counts))
    return out


def default_offline_root(seed: int = 0, size: int = 256) -> Path:
    """``data_dir()/offline`` for the default (seed 0, 256 px); a separate folder for other settings."""
    from ..common.paths import data_dir

    if (seed, size) == (0, 256):
        return data_dir() / "offline"
    return data_dir() / f"offline_seed{seed}_size{size}"


def ensure_offline(out: str | os.PathLike | None = None, seed: int = 0, size: int = 256,
                   progress: bool = False) -> Path:
    """Return the root of the offline dataset, generating it only when needed.

    It is (re)generated when ``out/manifest.json`` is missing, was written with another seed, size,
    image counts or generator version, or a category folder is missing.  ``out`` defaults to
    :func:`default_offline_root`.
    """
    root = Path(out) if out is not None else default_offline_root(seed, size)
    want = _manifest(seed, size, dict(DEFAULT_COUNTS))
    have = read_manifest(root)
    same = bool(have) and all(have.get(k) == want[k] for k in ("generator", "version", "seed", "size", "counts",
                                                             "categories"))
    if same and all((root / name / "train" / "good").is_dir() for name in OFFLINE_CATEGORIES):
        return root
    return make_offline(root, seed=seed, size=size, progress=progress, n_train=DEFAULT_COUNTS["train"],
                        n_test_good=DEFAULT_COUNTS["test_good"], n_test_defect=DEFAULT_COUNTS["test_defect"])
