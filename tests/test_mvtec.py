"""MVTec-layout loading: the official layout, its variants, bad input, and the shared real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glance_lite.common.fileio import DatasetError, GlanceError
from glance_lite.data.mvtec import (
    Category,
    MVTecDataset,
    find_category,
    inspect_category,
    list_categories,
    load_image,
    load_mask,
)


def _img(path: Path, size: tuple[int, int] = (20, 16), mode: str = "RGB", seed: int = 0) -> None:
    """Write a random image of (width, height) ``size``."""
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "L":
        a = rng.integers(0, 256, (h, w), dtype=np.uint8)
    else:
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a, mode=mode).save(path)


def _mask(
    path: Path, size: tuple[int, int] = (20, 16), box: tuple[int, int, int, int] = (2, 3, 8, 9)
) -> None:
    w, h = size
    a = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a, mode="L").save(path)


def make_category(
    root: Path,
    name: str = "widget",
    ext: str = ".png",
    mask_suffix: str = "_mask",
    masks: bool = True,
    size: tuple[int, int] = (20, 16),
    mode: str = "RGB",
    n_train: int = 3,
) -> Path:
    """A tiny MVTec-layout category: 3 train, 2 good + 2 crack + 1 scratch test images."""
    c = root / name
    for i in range(n_train):
        _img(c / "train" / "good" / f"{i:03d}{ext}", size, mode, seed=i)
    for i in range(2):
        _img(c / "test" / "good" / f"{i:03d}{ext}", size, mode, seed=10 + i)
    for defect, n in (("crack", 2), ("scratch", 1)):
        for i in range(n):
            _img(c / "test" / defect / f"{i:03d}{ext}", size, mode, seed=20 + i)
            if masks:
                _mask(c / "ground_truth" / defect / f"{i:03d}{mask_suffix}.png", size)
    return c


# --------------------------------------------------------------------------------------------
# layouts that must load
# --------------------------------------------------------------------------------------------


def test_official_layout(tmp_path: Path) -> None:
    make_category(tmp_path)
    cat = find_category(tmp_path, "widget")
    assert isinstance(cat, Category) and cat.has_masks
    assert len(cat.train) == 3 and len(cat.test) == 5
    assert cat.defects == ["good", "crack", "scratch"]
    for s in cat.test:
        assert s.label == (0 if s.defect == "good" else 1)
        if s.defect == "good":
            assert s.mask_path is None
        else:
            assert s.mask_path is not None and s.mask_path.name == s.path.stem + "_mask.png"
    assert list_categories(tmp_path) == ["widget"]


@pytest.mark.parametrize("ext,mode", [(".jpg", "RGB"), (".png", "L"), (".bmp", "RGB"), (".tif", "L")])
def test_variants_masks_without_suffix_formats_modes(tmp_path: Path, ext: str, mode: str) -> None:
    make_category(tmp_path, ext=ext, mask_suffix="", mode=mode, size=(23, 17))
    cat = find_category(tmp_path, "widget")
    assert cat.has_masks
    ds = MVTecDataset(cat, "test", 12)
    item = ds[ds.labels.index(1)]
    assert item["image"].shape == (3, 12, 12) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    if mode == "L":  # grayscale becomes RGB with three equal channels
        assert torch.equal(item["image"][0], item["image"][1])
    assert item["mask"].shape == (1, 12, 12)
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}


def test_no_ground_truth_folder_is_image_level_only(tmp_path: Path) -> None:
    make_category(tmp_path, masks=False)
    cat = find_category(tmp_path, "widget")
    assert not cat.has_masks
    assert all(s.mask_path is None for s in cat.test)
    ds = MVTecDataset(cat, "test", 8)
    defective = [ds[i] for i, y in enumerate(ds.labels) if y == 1]
    assert defective and all(d["mask"].sum() == 0 for d in defective)
    info = inspect_category(tmp_path, "widget")
    assert info["masks"] == 0 and info["test"] == 5


def test_load_image_resizes_and_keeps_content(tmp_path: Path) -> None:
    # A non-square image, left half black, right half white: resizing keeps the two halves.
    a = np.zeros((10, 30, 3), np.uint8)
    a[:, 15:] = 255
    Image.fromarray(a).save(tmp_path / "x.png")
    t = load_image(tmp_path / "x.png", 16)
    assert t.shape == (3, 16, 16)
    assert t[:, :, :6].max() < 0.05 and t[:, :, 10:].min() > 0.95
    t0 = load_image(tmp_path / "x.png", None)
    assert t0.shape == (3, 10, 30)


def test_load_mask_binarised(tmp_path: Path) -> None:
    a = np.zeros((40, 40), np.uint8)
    a[0:20, 0:20] = 255  # defect
    a[20:40, 20:40] = 100  # below half scale: not a defect
    a[0:20, 20:40] = 200  # above half scale: a defect
    Image.fromarray(a).save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png", 10)
    assert m.shape == (10, 10)
    assert set(m.unique().tolist()) == {0.0, 1.0}
    assert m[:5, :5].min() == 1 and m[5:, 5:].max() == 0 and m[:5, 5:].min() == 1 and m[5:, :5].max() == 0
    # a 0/1 mask is also understood
    Image.fromarray((a == 255).astype(np.uint8)).save(tmp_path / "m01.png")
    expected = torch.zeros(10, 10)
    expected[:5, :5] = 1
    assert torch.equal(load_mask(tmp_path / "m01.png", 10), expected)


def _save_mask(path: Path, m: np.ndarray) -> Path:
    Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(path)
    return path


def _nearest(m: np.ndarray, size: int) -> np.ndarray:
    """The old loader: PIL nearest neighbour on the binary mask."""
    return np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) >= 128


def test_tiny_defects_survive_shrinking(tmp_path: Path) -> None:
    from scipy import ndimage

    n, S = 256, 48
    f = n / S
    m = np.zeros((n, n), bool)
    m[100, 201] = True  # a one-pixel speck
    m[31:34, 147:150] = True  # a 3x3 pit
    # the case is discriminating: nearest-neighbour shrinking loses both defects
    assert not _nearest(m, S).any()
    out = load_mask(_save_mask(tmp_path / "m.png", m), S).numpy() > 0
    labels, k = ndimage.label(out, structure=np.ones((3, 3)))
    assert k == 2 and out.sum() <= 4
    # component centres, in input pixels (output pixel i spans input [i * f, (i + 1) * f))
    centres = (np.array(ndimage.center_of_mass(out, labels, [1, 2])) + 0.5) * f
    for y, x in [(100.5, 201.5), (32.5, 148.5)]:  # defect centres, in input pixels
        d = np.abs(centres - [y, x]).max(1)
        assert d.min() <= f, (y, x, centres)  # within one output pixel of where it was
    # many specks, each its own region, none lost, at 48 (smoke) and 128 (cpu)
    rng = np.random.default_rng(0)
    m = np.zeros((n, n), bool)
    pts = [(int(yy) + rng.integers(0, 8), int(xx) + rng.integers(0, 8))
           for yy in range(4, 240, 24) for xx in range(4, 240, 24)]
    for yy, xx in pts:
        m[yy, xx] = True
    path = _save_mask(tmp_path / "specks.png", m)
    for size in (48, 128):
        out = load_mask(path, size).numpy() > 0
        assert ndimage.label(out, structure=np.ones((3, 3)))[1] == len(pts)
        g = n / size
        for yy, xx in pts:
            assert out[int((yy + 0.5) // g), int((xx + 0.5) // g)], (size, yy, xx)
    assert not _nearest(m, 48).all()  # (nearest loses most of them)


def test_shrunk_mask_keeps_its_area(tmp_path: Path) -> None:
    yy, xx = np.mgrid[:256, :256]
    shapes = {
        "disc": (yy - 117.3) ** 2 + (xx - 140.8) ** 2 <= 61.0**2,
        "box": (yy >= 37) & (yy < 151) & (xx >= 19) & (xx < 203),
        "band": np.abs(yy - 0.6 * xx - 50) < 9,
    }
    for name, m in shapes.items():
        path = _save_mask(tmp_path / f"{name}.png", m)
        for S in (48, 100, 128):
            out = load_mask(path, S).numpy()
            area = out.mean() * 256 * 256
            assert abs(area - m.sum()) <= 0.05 * m.sum(), (name, S, area, int(m.sum()))


def test_mask_of_target_size_is_unchanged(tmp_path: Path) -> None:
    m = np.random.default_rng(1).random((48, 48)) < 0.1  # many isolated pixels
    path = _save_mask(tmp_path / "m.png", m)
    assert np.array_equal(load_mask(path, 48).numpy() > 0, m)
    assert np.array_equal(load_mask(path, None).numpy() > 0, m)


def test_growing_a_mask_is_nearest_neighbour(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for h, w, S in [(10, 10, 40), (7, 7, 48), (20, 13, 48), (33, 45, 128)]:
        m = rng.random((h, w)) < 0.3
        m[0, 0] = True
        expected = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((S, S), Image.NEAREST)) >= 128
        assert np.array_equal(load_mask(_save_mask(tmp_path / "m.png", m), S).numpy() > 0, expected), (h, w, S)


def test_mask_and_image_share_the_grid(tmp_path: Path) -> None:
    # A non-square image with a white L-shape on black, its mask the same L: after resizing both to
    # 48x48 the mask covers the bright pixels (a flip, transpose or half-pixel shift would not).
    a = np.zeros((120, 200), bool)
    a[23:71, 37:91] = True
    a[60:100, 37:160] = True
    Image.fromarray(a.astype(np.uint8) * 255).convert("RGB").save(tmp_path / "img.png")
    _save_mask(tmp_path / "mask.png", a)
    for S in (48, 128, 256):
        img = load_image(tmp_path / "img.png", S).mean(0) > 0.5
        mask = load_mask(tmp_path / "mask.png", S) > 0
        assert img.shape == mask.shape == (S, S)
        iou = (img & mask).sum().item() / (img | mask).sum().item()
        assert iou >= 0.95, (S, iou)


def test_dataset_items_and_max_images(tmp_path: Path) -> None:
    make_category(tmp_path, n_train=5)
    cat = find_category(tmp_path, "widget")
    train = MVTecDataset(cat, "train", 8, max_images=2)
    assert [Path(train[i]["path"]).name for i in range(len(train))] == ["000.png", "001.png"]
    test = MVTecDataset(cat, "test", 8, max_images=1)  # one per defect type
    assert sorted(test[i]["defect"] for i in range(len(test))) == ["crack", "good", "scratch"]
    for i in range(len(test)):
        it = test[i]
        assert set(it) == {"image", "mask", "label", "defect", "path"}
        assert isinstance(it["label"], int) and isinstance(it["path"], str)
        if it["label"] == 1:
            assert it["mask"].sum() > 0
        else:
            assert it["mask"].sum() == 0
    with pytest.raises(GlanceError):
        MVTecDataset(cat, "val", 8)


# --------------------------------------------------------------------------------------------
# bad input: one-line messages that name the file
# --------------------------------------------------------------------------------------------


def _one_line_naming(err: pytest.ExceptionInfo, needle: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    assert needle in msg, msg
    return msg


def test_corrupt_image(tmp_path: Path) -> None:
    c = make_category(tmp_path)
    bad = c / "test" / "crack" / "001.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DatasetError) as e:
        find_category(tmp_path, "widget")
    _one_line_naming(e, str(bad))


def test_truncated_image_found_by_inspect(tmp_path: Path) -> None:
    c = make_category(tmp_path, size=(64, 64))
    bad = c / "train" / "good" / "001.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # header intact, pixels missing
    with pytest.raises(DatasetError) as e:
        inspect_category(tmp_path, "widget")
    msg = _one_line_naming(e, str(bad))
    assert "not a readable image" in msg
    with pytest.raises(DatasetError):
        load_image(bad, 8)


def test_empty_train_folder(tmp_path: Path) -> None:
    c = make_category(tmp_path)
    for p in (c / "train" / "good").iterdir():
        p.unlink()
    (c / "train" / "good" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError) as e:
        find_category(tmp_path, "widget")
    msg = _one_line_naming(e, str(c / "train" / "good"))
    assert "no training images" in msg


def test_mask_size_differs(tmp_path: Path) -> None:
    c = make_category(tmp_path)
    bad = c / "ground_truth" / "scratch" / "000_mask.png"
    _mask(bad, size=(10, 10), box=(1, 1, 3, 3))
    with pytest.raises(DatasetError) as e:
        find_category(tmp_path, "widget")
    msg = _one_line_naming(e, str(bad))
    assert "10x10" in msg and "20x16" in msg


def test_defect_image_without_mask(tmp_path: Path) -> None:
    c = make_category(tmp_path)
    (c / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DatasetError) as e:
        find_category(tmp_path, "widget")
    msg = _one_line_naming(e, str(c / "test" / "crack" / "001.png"))
    assert "no mask" in msg


def test_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "holiday" / "photos").mkdir(parents=True)
    with pytest.raises(DatasetError) as e:
        find_category(tmp_path, "holiday")
    msg = _one_line_naming(e, str(tmp_path / "holiday"))
    assert "train/good" in msg
    with pytest.raises(DatasetError) as e:
        find_category(tmp_path / "nowhere", "x")
    _one_line_naming(e, str(tmp_path / "nowhere"))


def test_wrong_category_lists_categories(tmp_path: Path) -> None:
    make_category(tmp_path, "widget")
    make_category(tmp_path, "gadget")
    with pytest.raises(DatasetError) as e:
        find_category(tmp_path, "widgit")
    msg = _one_line_naming(e, "'widgit'")
    assert "gadget, widget" in msg


# --------------------------------------------------------------------------------------------
# real data (skipped when the shared folder is absent)
# --------------------------------------------------------------------------------------------


def test_shared_bottle(shared_bottle: Path) -> None:
    info = inspect_category(shared_bottle.parent, "bottle")
    assert (info["train"], info["test"], info["masks"]) == (209, 83, 63)
    assert info["defects"] == {"good": 20, "broken_large": 20, "broken_small": 22, "contamination": 21}
    cat = find_category(shared_bottle.parent, "bottle")
    ds = MVTecDataset(cat, "test", 48, max_images=2)
    assert len(ds) == 8
    items = [ds[i] for i in range(len(ds))]
    assert all(it["mask"].sum() > 0 for it in items if it["label"] == 1)
    assert all(it["mask"].sum() == 0 for it in items if it["label"] == 0)


def test_shared_hazelnut(shared_hazelnut: Path) -> None:
    info = inspect_category(shared_hazelnut.parent, "hazelnut")
    assert (info["train"], info["test"], info["masks"]) == (28, 23, 17)
    assert [512, 522] in info["sizes"]
    cat = find_category(shared_hazelnut.parent, "hazelnut")
    odd = next(s for s in cat.train if Image.open(s.path).size == (512, 522))
    assert load_image(odd.path, 48).shape == (3, 48, 48)
    defective = [s for s in cat.test if s.label]
    assert all(s.mask_path is not None and s.mask_path.name == s.path.stem + ".png" for s in defective)


def test_sixteen_bit_image_and_mask(tmp_path: Path) -> None:
    a = np.zeros((8, 8), np.uint16)
    a[:, 4:] = 65535
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    t = load_image(tmp_path / "g16.png", None)
    assert t.shape == (3, 8, 8) and t[:, :, :4].max() == 0 and t[:, :, 4:].min() == 1
    assert torch.equal(load_mask(tmp_path / "g16.png", None), (torch.arange(8) >= 4).float().expand(8, 8))


def test_dataloader_batches(tmp_path: Path) -> None:
    make_category(tmp_path)
    ds = MVTecDataset(find_category(tmp_path, "widget"), "test", 8)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch["image"].shape == (5, 3, 8, 8) and batch["mask"].shape == (5, 1, 8, 8)
    assert batch["label"].tolist() == [0, 0, 1, 1, 1] and batch["defect"][0] == "good"
