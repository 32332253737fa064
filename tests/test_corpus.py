"""Natural-image corpus (folder or scikit-image's bundled photos) and random patch sampling."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glance_lite.data import corpus
from glance_lite.data.corpus import natural_images, sample_patches
from glance_lite.common.fileio import DatasetError, GlanceError


def _coord_image(h: int = 40, w: int = 50) -> np.ndarray:
    """R = row, G = column, B = 7: every pixel says where it came from."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, :, 0] = np.arange(h)[:, None]
    a[:, :, 1] = np.arange(w)[None, :]
    a[:, :, 2] = 7
    return a


def test_skimage_photos_load_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*a: object, **k: object) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    corpus._bundled_photos.cache_clear()
    imgs = natural_images()
    assert len(imgs) >= 12
    for im in imgs:
        assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 and min(im.shape[:2]) >= 64
    # colour photos are really colour, grayscale ones became three equal channels
    spreads = [int(np.abs(im[..., 0].astype(int) - im[..., 2]).max()) for im in imgs]
    assert max(spreads) > 50 and min(spreads) == 0
    # distinct images, not one image repeated
    assert len({im.tobytes()[:4096] for im in imgs}) == len(imgs)


def test_folder_recursive(tmp_path: Path) -> None:
    (tmp_path / "n01" / "deep").mkdir(parents=True)
    Image.fromarray(_coord_image()).save(tmp_path / "n01" / "a.png")
    Image.fromarray(_coord_image()[:, :, 0]).save(tmp_path / "n01" / "deep" / "b.JPEG")  # gray jpeg
    Image.fromarray(_coord_image(600, 300)).save(tmp_path / "c.jpg")
    (tmp_path / "readme.txt").write_text("not an image")
    imgs = natural_images(tmp_path, max_side=200)
    assert len(imgs) == 3
    assert all(im.dtype == np.uint8 and im.shape[2] == 3 for im in imgs)
    assert sorted(im.shape[:2] for im in imgs) == [(40, 50), (40, 50), (200, 100)]  # large one shrunk
    # a seeded subset when there are more files than max_images
    a = natural_images(tmp_path, max_images=2, seed=0)
    b = natural_images(tmp_path, max_images=2, seed=0)
    assert len(a) == 2 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no .jpg"):
        natural_images(tmp_path)
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(DatasetError) as e:
        natural_images(tmp_path)
    assert str(bad) in str(e.value)
    with pytest.raises(DatasetError, match="not found"):
        natural_images(tmp_path / "missing")


def test_patches_are_exact_crops_at_scale_one() -> None:
    img = _coord_image()
    p = sample_patches([img], n=200, size=9, seed=3, scales=(1.0,), flip=False)
    assert p.shape == (200, 3, 9, 9) and p.dtype == torch.float32
    v = torch.round(p * 255).to(torch.int64)
    rows, cols = v[:, 0], v[:, 1]
    # consecutive rows down, consecutive columns across: a real, unscaled, unflipped crop
    assert (rows[:, 1:, :] - rows[:, :-1, :] == 1).all() and (rows[:, :, 1:] == rows[:, :, :1]).all()
    assert (cols[:, :, 1:] - cols[:, :, :-1] == 1).all()
    assert (v[:, 2] == 7).all()
    # positions cover the image: top-left corners spread over the valid range, both ends reached
    tops, lefts = rows[:, 0, 0], cols[:, 0, 0]
    assert tops.min() == 0 and tops.max() == 40 - 9 and lefts.min() == 0 and lefts.max() == 50 - 9


def test_flips_and_scales() -> None:
    img = _coord_image(60, 60)
    p = sample_patches([img], n=300, size=10, seed=0, scales=(1.0,), flip=True)
    dcol = torch.round(p[:, 1, 0, 1] * 255) - torch.round(p[:, 1, 0, 0] * 255)
    assert set(dcol.tolist()) == {1.0, -1.0}  # some mirrored, some not
    assert 0.3 < (dcol < 0).float().mean() < 0.7
    # zoomed out (s = 0.5): one patch spans about twice as many source rows
    far = sample_patches([img], n=50, size=10, seed=0, scales=(0.5,), flip=False)
    near = sample_patches([img], n=50, size=10, seed=0, scales=(2.0,), flip=False)
    span = lambda t: (t[:, 0, -1, 0] - t[:, 0, 0, 0]) * 255  # noqa: E731
    assert span(far).mean() > 15 and span(near).mean() < 6
    assert 0.0 <= far.min() and far.max() <= 1.0


def test_determinism_and_seed() -> None:
    imgs = [_coord_image(), np.full((30, 70), 200, np.uint8)]  # one grayscale image too
    a = sample_patches(imgs, 64, 8, seed=5)
    b = sample_patches(imgs, 64, 8, seed=5)
    c = sample_patches(imgs, 64, 8, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # both images are used
    gray = (a[:, 0] == a[:, 2]).flatten(1).all(1)
    assert 10 < int(gray.sum()) < 54


def test_small_images_and_bad_arguments() -> None:
    tiny = _coord_image(12, 20)
    p = sample_patches([tiny], 5, 16, seed=0)  # upsampled so a 16x16 crop fits
    assert p.shape == (5, 3, 16, 16)
    assert sample_patches([tiny], 0, 8).shape == (0, 3, 8, 8)
    with pytest.raises(GlanceError):
        sample_patches([], 4, 8)
    with pytest.raises(GlanceError):
        sample_patches([tiny], 4, 8, scales=(0.0,))
    with pytest.raises(GlanceError):
        sample_patches([np.zeros((4, 4, 5), np.uint8)], 4, 2)
