"""Check the layers contract in `.importlinter` with import-linter (`lint-imports`).

import-linter (and grimp beneath it) accept only packages as roots, while the design card keeps
five modules at the top level (main.py, config.py, ...). So this script lays out a mirror tree in
a temporary folder where each top-level module `x.py` becomes the package `x/__init__.py` (same
source, same import name) and each package is linked as it is, then runs `lint-imports` on it.
The import graph is identical: every project import is absolute and top-level.

    python scripts/lint_layers.py          # exit 0 when every import runs down the layers
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".importlinter"


def roots(config: Path = CONFIG) -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(config)
    return parser["importlinter"]["root_packages"].split()


def mirror(dest: Path, source: Path = ROOT, config: Path = CONFIG) -> None:
    """Lay out `source`'s layers under `dest` as packages only."""
    for name in roots(config):
        if (source / name).is_dir():
            shutil.copytree(source / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / name).mkdir()
            shutil.copy(source / f"{name}.py", dest / name / "__init__.py")
    shutil.copy(config, dest / ".importlinter")


def lint(source: Path = ROOT, config: Path = CONFIG) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="vg-layers-") as tmp:
        mirror(Path(tmp), source, config)
        linter = Path(sys.executable).with_name("lint-imports")
        env = {**os.environ, "PYTHONPATH": tmp}
        return subprocess.run([str(linter), "--config", ".importlinter", "--no-cache"], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=120)


if __name__ == "__main__":
    result = lint()
    print(result.stdout + result.stderr)
    sys.exit(result.returncode)
