"""What a chapter opened alone needs: the real MVTec category is found, or downloaded on the paper preset."""

from __future__ import annotations

from pathlib import Path

from glance_lite.experiments import chapters
from glance_lite.common.presets import get_preset

from test_cli import _tiny_dataset


def test_mvtec_root_downloads_only_for_the_paper_preset(tmp_path, monkeypatch):
    import glance_lite.data.download as dl

    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("GLANCE_SHARED", str(tmp_path / "no-shared"))
    calls = []

    def fake_download(out, categories=None, **kw):
        calls.append((Path(out), categories))
        _tiny_dataset(Path(out))  # writes out/widget in MVTec layout
        return Path(out)

    monkeypatch.setattr(dl, "download_mvtec", fake_download)
    assert chapters.mvtec_root("widget", get_preset("smoke")) is None and calls == []
    root = chapters.mvtec_root("widget", get_preset("paper"))
    assert root == tmp_path / "data" / "mvtec_ad" and calls == [(root, ["widget"])]
    assert chapters.mvtec_root("widget", get_preset("smoke")) == root and len(calls) == 1  # found, not fetched


def test_mvtec_root_prefers_the_shared_data(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    _tiny_dataset(shared / "mvtec_ad")
    monkeypatch.setenv("GLANCE_SHARED", str(shared))
    monkeypatch.setenv("GLANCE_DATA", str(tmp_path / "data"))
    assert chapters.mvtec_root("widget", get_preset("paper")) == shared / "mvtec_ad"


def test_display_path_never_shows_an_absolute_path(tmp_path, monkeypatch):
    from glance_lite.common.paths import display_path, repo_root

    monkeypatch.setenv("GLANCE_SHARED", str(tmp_path))
    assert display_path(repo_root() / "data" / "offline") == "data/offline"
    assert display_path(tmp_path / "cifar10") == "<shared>/cifar10"
    assert display_path(f"npz arrays in {tmp_path / 'cifar10'}") == "npz arrays in <shared>/cifar10"
    assert display_path("torchvision") == "torchvision"
    assert not display_path("/somewhere/else/deep/file.png").startswith("/")


def test_live_caveat_only_at_the_smoke_preset():
    from glance_lite.common.presets import get_preset
    from glance_lite.experiments.chapters import live_caveat

    assert "say nothing about the method" in live_caveat(get_preset("smoke"))
    assert live_caveat(get_preset("cpu")) == "" and live_caveat(get_preset("paper")) == ""
