"""CIFAR-10 one-class split of the paper (Sec. 4.1, following GradCon).

Protocol (Wang et al., Sec. 4.1, after Kwon et al., "Backpropagated Gradient Representations for
Anomaly Detection", ECCV 2020): keep CIFAR-10's own train/test split.  The training set is every
training image of one class (the inliers); the test set is every test image of that class plus the
same number of outliers drawn at random, without replacement, from the test images of the other nine
classes, with a fixed seed.  Test labels are 0 for inliers and 1 for outliers (1 = anomalous, as
everywhere in this package).

Where the images come from (first that applies):

1. ``npz_dir``: ``cifar10_test.npz`` plus ``cifar10_train.npz`` (all 50,000 training images) or
   ``cifar10_train_1000_per_class.npz``, each with arrays ``x`` uint8 (N, 32, 32, 3) and ``y``;
2. ``root`` (or ``root/cifar10``) holding those files;
3. ``torchvision.datasets.CIFAR10(root, download=True)`` (default root: ``data_dir()/cifar10``).

If none works, DatasetError says what was tried.

Deviation: with the offline ``cifar10_train_1000_per_class.npz`` file the inlier training set has
1,000 images instead of 5,000 (the test set is complete).  ``max_train`` keeps the first n inlier
training images; ``max_test`` keeps ``max_test // 2`` inliers (the first ones) and as many outliers
(the first ones of the seeded draw), so the inlier:outlier ratio stays 1:1 and smaller subsets are
nested in larger ones.

Defined in :doc:`/notebooks/00_data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.fileio import DatasetError, GlanceError

__all__ = ["CIFAR10_CLASSES", "OneClassSplit", "load_cifar10", "one_class_split"]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_TEST = "cifar10_test.npz"
_TRAINS = ("cifar10_train.npz", "cifar10_train_1000_per_class.npz")


@dataclass
class OneClassSplit:
    """A one-class CIFAR-10 task: train on inliers only, test on inliers + outliers (1:1)."""

    normal_class: int
    """Index of the inlier class in :attr:`classes`."""
    classes: tuple[str, ...]
    train_x: np.ndarray
    """Inlier training images, uint8 (N, 32, 32, 3)."""
    test_x: np.ndarray
    """Test images, uint8 (M, 32, 32, 3): inliers first, then outliers."""
    test_y: np.ndarray
    """int64 (M,): 0 inlier, 1 outlier."""
    test_classes: np.ndarray
    """int64 (M,): the original CIFAR-10 class of each test image."""
    source: str
    """Where the images came from (a folder or ``torchvision``)."""
    seed: int = 0

    @property
    def normal_name(self) -> str:
        """Name of the inlier class, e.g. ``'cat'``."""
        return self.classes[self.normal_class]


def _class_index(normal_class: int | str) -> int:
    if isinstance(normal_class, (int, np.integer)) and not isinstance(normal_class, bool):
        if 0 <= int(normal_class) < len(CIFAR10_CLASSES):
            return int(normal_class)
    elif isinstance(normal_class, str):
        key = normal_class.strip().lower()
        if key in CIFAR10_CLASSES:
            return CIFAR10_CLASSES.index(key)
        if key.isdigit() and int(key) < len(CIFAR10_CLASSES):
            return int(key)
    raise GlanceError(
        f"unknown CIFAR-10 class {normal_class!r}; use 0-9 or one of {', '.join(CIFAR10_CLASSES)}"
    )


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as d:
            if "x" not in d.files or "y" not in d.files:
                raise DatasetError(f"{path}: expected arrays 'x' and 'y', found {sorted(d.files)}")
            x, y = np.asarray(d["x"]), np.asarray(d["y"]).astype(np.int64).reshape(-1)
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise DatasetError(f"{path}: cannot read .npz file ({type(e).__name__}: {e})") from e
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise DatasetError(f"{path}: 'x' must be uint8 (N, 32, 32, 3), got {x.dtype} {tuple(x.shape)}")
    if len(y) != len(x):
        raise DatasetError(f"{path}: 'x' has {len(x)} images but 'y' has {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DatasetError(f"{path}: labels 'y' must be in 0..9")
    return x, y


def _npz_files(folder: Path) -> tuple[Path, Path] | None:
    test = folder / _TEST
    trains = [folder / t for t in _TRAINS if (folder / t).is_file()]
    if test.is_file() and trains:
        return trains[0], test
    return None


def load_cifar10(
    root: str | Path | None = None, npz_dir: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """``(train_x, train_y, test_x, test_y, source)`` from npz files or torchvision (see module doc)."""
    if npz_dir is not None:
        folder = Path(npz_dir)
        found = _npz_files(folder)
        if found is None:
            raise DatasetError(
                f"{folder}: needs {_TEST} and one of {', '.join(_TRAINS)} (arrays x uint8 (N,32,32,3) and y)"
            )
        (trx, try_), (tex, tey) = _read_npz(found[0]), _read_npz(found[1])
        return trx, try_, tex, tey, str(folder)
    if root is not None:
        for folder in (Path(root), Path(root) / "cifar10"):
            found = _npz_files(folder)
            if found is not None:
                (trx, try_), (tex, tey) = _read_npz(found[0]), _read_npz(found[1])
                return trx, try_, tex, tey, str(folder)
    if root is None:
        from ..common.paths import data_dir

        root = data_dir() / "cifar10"
    try:
        from torchvision.datasets import CIFAR10

        train = CIFAR10(str(root), train=True, download=True)
        test = CIFAR10(str(root), train=False, download=True)
    except Exception as e:  # noqa: BLE001 - no network, broken download, ...
        raise DatasetError(
            f"{root}: CIFAR-10 is not available: no {_TEST} / {_TRAINS[0]} files there and the "
            f"torchvision download failed ({type(e).__name__}: {' '.join(str(e).split())}); "
            "pass npz_dir= a folder holding the .npz files"
        ) from e
    return (
        np.asarray(train.data, dtype=np.uint8),
        np.asarray(train.targets, dtype=np.int64),
        np.asarray(test.data, dtype=np.uint8),
        np.asarray(test.targets, dtype=np.int64),
        "torchvision",
    )


def one_class_split(
    normal_class: int | str,
    root: str | Path | None = None,
    npz_dir: str | Path | None = None,
    seed: int = 0,
    max_train: int | None = None,
    max_test: int | None = None,
) -> OneClassSplit:
    """The GradCon one-class split for ``normal_class`` (index 0-9 or name, e.g. ``'cat'``)."""
    c = _class_index(normal_class)
    if max_train is not None and max_train < 1:
        raise GlanceError(f"max_train must be at least 1 or None, got {max_train}")
    if max_test is not None and max_test < 2:
        raise GlanceError(f"max_test must be at least 2 (one inlier, one outlier) or None, got {max_test}")
    trx, try_, tex, tey, source = load_cifar10(root=root, npz_dir=npz_dir)

    train_idx = np.flatnonzero(try_ == c)
    if len(train_idx) == 0:
        raise DatasetError(f"{source}: no training images of class {CIFAR10_CLASSES[c]!r}")
    if max_train is not None:
        train_idx = train_idx[:max_train]

    inl = np.flatnonzero(tey == c)
    others = np.flatnonzero(tey != c)
    if len(inl) == 0 or len(others) < len(inl):
        raise DatasetError(
            f"{source}: test set has {len(inl)} images of class {CIFAR10_CLASSES[c]!r} and "
            f"{len(others)} of other classes; need at least as many outliers as inliers"
        )
    rng = np.random.default_rng(seed)
    out = rng.permutation(others)[: len(inl)]
    if max_test is not None:
        k = max_test // 2
        inl, out = inl[:k], out[:k]
    test_idx = np.concatenate([inl, out])
    test_y = np.concatenate([np.zeros(len(inl), np.int64), np.ones(len(out), np.int64)])
    return OneClassSplit(
        normal_class=c,
        classes=CIFAR10_CLASSES,
        train_x=trx[train_idx],
        test_x=tex[test_idx],
        test_y=test_y,
        test_classes=tey[test_idx].astype(np.int64),
        source=source,
        seed=seed,
    )
