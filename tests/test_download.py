"""Downloads and extraction, all offline: file:// URLs and a tiny HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from glance_lite.data import download as dl
from glance_lite.data.download import download, download_mvtec, safe_extract, sha256sum
from glance_lite.common.fileio import GlanceError

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB, not a multiple of the 1 MiB chunk


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# --------------------------------------------------------------------------------------------
# a bounded local HTTP server that understands Range
# --------------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    log: list[tuple[str, str | None, int]] = []
    honour_range = True

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        data = self.files.get(self.path)
        rng = self.headers.get("Range")
        if data is None:
            self.log.append((self.path, rng, 0))
            self.send_error(404)
            return
        start = 0
        if rng and self.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.log.append((self.path, rng, 0))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        # log before sending: the client may finish reading before this thread runs again
        self.log.append((self.path, rng, len(body)))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {"files": {}, "log": [], "honour_range": True})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.timeout = 5
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=5)


# --------------------------------------------------------------------------------------------
# download()
# --------------------------------------------------------------------------------------------


def test_file_url_checksum_ok(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "a.bin"
    got = download(src.as_uri(), dest, _sha(PAYLOAD), progress=False)
    assert got == dest and dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "out" / "a.bin.part").exists()
    assert sha256sum(dest) == _sha(PAYLOAD)


def test_checksum_mismatch(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "a.bin"
    with pytest.raises(GlanceError, match="checksum mismatch"):
        download(src.as_uri(), dest, "0" * 64, progress=False)
    assert not dest.exists() and not (tmp_path / "a.bin.part").exists()


def test_skip_when_present_and_hash_matches(tmp_path: Path) -> None:
    dest = tmp_path / "a.bin"
    dest.write_bytes(PAYLOAD)
    # the URL does not exist: any attempt to fetch would fail
    missing = (tmp_path / "nope.bin").as_uri()
    assert download(missing, dest, _sha(PAYLOAD), progress=False) == dest
    # a present file with the wrong hash is fetched again (and here the fetch fails loudly)
    with pytest.raises(GlanceError, match="download failed"):
        download(missing, dest, _sha(b"other"), progress=False)
    assert dest.read_bytes() == PAYLOAD  # untouched


def test_no_checksum_warns_and_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "a.bin"
    download(src.as_uri(), dest, None, progress=False)
    err = capsys.readouterr().err
    assert "no checksum known" in err and _sha(PAYLOAD) in err
    assert (tmp_path / "a.bin.sha256").read_text().split()[0] == _sha(PAYLOAD)
    # the recorded hash is used next time: a corrupted file is detected and fetched again
    dest.write_bytes(b"corrupted")
    download(src.as_uri(), dest, None, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_resume_with_range(tmp_path: Path, server: tuple[str, type[_Handler]]) -> None:
    base, handler = server
    handler.files["/x.bin"] = PAYLOAD
    dest = tmp_path / "x.bin"
    half = len(PAYLOAD) // 3
    (tmp_path / "x.bin.part").write_bytes(PAYLOAD[:half])
    download(f"{base}/x.bin", dest, _sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert handler.log == [("/x.bin", f"bytes={half}-", len(PAYLOAD) - half)]


def test_resume_when_server_ignores_range(tmp_path: Path, server: tuple[str, type[_Handler]]) -> None:
    base, handler = server
    handler.honour_range = False
    handler.files["/x.bin"] = PAYLOAD
    (tmp_path / "x.bin.part").write_bytes(b"garbage that must not stay in front")
    download(f"{base}/x.bin", tmp_path / "x.bin", _sha(PAYLOAD), progress=False)
    assert (tmp_path / "x.bin").read_bytes() == PAYLOAD


def test_resume_complete_part_416(tmp_path: Path, server: tuple[str, type[_Handler]]) -> None:
    base, handler = server
    handler.files["/x.bin"] = PAYLOAD
    (tmp_path / "x.bin.part").write_bytes(PAYLOAD)
    download(f"{base}/x.bin", tmp_path / "x.bin", _sha(PAYLOAD), progress=False)
    assert (tmp_path / "x.bin").read_bytes() == PAYLOAD


def test_http_404_is_a_clear_error(tmp_path: Path, server: tuple[str, type[_Handler]]) -> None:
    base, _ = server
    with pytest.raises(GlanceError, match="HTTP 404"):
        download(f"{base}/missing.tar", tmp_path / "m.tar", None, progress=False)


# --------------------------------------------------------------------------------------------
# safe_extract()
# --------------------------------------------------------------------------------------------


def _tar(path: Path, members: list[tuple[str, str, bytes | str]], mode: str = "w:gz") -> Path:
    """members: (kind, name, data or link target) with kind in file/dir/sym/hard."""
    with tarfile.open(path, mode) as tf:
        for kind, name, data in members:
            ti = tarfile.TarInfo(name)
            if kind == "file":
                assert isinstance(data, bytes)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
                continue
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, str(data)
            elif kind == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, str(data)
            tf.addfile(ti)
    return path


@pytest.mark.parametrize(
    "mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz"), ("w:xz", ".tar.xz"), ("w:bz2", ".tar.bz2")]
)
def test_extract_tar_formats(tmp_path: Path, mode: str, suffix: str) -> None:
    arc = _tar(
        tmp_path / f"ok{suffix}",
        [
            ("dir", "cat/train", b""),
            ("file", "cat/train/a.txt", b"hello"),
            ("sym", "cat/link", "train/a.txt"),
        ],
        mode,
    )
    target = tmp_path / "t"
    paths = safe_extract(arc, target)
    assert (target / "cat" / "train" / "a.txt").read_bytes() == b"hello"
    assert (target / "cat" / "link").read_bytes() == b"hello"
    assert target / "cat" / "train" / "a.txt" in paths


def test_extract_zip(tmp_path: Path) -> None:
    arc = tmp_path / "ok.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("cat/train/a.txt", b"hello")
    safe_extract(arc, tmp_path / "t")
    assert (tmp_path / "t" / "cat" / "train" / "a.txt").read_bytes() == b"hello"


@pytest.mark.parametrize(
    "members,needle",
    [
        ([("file", "../evil.txt", b"x")], "../evil.txt"),
        ([("file", "ok/../../evil.txt", b"x")], "ok/../../evil.txt"),
        ([("file", "/tmp/glance_evil_abs.txt", b"x")], "/tmp/glance_evil_abs.txt"),
        ([("sym", "link", "/etc")], "link"),
        ([("sym", "sub/link", "../../outside")], "sub/link"),
        ([("hard", "hl", "../outside")], "hl"),
        # chained: a symlink inside, then a member written through it
        ([("sym", "sub/up", ".."), ("sym", "sub/up/up2", "..")], "sub/up/up2"),
    ],
)
def test_malicious_tar_refused(
    tmp_path: Path, members: list[tuple[str, str, bytes | str]], needle: str
) -> None:
    good = [("file", "harmless.txt", b"fine")]
    arc = _tar(tmp_path / "evil.tar.gz", good + members)
    target = tmp_path / "deep" / "t"
    with pytest.raises(GlanceError) as e:
        safe_extract(arc, target)
    assert repr(needle) in str(e.value) or needle in str(e.value)
    assert "refusing member" in str(e.value)
    # nothing was written at all, inside or outside
    assert list(target.iterdir()) == []
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_malicious_zip_refused(tmp_path: Path, name: str) -> None:
    arc = tmp_path / "evil.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("harmless.txt", b"fine")
        zf.writestr(zipfile.ZipInfo(name), b"x")
    target = tmp_path / "t"
    with pytest.raises(GlanceError, match="refusing member"):
        safe_extract(arc, target)
    assert list(target.iterdir()) == []


def test_not_an_archive(tmp_path: Path) -> None:
    p = tmp_path / "x.tar"
    p.write_bytes(b"plain text, no archive")
    with pytest.raises(GlanceError, match="not a tar or zip"):
        safe_extract(p, tmp_path / "t")


# --------------------------------------------------------------------------------------------
# download_mvtec() with the URLs pointed at local archives
# --------------------------------------------------------------------------------------------


def test_download_mvtec_per_category(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arc = _tar(
        tmp_path / "bottle.tar.xz",
        [("file", "bottle/train/good/000.png", b"png"), ("file", "bottle/license.txt", b"cc")],
        "w:xz",
    )
    monkeypatch.setitem(dl.MVTEC_CATEGORY_URLS, "bottle", arc.as_uri())
    out = tmp_path / "mvtec"
    assert download_mvtec(out, ["bottle"], progress=False) == out
    assert (out / "bottle" / "train" / "good" / "000.png").read_bytes() == b"png"
    assert not (out / "bottle.tar.xz").exists()  # archive removed after extraction
    arc.unlink()  # a second call must not fetch again
    download_mvtec(out, ["bottle"], progress=False)
    with pytest.raises(GlanceError, match="unknown MVTec AD categories"):
        download_mvtec(out, ["bottel"], progress=False)


def test_download_mvtec_full_archive_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    members = [("file", f"{c}/train/good/000.png", b"png") for c in dl.MVTEC_CATEGORIES]
    arc = _tar(tmp_path / "mvtec_anomaly_detection.tar.xz", members, "w:xz")
    monkeypatch.setattr(dl, "MVTEC_URL", arc.as_uri())
    with pytest.raises(GlanceError, match="checksum mismatch"):  # the real hash does not match our toy
        download_mvtec(tmp_path / "out", progress=False)
    monkeypatch.setattr(dl, "MVTEC_SHA256", sha256sum(arc))
    out = download_mvtec(tmp_path / "out", progress=False)
    assert all((out / c / "train" / "good").is_dir() for c in dl.MVTEC_CATEGORIES)


def test_official_constants() -> None:
    assert len(dl.MVTEC_CATEGORIES) == 15 and "bottle" in dl.MVTEC_CATEGORIES
    for c, u in dl.MVTEC_CATEGORY_URLS.items():
        assert u.startswith("https://www.mydrive.ch/") and u.endswith(f"/{c}.tar.xz")
    assert dl.MVTEC_URL.endswith("/mvtec_anomaly_detection.tar.xz") and len(dl.MVTEC_SHA256) == 64
