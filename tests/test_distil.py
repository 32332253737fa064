"""The long distillation (``glance-lite pretrain``) and the shipped Local-Net weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import glance_lite.models.shipped as shipped
import glance_lite.models.teachers as teachers
from glance_lite.train.distil import DistilSettings, distil, lr_schedule, split_corpus
from glance_lite.common.fileio import GlanceError
from glance_lite.common.presets import get_preset
from glance_lite.train.training import pretrain_local

TINY = DistilSettings(steps=6, n_patches=48, batch_size=8, lr=3e-4, warmup=2, n_heldout=16, eval_every=3, chunk=32)


def _ship_to(wdir: Path, work: Path, prov: dict, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Copy a distilled pair into ``wdir`` and make it the package's shipped weights for the test."""
    wdir.mkdir()
    for ext in (".pt", ".json"):
        (wdir / f"{prov['name']}{ext}").write_bytes((work / f"{prov['name']}{ext}").read_bytes())
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", wdir)
    return wdir


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("distil")
    prov = distil(get_preset("smoke"), out / "work", TINY, progress=False, command="test")
    return out / "work", prov


def test_provenance_describes_what_ships(distilled: tuple[Path, dict]) -> None:
    work, prov = distilled
    pt = work / f"{prov['name']}.pt"
    assert prov["sha256"] == shipped.sha256_file(pt) and prov["size_bytes"] == pt.stat().st_size
    assert [c["step"] for c in prov["curve"]] == [3, 6]
    assert prov["steps"] == 6 and prov["teacher_input_size"] == 64 and prov["patch_size"] == 17
    held, train = set(prov["corpus"]["heldout_photos"]), set(prov["corpus"]["train_photos"])
    assert len(held) >= 2 and not held & train
    for key in ("distillation", "compactness"):
        assert 0 < prov["heldout"][key] < 10
    # float16 on disk
    raw = torch.load(pt, weights_only=True)
    assert all(v.dtype == torch.float16 for v in raw["local_net"].values())


def test_rerun_resumes_without_recomputing(distilled: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    work, prov = distilled

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("teacher features recomputed")

    monkeypatch.setattr(teachers, "teacher_features", boom)
    again = distil(get_preset("smoke"), work, TINY, progress=False, command="test")
    assert again["sha256"] == prov["sha256"] and again["curve"] == prov["curve"]


def test_fit_starts_from_shipped_weights(distilled: tuple[Path, dict], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    work, prov = distilled
    _ship_to(tmp_path / "weights", work, prov, monkeypatch)
    monkeypatch.setattr(teachers, "teacher_features", lambda *a, **k: (_ for _ in ()).throw(AssertionError("distilled")))
    p = get_preset("smoke", pretrained="shipped")
    trainer, hist, _ = pretrain_local(p, progress=False, out_dir=tmp_path / "pre")
    raw = torch.load(work / f"{prov['name']}.pt", weights_only=True)
    for k, v in trainer.local_net.state_dict().items():
        assert torch.equal(v, raw["local_net"][k].float())
    assert trainer.source["kind"] == "shipped" and trainer.source["sha256"] == prov["sha256"]
    assert [r["step"] for r in hist.records] == [c["step"] for c in prov["curve"]]
    assert hist.final("distillation") == pytest.approx(sum(c["train_distillation"] for c in prov["curve"]) / len(prov["curve"]))
    # "none" ignores them and distils here (which calls the teacher)
    with pytest.raises(AssertionError, match="distilled"):
        pretrain_local(get_preset("smoke", pretrained="none"), progress=False, out_dir=tmp_path / "pre2")


def test_damaged_or_incompatible_weights(distilled: tuple[Path, dict], tmp_path: Path) -> None:
    work, prov = distilled
    for ext in (".pt", ".json"):
        (tmp_path / f"{prov['name']}{ext}").write_bytes((work / f"{prov['name']}{ext}").read_bytes())
    found = shipped.find_shipped(17, 128, prov["teacher"], 64, folder=tmp_path)
    assert found is not None
    assert shipped.find_shipped(17, 128, prov["teacher"], 96, folder=tmp_path) is None
    assert shipped.find_shipped(33, 128, prov["teacher"], 64, folder=tmp_path) is None
    data = bytearray(found.read_bytes())
    data[-10] ^= 0xFF
    found.write_bytes(bytes(data))
    with pytest.raises(GlanceError, match=prov["name"]):
        shipped.load_shipped(found)


def test_shipped_weights_in_the_package_are_intact() -> None:
    entries = shipped.shipped_entries()
    for e in entries:
        assert shipped.sha256_file(e["path"]) == e["sha256"], e["path"]
        assert e["heldout"]["distillation"] < 1.0
        assert Path(e["path"]).stat().st_size < 8 * 2**20  # small enough for git


def test_lr_schedule_warms_up_then_decays_to_a_tenth() -> None:
    lrs = [lr_schedule(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_schedule(100, 100, 1.0, 10) == pytest.approx(0.1)


def test_split_corpus_holds_out_whole_photographs() -> None:
    names = [f"p{i}" for i in range(23)]
    train, held = split_corpus(names, 8)
    assert held == [3, 11, 19] and sorted(train + held) == list(range(23))
    assert len(split_corpus(names[:5], 8)[1]) == 2
    with pytest.raises(GlanceError):
        split_corpus(names[:2], 8)


def test_pretrain_cli_and_bad_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from glance_lite.cli import main

    assert main(["pretrain", "--preset", "smoke", "--out", str(tmp_path), "--steps", "0"]) == 1
    assert "must be positive" in capsys.readouterr().err


def test_init_continues_from_earlier_weights(distilled: tuple[Path, dict], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    work, prov = distilled
    first = work / f"{prov['name']}.pt"
    seen: list[dict] = []
    real_train = distil.__globals__["LocalTrainer"].train

    def spy(self, *a, **k):  # the networks' weights when training starts
        if not seen:
            seen.append({k2: v.clone() for k2, v in self.local_net.state_dict().items()})
        return real_train(self, *a, **k)

    monkeypatch.setattr(distil.__globals__["LocalTrainer"], "train", spy)
    more = distil(get_preset("smoke"), tmp_path / "more", TINY, progress=False, command="test", init=first)
    raw = torch.load(first, weights_only=True)
    assert all(torch.equal(seen[0][k], v.float()) for k, v in raw["local_net"].items())
    assert more["init"]["sha256"] == prov["sha256"] and more["init"]["curve"] == prov["curve"]
    assert more["total_steps"] == 2 * TINY["steps"] and more["settings"]["init"] == prov["sha256"]
    assert more["sha256"] != prov["sha256"]
    # the whole learning curve: the first run's, then this one's counted on from it
    whole = shipped.learning_curve(more)
    assert [c["step"] for c in whole] == [3, 6, 9, 12] and [c["run"] for c in whole] == [0, 0, 1, 1]
    assert whole[2]["heldout_distillation"] == more["curve"][0]["heldout_distillation"]
    # without init the same settings start from random weights, so the first run is not "already distilled"
    assert "init" not in prov["settings"] and prov["total_steps"] == TINY["steps"]


def test_init_refuses_missing_or_incompatible_weights(distilled: tuple[Path, dict], tmp_path: Path) -> None:
    work, prov = distilled
    with pytest.raises(GlanceError, match="no such weights file"):
        distil(get_preset("smoke"), tmp_path / "a", TINY, progress=False, init=tmp_path / "missing.pt")
    with pytest.raises(GlanceError, match="distilled for"):
        distil(get_preset("smoke", patch_size=33), tmp_path / "b", TINY, progress=False,
               init=work / f"{prov['name']}.pt")


def test_distillation_floor_is_the_best_linear_decoder_can_do() -> None:
    from glance_lite.train.distil import distillation_floor

    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 20, generator=g)
    tr = torch.randn(2000, 4, generator=g) @ w + 0.01 * torch.randn(2000, 20, generator=g)
    ho = torch.randn(500, 4, generator=g) @ w + 0.01 * torch.randn(500, 20, generator=g)
    mean, std = tr.mean(0), tr.std(0)
    f = distillation_floor(tr, ho, mean, std, dims=(1, 2, 4, 8))
    # four latent dimensions explain everything: the floor vanishes at n = 4, not before
    assert f["train"][2] < 1e-3 and f["heldout"][2] < 1e-3
    assert f["train"][0] > f["train"][1] > 0.01
    assert f["heldout_mean_predictor"] == pytest.approx(1.0, abs=0.15)
    # no 2-d descriptor, however computed, does better with a linear decoder (least squares, with bias)
    tn = (tr - mean) / std
    for _ in range(5):
        z = torch.cat([tr @ torch.randn(20, 2, generator=g), torch.ones(len(tr), 1)], 1)
        sol = torch.linalg.lstsq(z.double(), tn.double()).solution
        mse = float((z.double() @ sol - tn.double()).pow(2).mean())
        assert mse >= f["train"][1] - 1e-9
    # widths beyond the teacher's dimension are capped, once each (a 152-d teacher, 256 and 512 asked for)
    capped = distillation_floor(tr, ho, mean, std, dims=(8, 20, 32, 64))
    assert capped["dims"] == [8, 20] and len(capped["heldout"]) == 2 and capped["train"][1] < 1e-9


def test_old_provenance_gains_the_floor_without_recomputing(distilled: tuple[Path, dict], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import shutil

    work, prov = distilled
    assert prov["floor"]["dims"][:4] == [16, 32, 64, 128] and prov["floor"]["n_heldout"] == TINY["n_heldout"]
    copy = tmp_path / "old"
    shutil.copytree(work, copy)
    js = copy / f"{prov['name']}.json"
    old = json.loads(js.read_text())
    del old["floor"]
    js.write_text(json.dumps(old))
    monkeypatch.setattr(teachers, "teacher_features", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = distil(get_preset("smoke"), copy, TINY, progress=False, command="test")
    assert again["floor"]["heldout"] == pytest.approx(prov["floor"]["heldout"])
    assert json.loads(js.read_text())["floor"]["train"] == pytest.approx(prov["floor"]["train"])


def test_fit_refuses_a_run_made_from_other_shipped_weights(distilled: tuple[Path, dict], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A run fitted from one shipped Local-Net is not resumed on top of another (e.g. after an upgrade)."""
    import json

    from glance_lite.train.training import fit
    from test_cli import _tiny_dataset

    work, prov = distilled
    wdir = _ship_to(tmp_path / "weights", work, prov, monkeypatch)
    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    root = _tiny_dataset(tmp_path / "ds")
    p = get_preset("smoke", pretrained="shipped")
    run = tmp_path / "run"
    fit(root, "widget", run, p, progress=False)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["local_net_pretrained"]["sha256"] == prov["sha256"]
    fit(root, "widget", run, p, progress=False)  # same weights: resumes (nothing left to do)
    # other weights under the same name (a new release): refused, naming the run folder
    raw = torch.load(wdir / f"{prov['name']}.pt", weights_only=True)
    raw["local_net"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in raw["local_net"].items()}
    torch.save(raw, wdir / f"{prov['name']}.pt")
    meta = json.loads((wdir / f"{prov['name']}.json").read_text())
    meta["sha256"] = shipped.sha256_file(wdir / f"{prov['name']}.pt")
    (wdir / f"{prov['name']}.json").write_text(json.dumps(meta))
    with pytest.raises(GlanceError, match=str(run.name)):
        fit(root, "widget", run, p, progress=False)


def test_extra_corpus_only_trains_and_keeps_the_held_out_photographs(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from glance_lite.train.distil import _corpus, extra_corpus_digest

    extra = tmp_path / "more"
    (extra / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(extra / "sub" / f"p{i}.png")
    imgs0, names0, tr0, ho0, n0 = _corpus(None, None, 8)
    imgs, names, tr, ho, n = _corpus(None, extra, 8)
    assert (n0, n) == (0, 3)
    assert ho == ho0 and [names[i] for i in ho] == [names0[i] for i in ho0]
    assert len(imgs) == len(imgs0) + 3 and tr == tr0 + [len(imgs0), len(imgs0) + 1, len(imgs0) + 2]
    assert names[-3:] == ["more/sub/p0.png", "more/sub/p1.png", "more/sub/p2.png"]
    assert int(imgs[-1].mean()) == 120
    d = extra_corpus_digest(extra)
    Image.fromarray(np.full((40, 50, 3), 7, np.uint8)).save(extra / "sub" / "p1.png")
    assert extra_corpus_digest(extra) != d
    assert DistilSettings(extra_corpus=d)["extra_corpus"] == d and "extra_corpus" not in DistilSettings()


def test_glance_weights_points_fit_at_other_weights(distilled: tuple[Path, dict], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    work, prov = distilled
    p = get_preset("smoke")
    args = (p.patch_size, p.descriptor_dim, prov["teacher"], p.teacher_input_size)
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path / "empty")
    monkeypatch.delenv("GLANCE_WEIGHTS", raising=False)
    assert shipped.find_shipped(*args) is None and shipped.shipped_entries() == []
    monkeypatch.setenv("GLANCE_WEIGHTS", str(work))
    assert shipped.find_shipped(*args) == work / f"{prov['name']}.pt"
    assert [e["sha256"] for e in shipped.shipped_entries()] == [prov["sha256"]]
