"""Downloading MVTec AD from its official links: checksums, resumable downloads, safe extraction.

Three pieces, composed by :func:`download_mvtec`:

* :func:`download` fetches a URL with :mod:`urllib` only (``http(s)://`` and ``file://``), shows a
  tqdm progress bar, resumes a partial ``<dest>.part`` with an HTTP ``Range`` request, checks the
  SHA-256, and renames the file into place atomically.  A file that is already present with the
  right hash is not fetched again.
* :func:`safe_extract` unpacks tar (plain, gz, xz, bz2) and zip archives, refusing any member that
  would land outside the target folder: absolute paths, ``..`` components, symbolic or hard links
  pointing outside, members inside a symlinked folder, and device files.  Nothing is written when a
  member is refused.
* :func:`download_mvtec` downloads the whole archive or per-category archives.

The URLs are MVTec's official ``mydrive.ch`` links, as used on the MVTec AD website and by anomalib.
The SHA-256 of the full archive ``mvtec_anomaly_detection.tar.xz`` is the one anomalib checks.

Deviation: MVTec publishes no checksums for the per-category archives, so those are downloaded with
``sha256=None``: we print a warning with the computed SHA-256 and record it next to the file
(``<archive>.sha256``); later calls then verify against the recorded hash.

MVTec AD is licensed CC BY-NC-SA 4.0; this module only fetches it for the user, it is never
redistributed with the package.

Defined in :doc:`/notebooks/00_data`.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from ..common.fileio import GlanceError, atomic_write_text

__all__ = [
    "MVTEC_URL",
    "MVTEC_SHA256",
    "MVTEC_CATEGORIES",
    "MVTEC_CATEGORY_URLS",
    "sha256sum",
    "download",
    "safe_extract",
    "download_mvtec",
]

_BASE = "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"

MVTEC_URL: str = _BASE + "420938113-1629952094/mvtec_anomaly_detection.tar.xz"
"""Official link to the full MVTec AD archive (about 4.9 GB)."""

MVTEC_SHA256: str = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
"""SHA-256 of ``mvtec_anomaly_detection.tar.xz`` (the value anomalib verifies)."""

MVTEC_CATEGORY_URLS: dict[str, str] = {
    "bottle": _BASE + "420937370-1629951468/bottle.tar.xz",
    "cable": _BASE + "420937413-1629951498/cable.tar.xz",
    "capsule": _BASE + "420937454-1629951595/capsule.tar.xz",
    "carpet": _BASE + "420937484-1629951672/carpet.tar.xz",
    "grid": _BASE + "420937487-1629951814/grid.tar.xz",
    "hazelnut": _BASE + "420937545-1629951845/hazelnut.tar.xz",
    "leather": _BASE + "420937607-1629951964/leather.tar.xz",
    "metal_nut": _BASE + "420937637-1629952063/metal_nut.tar.xz",
    "pill": "https://www.mydrive.ch/shares/43421/11a215a5749fcfb75e331ddd5f8e43ee/download/"
    "420938129-1629953099/pill.tar.xz",
    "screw": _BASE + "420938130-1629953152/screw.tar.xz",
    "tile": _BASE + "420938133-1629953189/tile.tar.xz",
    "toothbrush": _BASE + "420938134-1629953256/toothbrush.tar.xz",
    "transistor": _BASE + "420938166-1629953277/transistor.tar.xz",
    "wood": _BASE + "420938383-1629953354/wood.tar.xz",
    "zipper": _BASE + "420938385-1629953449/zipper.tar.xz",
}
"""Official per-category archives (no published checksums)."""

MVTEC_CATEGORIES: tuple[str, ...] = tuple(MVTEC_CATEGORY_URLS)
"""The 15 MVTec AD categories."""

_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sha256sum(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _recorded_hash(dest: Path) -> str | None:
    p = _sidecar(dest)
    if p.is_file():
        text = p.read_text().split()
        if text and _HEX64.match(text[0].lower()):
            return text[0].lower()
    return None


def _fetch(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (resuming with a Range request when it is non-empty)."""
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "glance-lite"})
    if have and url.lower().startswith(("http://", "https://")):
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - URL chosen by the caller
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            return  # the partial file is already complete; the checksum decides
        raise GlanceError(f"{url}: download failed (HTTP {e.code} {e.reason})") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise GlanceError(f"{url}: download failed ({reason})") from e
    with resp:
        status = getattr(resp, "status", None)
        if status == 206:
            mode, start = "ab", have
        else:  # 200, or a non-HTTP scheme: the server sent the whole file
            mode, start = "wb", 0
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        bar = tqdm(
            total=total,
            initial=start,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name[: -len(".part")],
            disable=not progress,
            leave=False,
        )
        try:
            with open(part, mode) as f:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        except (OSError, urllib.error.URLError) as e:
            raise GlanceError(
                f"{url}: download interrupted ({e}); {part} is kept and the next call resumes it"
            ) from e
        finally:
            bar.close()
    if total is not None and part.stat().st_size < total:
        raise GlanceError(
            f"{url}: download incomplete ({part.stat().st_size} of {total} bytes); "
            f"{part} is kept and the next call resumes it"
        )


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest``, verify its SHA-256 and return ``dest``.

    * ``dest`` already present with the expected hash (or, when ``sha256`` is None, with the hash
      recorded in ``<dest>.sha256`` or no record at all): nothing is fetched.
    * A partial ``<dest>.part`` from an interrupted call is resumed with ``Range: bytes=N-``
      (a server that ignores the header sends the whole file, which replaces the partial one).
    * On a checksum mismatch the ``.part`` file is deleted and GlanceError is raised; ``dest`` is
      untouched.  The final file appears by an atomic rename, never half-written.
    * ``sha256=None``: a warning with the computed hash is printed and the hash is recorded in
      ``<dest>.sha256``.
    """
    dest = Path(dest)
    want = sha256.lower() if sha256 else None
    if want is not None and not _HEX64.match(want):
        raise GlanceError(f"{url}: {sha256!r} is not a SHA-256 hex digest")
    if dest.is_file():
        expected = want or _recorded_hash(dest)
        if expected is None:
            _warn(f"{dest}: already present and no checksum is known; not verified, not downloaded again")
            return dest
        got = sha256sum(dest)
        if got == expected:
            return dest
        _warn(f"{dest}: present but its SHA-256 {got} differs from {expected}; downloading again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch(url, part, progress, timeout)
    got = sha256sum(part)
    if want is not None and got != want:
        part.unlink(missing_ok=True)
        raise GlanceError(
            f"{url}: checksum mismatch for {dest.name} (expected SHA-256 {want}, got {got}); "
            "the partial file was deleted, try again"
        )
    os.replace(part, dest)
    if want is None:
        _warn(f"{url}: no checksum known; downloaded file has SHA-256 {got} (recorded in {_sidecar(dest)})")
        atomic_write_text(_sidecar(dest), f"{got}  {dest.name}\n")
    return dest


# --------------------------------------------------------------------------------------------
# safe extraction
# --------------------------------------------------------------------------------------------


def _check_name(name: str, archive: Path) -> PurePosixPath:
    """The member name as a relative POSIX path; absolute paths and ``..`` raise GlanceError."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise GlanceError(f"{archive}: refusing member {name!r}: absolute path")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise GlanceError(f"{archive}: refusing member {name!r}: '..' escapes the target folder")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _inside(rel: str) -> bool:
    """Whether a relative POSIX path, normalised lexically, stays inside the target."""
    if rel.startswith("/"):
        return False
    n = posixpath.normpath(rel)
    return n != ".." and not n.startswith("../")


def _check_tar(tf: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = tf.getmembers()
    links: set[PurePosixPath] = set()
    for m in members:
        rel = _check_name(m.name, archive)
        for parent in rel.parents:
            if parent in links:
                raise GlanceError(
                    f"{archive}: refusing member {m.name!r}: it lies inside the symlink {str(parent)!r}"
                )
        if m.issym() or m.islnk():
            target = m.linkname.replace("\\", "/")
            if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
                raise GlanceError(
                    f"{archive}: refusing member {m.name!r}: link to absolute path {m.linkname!r}"
                )
            # symlinks are relative to the link's folder, hard links to the archive root
            base = str(rel.parent) if m.issym() else "."
            if not _inside(posixpath.join(base, target)):
                raise GlanceError(
                    f"{archive}: refusing member {m.name!r}: link {m.linkname!r} points outside "
                    "the target folder"
                )
            if m.issym():
                links.add(rel)
        elif not (m.isfile() or m.isdir()):
            raise GlanceError(f"{archive}: refusing member {m.name!r}: device, fifo or other special file")
    return members


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> list[Path]:
    """Extract a tar (plain/gz/xz/bz2) or zip ``archive`` into ``target``; return the extracted paths.

    Every member is checked before anything is written; a member that would escape ``target``
    raises GlanceError naming it.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise GlanceError(f"{archive}: archive not found")
    target.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                for info in infos:
                    _check_name(info.filename, archive)
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        raise GlanceError(
                            f"{archive}: refusing member {info.filename!r}: symbolic link in a zip"
                        )
                for info in infos:
                    out.append(Path(zf.extract(info, target)))
            return out
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                members = _check_tar(tf, archive)
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                try:
                    tf.extractall(target, members=members, **kwargs)
                except tarfile.TarError as e:  # includes FilterError: belt and braces
                    raise GlanceError(f"{archive}: refusing to extract ({e})") from e
                out = [target / _check_name(m.name, archive) for m in members]
            return out
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise GlanceError(f"{archive}: cannot extract ({type(e).__name__}: {e})") from e
    raise GlanceError(f"{archive}: not a tar or zip archive")


# --------------------------------------------------------------------------------------------
# MVTec AD
# --------------------------------------------------------------------------------------------


def _complete(out: Path, category: str) -> bool:
    return (out / category / "train" / "good").is_dir() and (out / ".extracted" / category).is_file()


def download_mvtec(
    out: str | os.PathLike,
    categories: list[str] | tuple[str, ...] | None = None,
    progress: bool = True,
    keep_archives: bool = False,
) -> Path:
    """Download and extract MVTec AD into ``out`` (``out/<category>/train/good`` ...); return ``out``.

    ``categories=None`` fetches the full archive (4.9 GB, checksum verified); a list fetches only those
    per-category archives.  Categories already extracted (marked in ``out/.extracted/``) are skipped.
    Archives are deleted after extraction unless ``keep_archives``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if categories is not None:
        unknown = [c for c in categories if c not in MVTEC_CATEGORY_URLS]
        if unknown:
            raise GlanceError(
                f"unknown MVTec AD categories {unknown}; choose from {', '.join(MVTEC_CATEGORIES)}"
            )
    wanted = list(MVTEC_CATEGORIES if categories is None else categories)
    todo = [c for c in wanted if not _complete(out, c)]
    if not todo:
        return out
    jobs: list[tuple[str, str | None, list[str]]]
    if categories is None:
        jobs = [(MVTEC_URL, MVTEC_SHA256, list(MVTEC_CATEGORIES))]
    else:
        jobs = [(MVTEC_CATEGORY_URLS[c], None, [c]) for c in todo]
    for url, sha, cats in jobs:
        archive = download(url, out / url.rsplit("/", 1)[-1], sha, progress=progress)
        safe_extract(archive, out)
        for c in cats:
            if not (out / c / "train" / "good").is_dir():
                raise GlanceError(f"{archive}: extracted, but {out / c / 'train' / 'good'} is missing")
            atomic_write_text(out / ".extracted" / c, f"{archive.name}\n")
        if not keep_archives:
            archive.unlink(missing_ok=True)
    return out
