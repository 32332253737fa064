"""A larger distillation corpus: 50 photographs taken from Debian packages, fetched and checked.

The shipped Local-Net learns Eq. 1-3 on natural patches.  The photographs bundled in the Python wheels
(:mod:`glance_lite.data.corpus`) are only ~22, and held-out l_k shows the net learns those photographs
rather than natural images.  Debian ships more photographs inside ordinary packages: desktop
wallpapers (KDE Plasma's and MATE's photographic ones), OpenCV's sample images, and xplanet's Blue
Marble earth map.  This module names 50 of them (:data:`PHOTOS`: package, file inside the package,
file name here, SHA-256), and :func:`fetch_debian_photos` builds the folder that
``glance-lite pretrain --extra-corpus`` reads:

* each package is obtained with ``apt-get download PACKAGE=VERSION`` (or taken from a folder of
  ``.deb`` files the user already has, e.g. on a machine that is not Debian);
* the ``.deb`` (an ``ar`` archive) is opened in Python, its ``data.tar.*`` read with :mod:`tarfile`,
  and only the listed regular files are read -- nothing in the archive chooses where anything is
  written, links are never followed;
* every photograph is checked against its SHA-256 and written atomically; one already in place with
  the right hash is kept, so an interrupted fetch resumes.

The selection was made by eye from contact sheets: photographs only (no illustrations, logos,
calibration targets but one, or renders), so that the patches are of the kind the teacher was trained on.
Licences: the packages' own (GPL / LGPL / CC-BY-SA for the wallpapers, BSD for OpenCV's samples, and
NASA's public-domain Blue Marble); the photographs are used to train a descriptor, never shipped.

Taught in :doc:`/notebooks/01_local_net` (the shipped Local-Net and its corpus).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..common.fileio import DatasetError, GlanceError, atomic_write_bytes
from .download import sha256sum

__all__ = ["PACKAGE_VERSIONS", "PHOTOS", "fetch_debian_photos", "deb_members"]

PACKAGE_VERSIONS: dict[str, str] = {
    "plasma-workspace-wallpapers": "4:5.27.5-2",
    "mate-backgrounds": "1.26.0-1",
    "opencv-doc": "4.6.0+dfsg-12",
    "xplanet-images": "1.3.1-3",
}
"""The Debian 12 (bookworm) package versions the photographs were taken from."""

PHOTOS: tuple[tuple[str, str, str, str], ...] = (
    ("mate-backgrounds", "./usr/share/backgrounds/mate/nature/Aqua.jpg", "mate/Aqua.jpg", "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce"),
    ("mate-backgrounds", "./usr/share/backgrounds/mate/nature/Blinds.jpg", "mate/Blinds.jpg", "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600"),
    ("mate-backgrounds", "./usr/share/backgrounds/mate/nature/Dune.jpg", "mate/Dune.jpg", "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91"),
    ("mate-backgrounds", "./usr/share/backgrounds/mate/nature/FreshFlower.jpg", "mate/FreshFlower.jpg", "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e"),
    ("mate-backgrounds", "./usr/share/backgrounds/mate/nature/Garden.jpg", "mate/Garden.jpg", "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78"),
    ("mate-backgrounds", "./usr/share/backgrounds/mate/nature/GreenMeadow.jpg", "mate/GreenMeadow.jpg", "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832"),
    ("mate-backgrounds", "./usr/share/backgrounds/mate/nature/LadyBird.jpg", "mate/LadyBird.jpg", "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d"),
    ("mate-backgrounds", "./usr/share/backgrounds/mate/nature/RainDrops.jpg", "mate/RainDrops.jpg", "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16"),
    ("mate-backgrounds", "./usr/share/backgrounds/mate/nature/Storm.jpg", "mate/Storm.jpg", "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957"),
    ("mate-backgrounds", "./usr/share/backgrounds/mate/nature/TwoWings.jpg", "mate/TwoWings.jpg", "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb"),
    ("mate-backgrounds", "./usr/share/backgrounds/mate/nature/Wood.jpg", "mate/Wood.jpg", "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07"),
    ("mate-backgrounds", "./usr/share/backgrounds/mate/nature/YellowFlower.jpg", "mate/YellowFlower.jpg", "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/aero1.jpg", "opencv/aero1.jpg", "d9a69191f6e3642ea361bc3c62e677b2f40fe6534b78da540f4155e0734b59ef"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/aero3.jpg", "opencv/aero3.jpg", "1c407146f8762b3b14a7953ff9bc4c01ed64c467d7277122e769bf7e816017a4"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/aloeL.jpg", "opencv/aloeL.jpg", "cce5736808efe80d9f04b118dbb978c344d4345672b332718c3e039a3eeb8eee"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/apple.jpg", "opencv/apple.jpg", "e86879de3d9a807dedc742a8f464f39e6b74bbb531a1fba3583155d94997d1cd"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/baboon.jpg", "opencv/baboon.jpg", "1a1dd18d78eec44420af3b0b7f08ee3d41c982916cae3ce203d7ff35d754cc0f"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/basketball1.png", "opencv/basketball1.png", "ba06f6701f7260998b430c39b6557f775497e6ce7b1a74f0b7ea6af371bf54a6"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/blox.jpg", "opencv/blox.jpg", "11115aa2cac174b7b01f907196e077ce19dd164145b82dd68129f92bdcae6884"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/board.jpg", "opencv/board.jpg", "4c9a24ba67138ad5486d550f586cc5dd1161be112f1c1bea336d6c550cdf255f"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/box_in_scene.png", "opencv/box_in_scene.png", "8b0225ff76244a42bd1400c0904f8b7afea7d97b7d8115495e42e98ad347bd51"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/building.jpg", "opencv/building.jpg", "742a1baad62ac82e91e718e77eedf7e85c2eddc4badfb8c87c6cbc86c45a8b07"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/butterfly.jpg", "opencv/butterfly.jpg", "34a99716b78ded10eae87b4880de739d3e68cc7dd1a96812bb28f469d5eeaea8"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/chicky_512.png", "opencv/chicky_512.png", "4d2cf040de084fd3f34d5e3f96f1251faaa4787c1ac3b548fec5809a0d01854e"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/fruits.jpg", "opencv/fruits.jpg", "9c031d80a1c52da5eca790db896baffec6a7e52bf786cdb7bbfca5c7f880e6a1"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/graf1.png", "opencv/graf1.png", "1504b769303c7bde00fa578eeaad3c68e02aceabeb1242e556f1f8d19e4bdea5"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/home.jpg", "opencv/home.jpg", "23b8cf46a1965d0ec33459b875aed43187802834db49e0daa9fa2cc842e9d8d2"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/left01.jpg", "opencv/left01.jpg", "9621899098adffa1440c8264606bb7be535ccfd9ad126ae8e0bd9b0c5a5b8676"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/leuvenA.jpg", "opencv/leuvenA.jpg", "b2977cdbd9fb3f94dadd6f76cf586d145676deb8a22b5f0f42149d21c058c09f"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/licenseplate_motion.jpg", "opencv/licenseplate_motion.jpg", "ea6fa9cea75df91bec656d1d3b903111a9c0708c6a3b88f405a5156de38ff9d6"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/messi5.jpg", "opencv/messi5.jpg", "1d570e49654e84c7a943918537bd9e5e1ef82920152e147c834006e235be97c9"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/orange.jpg", "opencv/orange.jpg", "152c20d2f380ac985de25e474e1a5f06ed34b932191342099b8272a63a15a079"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/pca_test1.jpg", "opencv/pca_test1.jpg", "9aae52b2bf730216f7e46c662f612a417ebd43642e742e7f867f33aa734293cd"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/rubberwhale1.png", "opencv/rubberwhale1.png", "eb312435369dac9efcc92f7e098edbd9ed8d7e6dfede8b3b4d8e3702cd80b796"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/smarties.png", "opencv/smarties.png", "ad3f751c053fdcf432687c1bc0e56a61a9119d2bb2ae29365f8aa6534fc77417"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/squirrel_cls.jpg", "opencv/squirrel_cls.jpg", "20bb6e8ae96918a36c9886b6d48e54eedeb3948591e1485c206bc1dc60c8dc8b"),
    ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/stuff.jpg", "opencv/stuff.jpg", "21cd00afbdd0727f445dd91c0a09633e6345ed5b05a3d2355453a1f3c314c6c5"),
    ("plasma-workspace-wallpapers", "./usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg", "plasma/BytheWater.jpg", "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f"),
    ("plasma-workspace-wallpapers", "./usr/share/wallpapers/ColdRipple/contents/images/2560x1600.jpg", "plasma/ColdRipple.jpg", "05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f"),
    ("plasma-workspace-wallpapers", "./usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg", "plasma/ColorfulCups.jpg", "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d"),
    ("plasma-workspace-wallpapers", "./usr/share/wallpapers/DarkestHour/contents/images/2560x1600.jpg", "plasma/DarkestHour.jpg", "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce"),
    ("plasma-workspace-wallpapers", "./usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg", "plasma/EveningGlow.jpg", "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a"),
    ("plasma-workspace-wallpapers", "./usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg", "plasma/FallenLeaf.jpg", "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de"),
    ("plasma-workspace-wallpapers", "./usr/share/wallpapers/Grey/contents/images/2560x1600.jpg", "plasma/Grey.jpg", "88c31d8944b7e6935d1b9a296654c692f0772cb512491713eb30a972a604c0ed"),
    ("plasma-workspace-wallpapers", "./usr/share/wallpapers/Kite/contents/images/2560x1600.jpg", "plasma/Kite.jpg", "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8"),
    ("plasma-workspace-wallpapers", "./usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg", "plasma/OneStandsOut.jpg", "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd"),
    ("plasma-workspace-wallpapers", "./usr/share/wallpapers/Path/contents/images/2560x1600.jpg", "plasma/Path.jpg", "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8"),
    ("plasma-workspace-wallpapers", "./usr/share/wallpapers/Volna/contents/images/5120x2880.jpg", "plasma/Volna.jpg", "abc30b4fc6f6a83b6156e6b59ac283c067de40af820aafac8ac7c4fd83a9607c"),
    ("plasma-workspace-wallpapers", "./usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg", "plasma/summer_1am.jpg", "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8"),
    ("xplanet-images", "./usr/share/xplanet/images/earth.jpg", "xplanet/earth.jpg", "d4dc80a6ef571939d0abe04a9bed3d3d1e6cd63e59514be1c5e43a6b069e6f1e"),
)
"""(package, regular file inside the package, name in the corpus folder, SHA-256 of the file)."""


def deb_members(deb: str | Path, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the regular files named in ``wanted`` (``./usr/...``) inside the Debian package
    ``deb``.  A ``.deb`` is an ``ar`` archive holding ``debian-binary``, ``control.tar.*`` and
    ``data.tar.*``; the last is read with :mod:`tarfile` (gz, xz or bz2).  Links and anything that is
    not a regular file are skipped, so a listed name that is only a link is reported missing."""
    deb = Path(deb)
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise DatasetError(f"{deb}: not a Debian package (no ar header)")
    pos, data = 8, None
    while pos + 60 <= len(raw):
        head = raw[pos:pos + 60]
        name = head[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(head[48:58].decode("ascii").strip())
        except ValueError as e:
            raise DatasetError(f"{deb}: damaged ar member header at byte {pos}") from e
        if name.startswith("data.tar"):
            data = raw[pos + 60:pos + 60 + size]
            break
        pos += 60 + size + (size % 2)
    if data is None:
        raise DatasetError(f"{deb}: no data.tar member")
    if name.endswith(".zst"):
        raise DatasetError(f"{deb}: data.tar.zst is not readable by Python's tarfile; unpack it with dpkg-deb")
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
            for m in tf:
                key = m.name if m.name.startswith("./") else "./" + m.name.lstrip("/")
                if key in wanted and m.isfile():
                    f = tf.extractfile(m)
                    if f is not None:
                        found[key] = f.read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"{deb}: unreadable data archive ({e})") from e
    return found


def _apt_download(package: str, version: str, into: Path) -> Path:
    """``apt-get download PACKAGE=VERSION`` into ``into``; the path of the ``.deb``."""
    if shutil.which("apt-get") is None:
        raise GlanceError(f"apt-get not found: download {package} {version} (.deb) by hand and pass "
                          "its folder with --debs")
    r = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=into, capture_output=True, text=True)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if r.returncode != 0 or not debs:
        raise GlanceError(f"apt-get download {package}={version} failed: {r.stderr.strip()[-400:]}")
    return debs[0]


def fetch_debian_photos(out: str | Path, debs: str | Path | None = None, progress: bool = True,
                        photos: tuple[tuple[str, str, str, str], ...] = PHOTOS,
                        versions: dict[str, str] | None = None) -> list[Path]:
    """Write the listed photographs under ``out`` (e.g. ``data/corpus/debian``), checked by SHA-256.

    ``debs``: a folder that already holds the packages' ``.deb`` files (``PACKAGE_*.deb``); packages not
    found there are fetched with ``apt-get download`` into a temporary folder.  Photographs already in
    ``out`` with the right hash are kept (nothing is downloaded for a complete folder).  A hash mismatch
    raises :class:`DatasetError` naming the package and the file, and writes nothing for that file.
    """
    out = Path(out)
    versions = PACKAGE_VERSIONS if versions is None else versions
    todo: dict[str, list[tuple[str, str, str]]] = {}
    done: list[Path] = []
    for pkg, member, name, digest in photos:
        dest = out / name
        if dest.is_file() and sha256sum(dest) == digest:
            done.append(dest)
        else:
            todo.setdefault(pkg, []).append((member, name, digest))
    with tempfile.TemporaryDirectory(prefix="glance-debs-") as tmp:
        for pkg, items in todo.items():
            local = sorted(Path(debs).glob(f"{pkg}_*.deb")) if debs is not None else []
            if progress:
                print(f"{pkg}: {'reading ' + str(local[0]) if local else 'apt-get download'} "
                      f"({len(items)} photographs)", file=sys.stderr)
            deb = local[0] if local else _apt_download(pkg, versions[pkg], Path(tmp))
            got = deb_members(deb, {m for m, _, _ in items})
            for member, name, digest in items:
                if member not in got:
                    raise DatasetError(f"{deb}: {member} is not a regular file in this package "
                                       f"(expected version {versions.get(pkg)})")
                if hashlib.sha256(got[member]).hexdigest() != digest:
                    raise DatasetError(f"{deb}: {member} has the wrong SHA-256 for {name} "
                                       f"(expected version {versions.get(pkg)})")
                done.append(atomic_write_bytes(out / name, got[member]))
    return sorted(done)
