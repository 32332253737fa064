"""MVTec AD in its official folder layout: discovery, validation, loading and a torch Dataset.

The paper evaluates on MVTec AD (Bergmann et al., CVPR 2019; Sec. 4.2 of Wang et al.), whose
categories are laid out as::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<defect>/*.png            (``good`` is one of the defects)
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

This module reads that layout and a few honest variants of it, so that users can bring their own
data in the same shape:

* masks named ``<stem>_mask.<ext>`` (official) or ``<stem>.<ext>``;
* images in PNG, JPEG, BMP or TIFF, grayscale or colour (always converted to RGB), of any size,
  square or not (always resized to a square ``image_size``);
* categories with no ``ground_truth/`` folder at all: only image-level evaluation is possible,
  ``Category.has_masks`` is ``False`` and every ``Sample.mask_path`` is ``None``.

Bad data raises :class:`~glance_lite.common.fileio.DatasetError` with a one-line message that names the
file (or folder) and the problem: a corrupt image, an empty ``train/good``, a mask whose size differs
from its image, a defect image without a mask while other defect images have one, a folder that is not
a dataset, or an unknown category (the message lists the categories found under ``root``).

Resizing: images use bilinear interpolation with antialiasing (PIL's ``BILINEAR`` filter widens its
support when shrinking); masks are binarised, then resized to the same ``size x size`` grid by area
coverage (see :func:`load_mask`), so that a defect of a few pixels survives the shrinking.

Deviation: a mask pixel counts as defective when its value is at least half of the mask's full
scale, i.e. ``>= 128`` for 8-bit masks (MVTec masks are {0, 255}; masks resized with a smooth filter
by third parties then still give the same region), ``>= 32768`` for 16-bit masks, and ``> 0`` for
masks stored as {0, 1}.  We binarise at full resolution and then resize.

Choice: a shrunk mask pixel is defective when at least half of its area is covered by defective
full-resolution pixels, and a defect region (8-connected) never vanishes: a region with no pixel
left gets the one output pixel it covers most.  Nearest-neighbour shrinking, which we used before,
emptied some masks of the offline ``mesh`` category at 128 px and up to about half of them at 48 px;
such images keep label 1 with an empty mask, and pixel AUROC and PRO silently lose them.

Defined in :doc:`/notebooks/00_data`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..common.fileio import DatasetError, GlanceError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Sample",
    "Category",
    "list_categories",
    "find_category",
    "load_image",
    "load_mask",
    "resize_mask",
    "MVTecDataset",
    "inspect_category",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""File extensions (lower case) read as images; other files (``.txt``, ``.DS_Store``) are ignored."""


@dataclass(frozen=True)
class Sample:
    """One image of a category: its file, defect type (``good`` for normal), label and mask file."""

    path: Path
    defect: str
    label: int
    """0 for ``good``, 1 for any defect."""
    mask_path: Path | None = None
    """Ground-truth mask; ``None`` for good images and for categories without ``ground_truth/``."""


@dataclass
class Category:
    """A validated category: ``train`` holds good images only, ``test`` holds every test image."""

    root: Path
    """The dataset root (the folder holding the category folder)."""
    name: str
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    has_masks: bool = False
    """Whether pixel-level ground truth exists (a ``ground_truth/`` folder with masks)."""

    @property
    def path(self) -> Path:
        """The category folder ``root / name``."""
        return self.root / self.name

    @property
    def defects(self) -> list[str]:
        """Test defect types, ``good`` first then alphabetical."""
        names = sorted({s.defect for s in self.test})
        return sorted(names, key=lambda d: (d != "good", d))


# --------------------------------------------------------------------------------------------
# discovery and validation
# --------------------------------------------------------------------------------------------


def _images_in(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; hidden files are skipped."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def list_categories(root: str | Path) -> list[str]:
    """Names of the sub-folders of ``root`` that look like categories (they hold ``train/good``)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: file not found") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable image ({_one_line(e)})") from e


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _find_mask(gt_dir: Path, image: Path) -> Path | None:
    """``gt_dir/<stem>_mask.<ext>`` (official) or ``gt_dir/<stem>.<ext>``, if present."""
    for stem in (f"{image.stem}_mask", image.stem):
        for ext in IMAGE_EXTENSIONS:
            for cand in (gt_dir / f"{stem}{ext}", gt_dir / f"{stem}{ext.upper()}"):
                if cand.is_file():
                    return cand
    return None


def find_category(root: str | Path, category: str) -> Category:
    """Find and validate ``root/category``; raise DatasetError naming the bad file or folder.

    Reads the header (not the pixels) of every image and mask, so unreadable files and masks whose
    size differs from their image are reported here; :func:`inspect_category` decodes every file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root folder not found")
    cat_dir = root / category
    if not category or not cat_dir.is_dir():
        found = list_categories(root)
        listing = ", ".join(found) if found else "none (no sub-folder holds train/good)"
        raise DatasetError(f"{root}: no category {category!r}; categories found: {listing}")
    train_dir = cat_dir / "train" / "good"
    if not train_dir.is_dir():
        raise DatasetError(f"{cat_dir}: not an MVTec-style dataset (no train/good folder)")
    train_files = _images_in(train_dir)
    if not train_files:
        raise DatasetError(
            f"{train_dir}: no training images (expected {'/'.join(IMAGE_EXTENSIONS)} files)"
        )
    test_dir = cat_dir / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"{cat_dir}: not an MVTec-style dataset (no test folder)")
    defect_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    test_files = {d.name: _images_in(d) for d in defect_dirs}
    test_files = {k: v for k, v in test_files.items() if v}
    if not test_files:
        raise DatasetError(f"{test_dir}: no test images in any test/<defect> folder")

    gt_dir = cat_dir / "ground_truth"
    # Masks for defect images (not for good ones); has_masks when at least one exists.
    masks: dict[Path, Path | None] = {}
    for defect, files in test_files.items():
        if defect == "good":
            continue
        for f in files:
            masks[f] = _find_mask(gt_dir / defect, f) if gt_dir.is_dir() else None
    has_masks = any(m is not None for m in masks.values())
    if has_masks:
        for f, m in masks.items():
            if m is None:
                raise DatasetError(
                    f"{f}: defect image has no mask (looked for "
                    f"{gt_dir / f.parent.name / (f.stem + '_mask.png')} or {f.stem}.png) "
                    "while other defect images have masks"
                )

    train = [Sample(p, "good", 0, None) for p in train_files]
    for p in train_files:
        _header_size(p)
    test: list[Sample] = []
    for defect in sorted(test_files, key=lambda d: (d != "good", d)):
        for f in test_files[defect]:
            size = _header_size(f)
            m = masks.get(f)
            if m is not None:
                msize = _header_size(m)
                if msize != size:
                    raise DatasetError(
                        f"{m}: mask size {msize[0]}x{msize[1]} differs from its image {f} "
                        f"({size[0]}x{size[1]})"
                    )
            test.append(Sample(f, defect, 0 if defect == "good" else 1, m))
    return Category(root=root, name=category, train=train, test=test, has_masks=has_masks)


# --------------------------------------------------------------------------------------------
# loading single files
# --------------------------------------------------------------------------------------------


def _open(path: Path) -> Image.Image:
    """Open and fully decode an image; a missing or broken file raises DatasetError."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: file not found") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable image ({_one_line(e)})") from e


def _to_uint8_array(im: Image.Image) -> np.ndarray:
    """Pixels as uint8, rescaling 16-bit and float images to 0..255."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = float(a.max()) if a.size else 0.0
        if im.mode == "F" and top <= 1.0:
            hi = 1.0
        elif top <= 255.0:
            hi = 255.0
        else:
            hi = 65535.0 if top <= 65535.0 else top
        return np.clip(np.round(a / hi * 255.0), 0, 255).astype(np.uint8)
    return np.asarray(im)


def _rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_to_uint8_array(im), mode="L").convert("RGB")
    return im.convert("RGB")


def _square(size: int | None, im: Image.Image) -> tuple[int, int]:
    if size is None:
        return im.size
    if int(size) <= 0:
        raise GlanceError(f"image size must be positive, got {size}")
    return (int(size), int(size))


def load_image(path: str | Path, size: int | None) -> torch.Tensor:
    """Read ``path`` as RGB, resize to ``size x size`` (bilinear, antialiased), return (3, S, S) in [0, 1].

    ``size=None`` keeps the original size.
    """
    path = Path(path)
    im = _rgb(_open(path))
    target = _square(size, im)
    if im.size != target:
        im = im.resize(target, Image.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)


def _binary_mask(im: Image.Image, path: Path) -> np.ndarray:
    """Mask as bool (H, W): value >= half of full scale (0/1 masks: value > 0)."""
    if im.mode in ("RGB", "RGBA", "LA", "P", "CMYK", "YCbCr", "HSV", "LAB"):
        im = im.convert("L")
    a = np.asarray(im)
    if a.ndim != 2:
        raise DatasetError(f"{path}: mask must be a single-channel image (got mode {im.mode})")
    if a.dtype == bool:
        return a
    top = float(a.max()) if a.size else 0.0
    if top <= 1.0:
        return a > 0
    full = 255.0 if top <= 255 else 65535.0
    return a >= full / 2.0


def _axis_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) integer weights, each row summing to ``n_in``, that resize one axis.

    Coordinates are in units of ``1 / n_out`` input pixels, so every overlap is an integer.
    Shrinking (or equal size): output pixel ``i`` covers input ``[i * n_in, (i + 1) * n_in)`` and
    input pixel ``r`` covers ``[r * n_out, (r + 1) * n_out)``; the weight is their overlap (exact
    area average; the identity when ``n_in == n_out``).  Growing: nearest neighbour, the input
    pixel under the output pixel's centre ``(i + 1/2) * n_in / n_out``, with weight ``n_in``; the
    centres are summed up step by step in float64 exactly as PIL's ``Image.NEAREST`` does, so that
    centres falling on a pixel boundary pick the same pixel as PIL (identical to the old loader).
    Both keep PIL's pixel-centre convention, so the mask lands on the grid of the resized image.
    """
    w = np.zeros((n_out, n_in), np.float64)
    i = np.arange(n_out)
    if n_out > n_in:
        step = n_in / n_out
        centres = np.add.accumulate(np.r_[step * 0.5, np.full(n_out - 1, step)])
        w[i, np.clip(centres.astype(np.int64), 0, n_in - 1)] = n_in
        return w
    lo = np.maximum(i[:, None] * n_in, np.arange(n_in)[None, :] * n_out)
    hi = np.minimum((i[:, None] + 1) * n_in, (np.arange(n_in)[None, :] + 1) * n_out)
    w[:] = np.maximum(hi - lo, 0)
    return w


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a boolean (H, W) mask to (width, height) ``size`` by area coverage; see :func:`load_mask`."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    out_w, out_h = size
    if (out_h, out_w) == (h, w):
        return mask.copy()
    wy, wx = _axis_weights(h, out_h), _axis_weights(w, out_w)
    full = float(h) * float(w)  # the weight of a fully covered output pixel
    # Integer-valued float64 products (< 2**53 for any realistic mask): the comparison is exact.
    cover = wy @ mask.astype(np.float64) @ wx.T
    out = 2.0 * cover >= full
    if not mask.any():
        return out
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        ys, xs = box
        part = (labels[box] == k).astype(np.float64)
        c = wy[:, ys] @ part @ wx[:, xs].T  # this region's coverage of every output pixel
        if (out & (c > 0)).any():
            continue  # the region still shows in the result
        out[np.unravel_index(int(np.argmax(c)), c.shape)] = True
    return out


def load_mask(path: str | Path, size: int | None) -> torch.Tensor:
    """Read a ground-truth mask, binarise it, resize it to ``size x size``; (S, S) float {0, 1}.

    ``size=None`` keeps the original size; a mask already ``size x size`` is returned unchanged.
    The result lies on the same grid as :func:`load_image`'s output (pixel centres at
    ``(i + 1/2) * scale``).  Each axis is resized separately:

    * shrinking: an output pixel is defective when at least half of its area is covered by
      defective full-resolution pixels (exact area average, threshold ``>= 1/2``);
    * growing: nearest neighbour (every input pixel maps to at least one output pixel);
    * and no defect region vanishes: for each 8-connected region of the full-resolution mask that
      has no defective output pixel among those it covers, the output pixel that the region covers
      most is set (the first one in raster order on ties).  A defect of one pixel therefore stays
      one pixel, where it was, instead of disappearing (as nearest-neighbour shrinking would let
      it), and a large region keeps its area to within the resampling error of its border.
    """
    path = Path(path)
    im = _open(path)
    m = _binary_mask(im, path)
    target = _square(size, im)
    return torch.from_numpy(resize_mask(m, target)).float()


# --------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------


def _cap(samples: list[Sample], split: str, max_images: int | None) -> list[Sample]:
    """First ``max_images`` (sorted by path) of train, or of each test defect type."""
    if max_images is None:
        return list(samples)
    if max_images < 1:
        raise GlanceError(f"max_images must be at least 1 or None, got {max_images}")
    if split == "train":
        return sorted(samples, key=lambda s: str(s.path))[:max_images]
    out: list[Sample] = []
    by_defect: dict[str, list[Sample]] = {}
    for s in samples:
        by_defect.setdefault(s.defect, []).append(s)
    for d in sorted(by_defect, key=lambda d: (d != "good", d)):
        out.extend(sorted(by_defect[d], key=lambda s: str(s.path))[:max_images])
    return out


class MVTecDataset(Dataset):
    """Images of one split of a :class:`Category`, resized to a square ``image_size``.

    Items are dicts: ``image`` (3, S, S) float in [0, 1]; ``mask`` (1, S, S) float in {0, 1} (all
    zeros for good images and for categories without masks); ``label`` int (0 good, 1 defect);
    ``defect`` str; ``path`` str.  ``max_images`` keeps the first n training images, or the first n
    test images of EACH defect type (sorted by file name, so the subset is deterministic).
    """

    def __init__(
        self,
        category: Category,
        split: str,
        image_size: int,
        max_images: int | None = None,
    ) -> None:
        if split not in ("train", "test"):
            raise GlanceError(f"split must be 'train' or 'test', got {split!r}")
        if not isinstance(category, Category):
            raise GlanceError(
                f"MVTecDataset needs a Category from find_category(root, name), got {type(category).__name__}"
            )
        self.category = category
        self.split = split
        self.image_size = int(image_size)
        self.samples: list[Sample] = _cap(
            category.train if split == "train" else category.test, split, max_images
        )

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        """Labels of every item, in order (no image is read)."""
        return [s.label for s in self.samples]

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        S = self.image_size
        image = load_image(s.path, S)
        if s.mask_path is not None:
            mask = load_mask(s.mask_path, S)[None]
        else:
            mask = torch.zeros(1, S, S)
        return {"image": image, "mask": mask, "label": s.label, "defect": s.defect, "path": str(s.path)}


# --------------------------------------------------------------------------------------------
# inspection (the CLI's ``glance-lite data inspect ROOT CATEGORY``)
# --------------------------------------------------------------------------------------------


def inspect_category(root: str | Path, category: str) -> dict[str, Any]:
    """Validate a category and decode every image and mask; return counts, sizes and modes.

    Returns ``{"category", "train", "test", "masks", "defects": {defect: n test images},
    "sizes": sorted distinct [w, h] of the images, "modes": sorted distinct PIL modes of the images}``.
    Any problem raises DatasetError with a one-line message naming the file.
    """
    cat = find_category(root, category)
    sizes: set[tuple[int, int]] = set()
    modes: set[str] = set()
    n_masks = 0

    def visit(paths: Iterable[Sample]) -> None:
        nonlocal n_masks
        for s in paths:
            im = _open(s.path)
            modes.add(im.mode)
            sizes.add(im.size)
            if s.mask_path is not None:
                _binary_mask(_open(s.mask_path), s.mask_path)
                n_masks += 1

    visit(cat.train)
    visit(cat.test)
    defects: dict[str, int] = {}
    for d in cat.defects:
        defects[d] = sum(1 for s in cat.test if s.defect == d)
    return {
        "category": cat.name,
        "train": len(cat.train),
        "test": len(cat.test),
        "masks": n_masks,
        "defects": defects,
        "sizes": [list(s) for s in sorted(sizes)],
        "modes": sorted(modes),
    }
