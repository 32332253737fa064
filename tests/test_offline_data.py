"""Tests of the offline dataset: layout, exact masks, logical defects, grey and varying-size
categories, determinism, regeneration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glance_lite.data import offline_data as od
from glance_lite.common.fileio import DatasetError, GlanceError
from glance_lite.data.offline_data import (
    GREY_CATEGORIES,
    OFFLINE_CATEGORIES,
    OFFLINE_DEFECTS,
    VARIABLE_SIZE_CATEGORIES,
    ensure_offline,
    make_offline,
    read_manifest,
    render_sample,
)

SMALL = dict(size=64, n_train=3, n_test_good=2, n_test_defect=2)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return make_offline(tmp_path_factory.mktemp("offline") / "ds", seed=0, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# layout and manifest
# --------------------------------------------------------------------------------------------


def test_categories_cover_textures_and_objects():
    kinds = set(OFFLINE_CATEGORIES.values())
    assert kinds == {"texture", "object"}
    assert sum(k == "texture" for k in OFFLINE_CATEGORIES.values()) >= 2
    assert sum(k == "object" for k in OFFLINE_CATEGORIES.values()) >= 2
    assert set(OFFLINE_DEFECTS) == set(OFFLINE_CATEGORIES)
    for name, kind in OFFLINE_CATEGORIES.items():
        if kind == "texture" and name not in GREY_CATEGORIES:
            assert {"stain", "scratch", "cut", "hole"} <= set(OFFLINE_DEFECTS[name])
    # the failure cases of real data: a grey fine texture with tiny defects, images of varying size
    assert "mesh" in GREY_CATEGORIES and "plank" in VARIABLE_SIZE_CATEGORIES
    assert GREY_CATEGORIES | VARIABLE_SIZE_CATEGORIES <= set(OFFLINE_CATEGORIES)
    assert OFFLINE_CATEGORIES["mesh"] == OFFLINE_CATEGORIES["plank"] == "texture"


def test_layout_masks_and_manifest(small_root):
    m = json.loads((small_root / "manifest.json").read_text())
    assert (m["seed"], m["size"], m["version"]) == (0, 64, od.GENERATOR_VERSION)
    assert set(m["categories"]) == set(OFFLINE_CATEGORIES)
    for name, defects in OFFLINE_DEFECTS.items():
        cat = small_root / name
        assert len(list((cat / "train" / "good").glob("*.png"))) == 3
        assert len(list((cat / "test" / "good").glob("*.png"))) == 2
        assert not (cat / "ground_truth" / "good").exists()
        for d in defects:
            imgs = sorted((cat / "test" / d).glob("*.png"))
            assert [p.name for p in imgs] == ["000.png", "001.png"]
            for p in imgs:
                mp = cat / "ground_truth" / d / f"{p.stem}_mask.png"
                with Image.open(p) as im, Image.open(mp) as mk:
                    assert im.mode == ("L" if name in GREY_CATEGORIES else "RGB") and mk.mode == "L"
                    assert im.size == mk.size
                    if name not in VARIABLE_SIZE_CATEGORIES:
                        assert im.size == (64, 64)
                    mask = np.asarray(mk)
                assert set(np.unique(mask).tolist()) == {0, 255}, f"{mp} is not a non-empty {{0,255}} mask"
        assert m["categories"][name]["counts"] == {
            "train/good": 3, "test/good": 2, **{f"test/{d}": 2 for d in defects}}


def test_good_images_vary(small_root):
    for name in OFFLINE_CATEGORIES:
        a, b = (np.asarray(Image.open(p), np.float32) for p in sorted((small_root / name / "train" / "good").glob("*.png"))[:2])
        h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])  # plank images differ in size
        assert np.abs(a[:h, :w] - b[:h, :w]).mean() > 1.0, f"{name}: two good images are (almost) identical"


# --------------------------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(small_root, tmp_path):
    again = make_offline(tmp_path / "again", seed=0, **SMALL)
    assert _files(again) == _files(small_root)


def test_other_seed_gives_other_images(small_root, tmp_path):
    other = make_offline(tmp_path / "other", seed=1, **SMALL)
    for name in OFFLINE_CATEGORIES:
        for rel in ("train/good/000.png", f"test/{OFFLINE_DEFECTS[name][0]}/000.png"):
            assert (other / name / rel).read_bytes() != (small_root / name / rel).read_bytes()
    assert read_manifest(other)["seed"] == 1


# --------------------------------------------------------------------------------------------
# exact masks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("category,defect", [(c, d) for c, ds in OFFLINE_DEFECTS.items() for d in ds])
def test_mask_is_exactly_the_changed_pixels(category, defect):
    for index in range(3):
        s = render_sample(category, defect, index, size=96)
        changed = np.any(s.clean != s.reference, axis=-1)
        assert s.mask.any(), f"{category}/{defect}/{index}: empty mask"
        assert not (changed & ~s.mask).any(), "a pixel changed outside the mask"
        # the mask is tight: (nearly) every masked pixel really differs from the defect-free render
        assert (changed & s.mask).sum() >= 0.9 * s.mask.sum()
        assert s.image.shape == s.clean.shape == s.reference.shape == s.mask.shape + (3,)
        if category not in VARIABLE_SIZE_CATEGORIES:
            assert s.mask.shape == (96, 96)


def test_good_images_have_empty_masks():
    for category in OFFLINE_CATEGORIES:
        s = render_sample(category, "good", 0, size=64)
        assert not s.mask.any() and s.mask.shape == s.image.shape[:2]
        assert np.array_equal(s.clean, s.reference)


# --------------------------------------------------------------------------------------------
# mesh: a grey, fine, regular texture with defects of a few pixels
# --------------------------------------------------------------------------------------------


def test_mesh_is_grey_in_memory_on_disk_and_through_the_loader(small_root):
    from glance_lite.data import mvtec

    for defect in ["good", *OFFLINE_DEFECTS["mesh"]]:
        s = render_sample("mesh", defect, 1, size=64)
        for arr in (s.image, s.clean, s.reference):
            assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
    cat = mvtec.find_category(small_root, "mesh")
    for sample in cat.train[:1] + cat.test:
        with Image.open(sample.path) as im:
            assert im.mode == "L", sample.path
    img = mvtec.load_image(cat.test[-1].path, 32)  # the loader turns 'L' into RGB
    assert img.shape == (3, 32, 32) and bool((img[0] == img[1]).all() and (img[0] == img[2]).all())
    # the written pixels are the rendered ones
    s = render_sample("mesh", OFFLINE_DEFECTS["mesh"][0], 0, size=64)
    on_disk = np.asarray(Image.open(small_root / "mesh" / "test" / OFFLINE_DEFECTS["mesh"][0] / "000.png"))
    assert np.array_equal(on_disk, s.image[..., 0])


def test_mesh_is_a_fine_regular_texture():
    # the strongest non-zero frequency of a good image is the wire period: about 8 px at 256x256
    for index in range(3):
        g = render_sample("mesh", "good", index, size=256, split="train").image[..., 0].astype(np.float64)
        spec = np.abs(np.fft.rfft2(g - g.mean()))
        spec[0, 0] = 0
        fy, fx = np.unravel_index(np.argmax(spec), spec.shape)
        fy = min(fy, 256 - fy)
        period = 256 / max(np.hypot(fy, fx), 1e-9)
        assert 5.0 <= period <= 12.0, f"dominant period {period:.1f} px"


@pytest.mark.parametrize("defect", OFFLINE_DEFECTS["mesh"])
def test_mesh_defects_are_a_few_pixels_and_exact(defect):
    from scipy import ndimage

    eight = np.ones((3, 3), bool)
    for index in range(6):
        s = render_sample("mesh", defect, index, size=256)
        assert s.mask.any(), f"mesh/{defect}/{index}: empty mask"
        labels, n = ndimage.label(s.mask, structure=eight)
        sizes = np.bincount(labels.ravel())[1:]
        assert sizes.max() <= 80, f"mesh/{defect}/{index}: a defect region of {sizes.max()} px"
        for sl in ndimage.find_objects(labels):
            assert max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) <= 26, (defect, index, sl)
        assert s.mask.sum() <= 100  # at most 0.15 % of the image
        # inside the mask every pixel differs from the defect-free rendering, outside none does
        changed = np.any(s.clean != s.reference, axis=-1)
        assert np.array_equal(changed, s.mask), f"mesh/{defect}/{index}: mask is not the changed pixels"


# --------------------------------------------------------------------------------------------
# plank: images of varying size and aspect ratio
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 256])
def test_plank_images_vary_in_size_and_aspect_ratio(size):
    shapes = [render_sample("plank", "good", i, size=size, split="train").image.shape[:2] for i in range(12)]
    shapes += [render_sample("plank", d, i, size=size).mask.shape for d in OFFLINE_DEFECTS["plank"] for i in range(3)]
    hs, ws = np.array([h for h, _ in shapes]), np.array([w for _, w in shapes])
    assert len(set(shapes)) >= 10 and len(set(np.round(ws / hs, 2))) >= 10
    assert (ws > hs).any() and (hs > ws).any()
    assert (np.maximum(ws / hs, hs / ws) >= 1.14).all(), "plank images must not be (nearly) square"
    assert hs.min() >= round(0.6 * size) - 1 and max(hs.max(), ws.max()) <= round(1.3 * size) + 1
    assert ws.min() >= round(0.6 * size) - 1


def test_plank_on_disk_and_through_the_loader(small_root, tmp_path):
    from glance_lite.data import mvtec

    sizes = set()
    for p in sorted((small_root / "plank").rglob("*.png")):
        with Image.open(p) as im:
            sizes.add(im.size)
    assert len(sizes) >= 5
    cat = mvtec.find_category(small_root, "plank")  # accepts masks the size of their non-square image
    for s in cat.test:
        if s.mask_path is None:
            continue
        with Image.open(s.path) as im, Image.open(s.mask_path) as mk:
            assert im.size == mk.size and im.size[0] != im.size[1]
        # the file's mask is the rendered mask of that image
        index = int(s.path.stem)
        r = render_sample("plank", s.defect, index, size=64)
        assert np.array_equal(np.asarray(Image.open(s.mask_path)) > 0, r.mask)
    ds = mvtec.MVTecDataset(cat, "test", image_size=40)
    for item in ds:
        assert item["image"].shape == (3, 40, 40) and item["mask"].shape == (1, 40, 40)
        assert (item["mask"].sum() > 0) == (item["label"] == 1)
    # the loader squeezes image and mask the same way: the resized mask lies where the image changed
    s = render_sample("plank", "stain", 0, size=128)
    for arr, name in ((s.image, "img.png"), (s.reference, "ref.png"), (s.mask.astype(np.uint8) * 255, "m.png")):
        Image.fromarray(arr).save(tmp_path / name)
    diff = (mvtec.load_image(tmp_path / "img.png", 48) - mvtec.load_image(tmp_path / "ref.png", 48)).abs().amax(0)
    m = mvtec.load_mask(tmp_path / "m.png", 48).bool()
    assert m.any() and (diff[m] > 0.05).float().mean() >= 0.9 and (diff[~m] > 0.3).float().mean() <= 0.01


def test_new_categories_are_deterministic():
    for cat, defect in [("mesh", "good"), ("mesh", "broken"), ("plank", "good"), ("plank", "scratch")]:
        a = render_sample(cat, defect, 2, seed=5, size=64)
        b = render_sample(cat, defect, 2, seed=5, size=64)
        c = render_sample(cat, defect, 2, seed=6, size=64)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
        assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


# --------------------------------------------------------------------------------------------
# logical defects: every part still looks normal, only its place (or colour) is wrong
# --------------------------------------------------------------------------------------------


def _rgb_histogram(img: np.ndarray) -> np.ndarray:
    packed = (img[..., 0].astype(np.int64) << 16) | (img[..., 1].astype(np.int64) << 8) | img[..., 2]
    return np.bincount(packed.ravel(), minlength=1 << 24)


@pytest.mark.parametrize("index", range(4))
def test_board_swap_is_a_permutation_of_parts(index):
    s = render_sample("board", "swapped", index, size=128)
    assert sorted(s.parts) == sorted(s.reference_parts) and s.parts != s.reference_parts
    # same parts, same pixels, other places: the colour histogram is unchanged pixel for pixel
    assert np.array_equal(_rgb_histogram(s.clean), _rgb_histogram(s.reference))
    assert not np.array_equal(s.clean, s.reference)


@pytest.mark.parametrize("index", range(4))
def test_board_misplaced_part_is_intact(index):
    s = render_sample("board", "misplaced", index, size=128)
    assert s.parts == s.reference_parts
    side = int(round(od._BOARD_TILE * 128))
    tiles = {name: od._board_tile(name, side) for name in s.parts}
    # every part appears, unchanged, somewhere in the defective image
    for name, tile in tiles.items():
        found = any(np.array_equal(s.clean[y:y + side, x:x + side], tile)
                    for y in range(128 - side + 1) for x in range(128 - side + 1)
                    if s.clean[y, x].tolist() == tile[0, 0].tolist())
        assert found, f"part {name} was altered, not just moved"


@pytest.mark.parametrize("defect", ["swapped", "recoloured"])
def test_cable_wires_keep_their_texture_and_take_a_good_colour(defect):
    from scipy import ndimage

    palette = {n: np.array(c, np.float64) for n, c in od._CABLE_COLOURS.items()}
    for index in range(3):
        s = render_sample("cable", defect, index, size=96)
        assert all(p in od._CABLE_ORDER for p in s.parts)
        if defect == "swapped":
            assert sorted(s.parts) == sorted(s.reference_parts) and s.parts != s.reference_parts
        else:
            assert len(set(s.parts)) == 2  # one colour now appears twice; no colour is new
        labels, n = ndimage.label(s.mask)
        assert n == (2 if defect == "swapped" else 1)
        for k in range(1, n + 1):
            region = labels == k
            c = s.clean[region].astype(np.float64)
            r = s.reference[region].astype(np.float64)
            # same shading pixel by pixel, only the base colour changed from one wire's to another's
            err = {(o, w): np.abs(c / palette[w] - r / palette[o]).mean() for o in palette for w in palette}
            (old, new), best = min(err.items(), key=lambda kv: kv[1])
            assert best < 0.02 and old != new, (old, new, best)


# --------------------------------------------------------------------------------------------
# ensure_offline and safety
# --------------------------------------------------------------------------------------------


def test_ensure_offline_generates_once_and_on_mismatch(tmp_path, monkeypatch):
    monkeypatch.setattr(od, "DEFAULT_COUNTS", {"train": 2, "test_good": 1, "test_defect": 1})
    root = tmp_path / "ens"
    calls = []
    real = od.make_offline

    def spy(*a, **k):
        calls.append(k.get("seed"))
        return real(*a, **k)

    monkeypatch.setattr(od, "make_offline", spy)
    assert ensure_offline(root, seed=0, size=48) == root
    assert ensure_offline(root, seed=0, size=48) == root
    assert calls == [0], "a complete dataset must not be regenerated"
    ensure_offline(root, seed=3, size=48)
    assert calls == [0, 3] and read_manifest(root)["seed"] == 3
    m = read_manifest(root)
    m["version"] = -1
    (root / "manifest.json").write_text(json.dumps(m))
    ensure_offline(root, seed=3, size=48)
    assert len(calls) == 3 and read_manifest(root)["version"] == od.GENERATOR_VERSION


def test_default_root_depends_on_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("GLANCE_DATA", str(tmp_path))
    assert od.default_offline_root() == tmp_path / "offline"
    assert od.default_offline_root(seed=1, size=64) != tmp_path / "offline"


def test_refuses_to_overwrite_foreign_data(tmp_path):
    (tmp_path / "brick" / "train" / "good").mkdir(parents=True)
    (tmp_path / "brick" / "train" / "good" / "mine.png").write_bytes(b"precious")
    with pytest.raises(DatasetError, match="refusing"):
        make_offline(tmp_path, **SMALL)
    assert (tmp_path / "brick" / "train" / "good" / "mine.png").read_bytes() == b"precious"


def test_bad_arguments_raise_glance_errors():
    with pytest.raises(GlanceError, match="unknown offline category"):
        render_sample("carpet")
    with pytest.raises(GlanceError, match="no defect"):
        render_sample("brick", "swapped")
    with pytest.raises(GlanceError, match="at least 32"):
        render_sample("cable", size=8)
    with pytest.raises(GlanceError, match="n_train"):
        make_offline("/nonexistent-never-written", n_train=0)


# --------------------------------------------------------------------------------------------
# the MVTec loader reads the offline set
# --------------------------------------------------------------------------------------------


def test_loads_with_mvtec_loader(small_root):
    mvtec = pytest.importorskip("glance_lite.data.mvtec")
    for name, defects in OFFLINE_DEFECTS.items():
        cat = mvtec.find_category(small_root, name)
        assert cat.has_masks and len(cat.train) == 3
        info = mvtec.inspect_category(small_root, name)
        assert info["defects"] == {"good": 2, **{d: 2 for d in sorted(defects)}}
        ds = mvtec.MVTecDataset(cat, "test", image_size=32)
        for item in ds:
            assert item["image"].shape == (3, 32, 32)
            if item["defect"] == "good":
                assert item["label"] == 0 and item["mask"].sum() == 0
            else:
                assert item["label"] == 1 and item["mask"].sum() > 0


def test_generated_files_get_ordinary_permissions(small_root):
    # mkdtemp/mkstemp make private 0700/0600 entries; what is moved into place follows the umask
    import os

    mask = os.umask(0)
    os.umask(mask)
    for p in [small_root / "manifest.json", small_root / "brick", small_root / "brick" / "train" / "good"]:
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        assert (p.stat().st_mode & 0o777) == want, (p, oct(p.stat().st_mode & 0o777), oct(want))
