"""The Debian photographs of the extra distillation corpus: read from .deb files, checked, resumable."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from glance_lite.common.fileio import DatasetError
from glance_lite.data.debian_photos import PHOTOS, deb_members, fetch_debian_photos


def _ar_member(name: str, data: bytes) -> bytes:
    head = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
    assert len(head) == 60
    return head + data + (b"\n" if len(data) % 2 else b"")


def make_deb(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    """A minimal Debian package: an ar archive with debian-binary, control.tar.xz, data.tar.xz."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        for name, target in (links or {}).items():
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname = tarfile.SYMTYPE, target
            tf.addfile(ti)
    ctl = io.BytesIO()
    with tarfile.open(fileobj=ctl, mode="w:xz"):
        pass
    path.write_bytes(b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n") + _ar_member("control.tar.xz", ctl.getvalue())
                     + _ar_member("data.tar.xz", buf.getvalue()))
    return path


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_fetch_writes_the_listed_photographs_and_resumes(tmp_path: Path) -> None:
    a, b = b"photo-a" * 100, b"photo-b" * 77  # odd length: ar padding
    debs = tmp_path / "debs"
    debs.mkdir()
    make_deb(debs / "pkg_1.0_all.deb", {"./usr/share/a.jpg": a, "./usr/share/b.png": b, "./usr/share/c.jpg": b"x"})
    photos = (("pkg", "./usr/share/a.jpg", "g/a.jpg", _sha(a)), ("pkg", "./usr/share/b.png", "g/b.png", _sha(b)))
    out = tmp_path / "out"
    files = fetch_debian_photos(out, debs=debs, progress=False, photos=photos, versions={"pkg": "1.0"})
    assert [f.relative_to(out).as_posix() for f in files] == ["g/a.jpg", "g/b.png"]
    assert (out / "g/a.jpg").read_bytes() == a and (out / "g/b.png").read_bytes() == b
    assert not (out / "g/c.jpg").exists()  # only listed files are written
    (debs / "pkg_1.0_all.deb").unlink()  # complete: nothing is read again
    assert fetch_debian_photos(out, debs=debs, progress=False, photos=photos, versions={"pkg": "1.0"}) == files
    (out / "g/a.jpg").write_bytes(b"damaged")  # a damaged photograph is fetched again
    make_deb(debs / "pkg_1.0_all.deb", {"./usr/share/a.jpg": a, "./usr/share/b.png": b})
    fetch_debian_photos(out, debs=debs, progress=False, photos=photos, versions={"pkg": "1.0"})
    assert (out / "g/a.jpg").read_bytes() == a


def test_wrong_hash_or_a_link_is_refused_and_names_the_file(tmp_path: Path) -> None:
    deb = make_deb(tmp_path / "pkg_2.0_all.deb", {"./usr/a.jpg": b"new bytes", "./etc/passwd": b"secret"},
                   links={"./usr/l.jpg": "../../etc/passwd"})
    with pytest.raises(DatasetError, match=r"usr/a\.jpg has the wrong SHA-256"):
        fetch_debian_photos(tmp_path / "o", debs=tmp_path, progress=False,
                            photos=(("pkg", "./usr/a.jpg", "a.jpg", _sha(b"old bytes")),), versions={"pkg": "1.0"})
    assert not (tmp_path / "o" / "a.jpg").exists()
    with pytest.raises(DatasetError, match=r"usr/l\.jpg is not a regular file"):
        fetch_debian_photos(tmp_path / "o", debs=tmp_path, progress=False,
                            photos=(("pkg", "./usr/l.jpg", "l.jpg", _sha(b"secret")),), versions={"pkg": "1.0"})
    assert deb_members(deb, {"./usr/l.jpg", "./usr/a.jpg"}) == {"./usr/a.jpg": b"new bytes"}
    (tmp_path / "bad.deb").write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(DatasetError, match="bad.deb: not a Debian package"):
        deb_members(tmp_path / "bad.deb", set())


def test_the_list_is_well_formed() -> None:
    assert len(PHOTOS) == 50
    names = [n for _, _, n, _ in PHOTOS]
    assert len(set(names)) == len(names) and len({d for *_, d in PHOTOS}) == len(PHOTOS)  # no photograph twice
    assert all(m.startswith("./usr/share/") and ".." not in m for _, m, _, _ in PHOTOS)
    assert all(len(d) == 64 and int(d, 16) >= 0 for *_, d in PHOTOS)
