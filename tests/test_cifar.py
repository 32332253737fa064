"""The CIFAR-10 one-class protocol (GradCon): tiny synthetic .npz files and the shared real ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glance_lite.data import cifar
from glance_lite.data.cifar import CIFAR10_CLASSES, one_class_split
from glance_lite.common.fileio import DatasetError, GlanceError


def _fake(
    folder: Path, n_train: int = 6, n_test: int = 4, train_name: str = "cifar10_train_1000_per_class.npz"
) -> Path:
    """Images whose first pixel stores (class, index) so the split can be checked exactly."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in ((train_name, n_train), ("cifar10_test.npz", n_test)):
        y = np.repeat(np.arange(10), n).astype(np.uint8)
        x = np.zeros((len(y), 32, 32, 3), np.uint8)
        x[:, 0, 0, 0] = y
        x[:, 0, 0, 1] = np.arange(len(y)) % 256
        np.savez(folder / name, x=x, y=y, classes=np.array(CIFAR10_CLASSES))
    return folder


def test_protocol_on_fake_data(tmp_path: Path) -> None:
    d = _fake(tmp_path / "c")
    s = one_class_split("cat", npz_dir=d, seed=0)
    assert s.normal_class == 3 and s.normal_name == "cat"
    assert s.train_x.shape == (6, 32, 32, 3) and s.train_x.dtype == np.uint8
    assert (s.train_x[:, 0, 0, 0] == 3).all()  # only the inlier class is trained on
    assert (s.test_y == 0).sum() == (s.test_y == 1).sum() == 4  # all 4 inliers + 4 outliers
    assert (s.test_x[s.test_y == 0, 0, 0, 0] == 3).all()
    assert (s.test_x[s.test_y == 1, 0, 0, 0] != 3).all()
    assert np.array_equal(s.test_classes, s.test_x[:, 0, 0, 0])
    # outliers are distinct images (drawn without replacement)
    ids = s.test_x[:, 0, 0, 1]
    assert len(set(ids.tolist())) == len(ids)


def test_seed_determinism_and_randomness(tmp_path: Path) -> None:
    d = _fake(tmp_path / "c", n_test=20)
    a = one_class_split(0, npz_dir=d, seed=1)
    b = one_class_split(0, npz_dir=d, seed=1)
    c = one_class_split(0, npz_dir=d, seed=2)
    assert np.array_equal(a.test_x, b.test_x)
    assert not np.array_equal(a.test_x, c.test_x)
    # outliers are spread over several other classes, not just the next one
    assert len(set(a.test_classes[a.test_y == 1].tolist())) >= 5


def test_max_train_max_test_keep_balance(tmp_path: Path) -> None:
    d = _fake(tmp_path / "c", n_test=10)
    s = one_class_split("ship", npz_dir=d, max_train=2, max_test=7)
    assert len(s.train_x) == 2
    assert (s.test_y == 0).sum() == (s.test_y == 1).sum() == 3
    full = one_class_split("ship", npz_dir=d)
    # the small subset is nested in the full split
    assert np.array_equal(s.test_x[s.test_y == 1], full.test_x[full.test_y == 1][:3])
    with pytest.raises(GlanceError):
        one_class_split("ship", npz_dir=d, max_test=1)


def test_root_with_npz_is_used_and_full_train_preferred(tmp_path: Path) -> None:
    _fake(tmp_path / "r" / "cifar10", n_train=3)
    _fake(tmp_path / "r" / "cifar10", n_train=5, train_name="cifar10_train.npz")
    s = one_class_split(1, root=tmp_path / "r")
    assert len(s.train_x) == 5 and s.source.endswith("cifar10")


def test_bad_class_and_missing_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _fake(tmp_path / "c")
    with pytest.raises(GlanceError, match="airplane"):
        one_class_split("unicorn", npz_dir=d)
    with pytest.raises(GlanceError):
        one_class_split(10, npz_dir=d)
    with pytest.raises(DatasetError, match="cifar10_test.npz"):
        one_class_split(0, npz_dir=tmp_path / "empty")

    # neither npz files nor a working torchvision download: one clear error, no network used
    import torchvision.datasets

    def offline(*a: object, **k: object) -> None:
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DatasetError) as e:
        one_class_split(0, root=tmp_path / "nothing")
    msg = str(e.value)
    assert "torchvision download failed" in msg and "no network" in msg and "npz_dir" in msg


def test_bad_npz(tmp_path: Path) -> None:
    d = _fake(tmp_path / "c")
    np.savez(d / "cifar10_test.npz", x=np.zeros((4, 28, 28), np.uint8), y=np.zeros(4, np.uint8))
    with pytest.raises(DatasetError, match=r"cifar10_test.npz.*uint8 \(N, 32, 32, 3\)"):
        one_class_split(0, npz_dir=d)
    (d / "cifar10_test.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="cannot read"):
        one_class_split(0, npz_dir=d)


def test_shared_cifar(shared_cifar: Path) -> None:
    s = one_class_split("cat", npz_dir=shared_cifar, seed=0)
    assert len(s.train_x) == 1000  # the offline subset has 1,000 training images per class
    assert (s.test_y == 0).sum() == 1000 and (s.test_y == 1).sum() == 1000
    assert (s.test_classes[s.test_y == 0] == 3).all() and (s.test_classes[s.test_y == 1] != 3).all()
    counts = np.bincount(s.test_classes[s.test_y == 1], minlength=10)
    assert counts[3] == 0 and counts.min(initial=10**9, where=np.arange(10) != 3) > 60  # roughly 111 each
    small = one_class_split("cat", root=shared_cifar, max_train=8, max_test=4)
    assert small.train_x.shape == (8, 32, 32, 3) and small.test_y.tolist() == [0, 0, 1, 1]


def test_module_exports() -> None:
    assert cifar.CIFAR10_CLASSES[3] == "cat" and len(cifar.CIFAR10_CLASSES) == 10
