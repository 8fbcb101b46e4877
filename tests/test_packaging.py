"""A non-editable `pip install .` runs `codelm speedrun` away from the source tree (its configs are package data)."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO

from codelm.data.sources import stdlib_root

pytestmark = pytest.mark.slow


def test_installed_package_runs_the_speedrun_from_another_directory(tmp_path):
    # Only codelm is installed; its dependencies come from this venv's site-packages through a .pth file
    # (nothing is downloaded). It is built from a copy of what the build reads, so no build/ lands in the checkout.
    src, venv, work = tmp_path / "src", tmp_path / "venv", tmp_path / "work"
    shutil.copytree(REPO / "codelm", src / "codelm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", src)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # --ignore-installed: this venv's editable codelm is visible through the .pth and must stay untouched
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation",
                    "--ignore-installed", src], check=True, env=env)
    shutil.rmtree(src)  # the installed package must not need its source

    where = subprocess.run([python, "-c", "import codelm; print(codelm.__file__)"], capture_output=True, text=True,
                           check=True, env=env, cwd=tmp_path).stdout.strip()
    assert Path(where).parent == site / "codelm"

    work.mkdir()
    proc = subprocess.run([venv / "bin" / "codelm", "speedrun", "--data", stdlib_root() / "email", "--max-steps", "5",
                           "--vocab-size", "512", "--out", "run", "--set", "train.compile=false"],
                          capture_output=True, text=True, env=env, cwd=work, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (work / "run" / "report.md").is_file() and (work / "run" / "checkpoints").is_dir()
