"""The three top-level folders import only as privlab subpackages, installed either way."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("attacks", "mechanisms", "accounting")


def test_installed_package_maps_the_folders(tmp_path):
    check = (
        "import importlib.util, privlab.attacks, privlab.mechanisms, privlab.accounting;"
        "print([importlib.util.find_spec(name) is None for name in ('attacks', 'mechanisms',"
        " 'accounting')])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[True, True, True]"


def test_regular_wheel_holds_the_mapped_subpackages(tmp_path):
    pytest.importorskip("setuptools")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("privlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for sub in SUBPACKAGES:
        assert f"privlab/{sub}/__init__.py" in names
        assert not any(name.startswith(f"{sub}/") for name in names)
    assert "privlab/configs/default.yaml" in names
    assert "privlab/mechanisms/gossip.py" in names
