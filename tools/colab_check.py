"""Run chapters the way Colab does, as far as a machine without a GPU can.

1. Build the package's wheel (not an editable install: what ``pip install git+URL`` gets).
2. Make a fresh virtual environment and install the wheel there.  Its dependencies (torch etc.) are
   taken from the project's ``.venv`` through a ``.pth`` line, as a Colab runtime already has them
   (this keeps the check to seconds instead of a torch download); ``.venv``'s own editable
   glance-lite is *not* visible there (``.pth`` files of an added path are not processed).
3. Copy each chapter alone into an empty temporary folder and run it there with nbval and the smoke
   preset, with no repository, no ``data/`` and no shared data around it.

Usage: ``python tools/colab_check.py [--venv .venv] [--work _build/colab] [notebooks/NN_name.ipynb ...]``
(default: every chapter).  ``make colab-check`` runs every chapter; ``make test`` runs two.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _site(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def fresh_env(venv: Path, work: Path) -> Path:
    """Build the wheel and install it into a fresh venv under ``work``; returns its python."""
    base_py = venv / "bin" / "python"
    wheels = work / "wheel"
    shutil.rmtree(wheels, ignore_errors=True)
    # setuptools stages the wheel in the source tree's build/; a stale one would carry files the
    # package no longer has into the wheel, so the check starts from none and leaves none behind
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    try:
        subprocess.run([str(base_py), "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(wheels), str(ROOT)], check=True)
    finally:
        shutil.rmtree(ROOT / "build", ignore_errors=True)
    whl = next(wheels.glob("glance_lite-*.whl"))
    env_dir = work / "venv"
    shutil.rmtree(env_dir, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    (_site(py) / "_colab_check_deps.pth").write_text(str(_site(base_py)) + "\n")
    subprocess.run([str(base_py), "-m", "pip", "install", "--no-deps", "-q", "--target", str(_site(py)), str(whl)],
                   check=True)
    # the check is worthless if the repository's glance_lite is the one imported
    where = subprocess.run([str(py), "-c", "import glance_lite, sys; print(glance_lite.__file__)"], cwd=tempfile.gettempdir(),
                           check=True, capture_output=True, text=True).stdout.strip()
    if not where.startswith(str(_site(py))):
        raise SystemExit(f"colab-check: glance_lite imported from {where}, not from the wheel")
    return py


def run_alone(py: Path, nb: Path) -> tuple[bool, float, str]:
    """Run one chapter alone in an empty folder; returns (passed, seconds, last lines of output)."""
    with tempfile.TemporaryDirectory(prefix="colab-") as tmp:
        dst = Path(tmp) / nb.name
        shutil.copyfile(nb, dst)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GLANCE_")}
        env.update(GLANCE_PRESET="smoke", GLANCE_SHARED=str(Path(tmp) / "no-shared-data"), MPLBACKEND="Agg")
        t0 = time.perf_counter()
        r = subprocess.run([str(py), "-m", "pytest", "--nbval-lax", nb.name, "-q", "-p", "no:cacheprovider"],
                           cwd=tmp, env=env, capture_output=True, text=True)
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        return r.returncode == 0, time.perf_counter() - t0, tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", help="chapters to run (default: all)")
    ap.add_argument("--venv", default=str(ROOT / ".venv"))
    ap.add_argument("--work", default=str(ROOT / "_build" / "colab"))
    args = ap.parse_args(argv)
    nbs = [Path(n).resolve() for n in args.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    py = fresh_env(Path(args.venv), work)
    failed = []
    for nb in nbs:
        ok, sec, tail = run_alone(py, nb)
        print(f"colab-check {nb.name}: {'ok' if ok else 'FAILED'} ({sec:.0f} s)", flush=True)
        if not ok:
            print(tail)
            failed.append(nb.name)
    if failed:
        print(f"colab-check: {len(failed)} chapter(s) failed alone: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
