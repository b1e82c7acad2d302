"""The Makefile's environment rules, read with ``make -n`` (prints the commands, runs nothing)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make_n(*args: str) -> list[str]:
    return subprocess.run(["make", "-n", "-B", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_the_venv_installs_the_lock():
    lines = make_n("env", "SYSTEM_PYTHON=0")
    install = next(line for line in lines if "pip install --quiet -c constraints.txt" in line)
    assert install.startswith(".venv/bin/python") and "-e \".[notebooks,lab,app,dev]\"" in install
    assert any("ipykernel install --sys-prefix --name aidetect" in line for line in lines)


def test_where_no_venv_can_be_made_the_interpreter_itself_is_used(tmp_path):
    """Colab's Python has no ensurepip: make notices, and installs into that interpreter with the
    ranges only (no lock, no venv, no kernel of its own), so the runtime's torch stays."""
    fake = tmp_path / "python3"
    fake.write_text(f'#!/bin/sh\ncase "$*" in *ensurepip*) exit 1;; esac\nexec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    lines = make_n("env", f"PYTHON={fake}")
    install = next(line for line in lines if "pip install" in line)
    assert install.startswith(f"{fake} -m pip install --progress-bar off -e \".[notebooks]\"")
    assert not any(" venv " in line or "constraints.txt" in line or "ipykernel install" in line for line in lines)
    papermill = next(line for line in make_n("data", f"PYTHON={fake}") if "-m papermill" in line)
    assert papermill.startswith(f"{fake} -m papermill") and "-k python3" in papermill
