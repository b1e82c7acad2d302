"""Colab: the notebooks' first cell with a stand-in ``google.colab`` and a local clone address,
and the install step in an environment that already has a torch (as Colab has)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from helpers.core import colab
from tests.conftest import ROOT

RUNTIME = {"torch": "2.13.0", "torchvision": "0.28.0", "ipykernel": "6.17.1", "ipython": "7.34.0",
           "jupyter-client": "6.1.12"}


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_remote(folder: Path) -> Path:
    """A git repository holding what the cell needs of the project (the helpers package and a
    notebooks folder), one commit on ``main``."""
    for rel in ("helpers/__init__.py", "helpers/core/__init__.py", "helpers/core/colab.py"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, folder / rel)
    (folder / "notebooks").mkdir()
    (folder / "notebooks" / "README.md").write_text("notebooks\n")
    git("init", "--quiet", "--initial-branch", "main", cwd=folder)
    commit(folder, "first")
    return folder


def commit(folder: Path, message: str) -> str:
    git("add", "-A", cwd=folder)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", message, cwd=folder)
    return git("rev-parse", "HEAD", cwd=folder)


@pytest.fixture
def fake_colab(monkeypatch):
    """``google.colab`` as Colab has it, with two Kaggle secrets in ``userdata``."""
    google, module, userdata = (types.ModuleType(n) for n in ("google", "google.colab", "google.colab.userdata"))
    userdata.get = {"KAGGLE_USERNAME": "ada", "KAGGLE_KEY": "k3y"}.__getitem__
    module.userdata, google.colab = userdata, module
    for name, mod in (("google", google), ("google.colab", module), ("google.colab.userdata", userdata)):
        monkeypatch.setitem(sys.modules, name, mod)
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    return module


def colab_cell(repository: str) -> str:
    """The first code cell of notebook 01, its repository address replaced by ``repository``."""
    cells = json.loads((ROOT / "notebooks" / "01_download.ipynb").read_text())["cells"]
    source = "".join(cells[1]["source"])
    address = next(line for line in source.splitlines() if line.startswith("REPOSITORY = "))
    return source.replace(address, f"REPOSITORY = {repository!r}")


def run_cell(source: str) -> None:
    """Execute a notebook cell's code as the kernel would (a fresh namespace)."""
    exec(compile(source, "<colab cell>", "exec"), {})  # noqa: S102 - the notebook's own cell, on purpose


def test_the_colab_cell_installs_its_revision_once_and_is_safe_to_rerun(fake_colab, tmp_path, monkeypatch, capsys):
    remote = make_remote(tmp_path / "remote")
    home = tmp_path / "content" / "ai-image-detector"
    monkeypatch.setenv("AIDETECT_HOME", str(home))
    monkeypatch.chdir(tmp_path)  # the cell changes the working folder; this restores it
    pip_calls = []
    monkeypatch.setattr(colab, "run_pip", pip_calls.append)
    cell = colab_cell(remote.as_uri())

    run_cell(cell)  # first run: clone, install, report
    first = git("rev-parse", "HEAD", cwd=remote)
    assert git("rev-parse", "HEAD", cwd=home) == first
    assert len(pip_calls) == 1 and pip_calls[0][-2:] == ["-e", str(home)] and "-q" not in pip_calls[0]
    assert Path.cwd() == home / "notebooks"
    out = capsys.readouterr().out
    assert "Kaggle: credentials from Colab's secrets" in out and os.environ["KAGGLE_KEY"] == "k3y"
    assert "Runtime > Change runtime type" in out or "GPU:" in out  # no GPU here: how to get one
    assert 'STORAGE = "drive"' in out

    run_cell(cell)  # a rerun: no clone error, no second install
    assert len(pip_calls) == 1 and "installed at" in capsys.readouterr().out

    (remote / "notebooks" / "new.txt").write_text("v2\n")
    second = commit(remote, "second")
    run_cell(cell)  # the revision moved on: the clone follows it and installs again
    assert git("rev-parse", "HEAD", cwd=home) == second and len(pip_calls) == 2

    (home / "notebooks" / "README.md").write_text("my notes\n")  # a user's edit is never thrown away
    (remote / "notebooks" / "new.txt").write_text("v3\n")
    commit(remote, "third")
    run_cell(cell)
    assert git("rev-parse", "HEAD", cwd=home) == second
    assert (home / "notebooks" / "README.md").read_text() == "my notes\n"
    assert "local edits: kept" in capsys.readouterr().out


def test_outside_colab_the_cell_does_nothing(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setenv("AIDETECT_HOME", str(tmp_path / "home"))
    run_cell(colab_cell("file:///nowhere"))
    assert not (tmp_path / "home").exists()


def test_drive_storage_needs_colab_and_moves_data_and_results(fake_colab, tmp_path, monkeypatch):
    from helpers.core import notebook, paths

    mounted = []
    fake_colab.drive = types.SimpleNamespace(mount=mounted.append)
    monkeypatch.setitem(sys.modules, "google.colab.drive", fake_colab.drive)
    monkeypatch.setattr(paths, "DATA", paths.DATA)
    monkeypatch.setattr(paths, "RESULTS", paths.RESULTS)
    monkeypatch.setenv("AIDETECT_DATA", "unchanged")
    monkeypatch.setenv("AIDETECT_RESULTS", "unchanged")
    monkeypatch.setattr(colab, "DRIVE_FOLDER", "MyDrive/aidetect")
    notebook.use_storage("drive")
    assert mounted == ["/content/drive"]
    assert paths.DATA == Path("/content/drive/MyDrive/aidetect/data").resolve()
    notebook.use_storage(str(tmp_path / "kept"))  # any folder works too, in or out of Colab
    assert paths.RESULTS == (tmp_path / "kept" / "results").resolve()
    assert os.environ["AIDETECT_RESULTS"] == str(paths.RESULTS)
    monkeypatch.delitem(sys.modules, "google.colab")
    with pytest.raises(RuntimeError, match="needs Google Colab"):
        notebook.use_storage("drive")


def fake_distribution(site: Path, name: str, version: str) -> None:
    """What pip sees of an installed distribution: its ``.dist-info`` folder."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")


@pytest.mark.slow
def test_installing_the_project_keeps_the_runtimes_torch_and_kernel(tmp_path):
    """In an environment that already has torch, torchvision and a Jupyter kernel (Colab's, older
    than the lock), the notebooks' install step (helpers.core.colab.install_command) would install
    none of them: pip's own dry-run report says what it would install."""
    venv = tmp_path / "runtime"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for name, version in RUNTIME.items():
        fake_distribution(site, name, version)
    report = tmp_path / "report.json"
    command = [str(python), *colab.install_command(ROOT)[1:]]
    done = subprocess.run([*command[:4], "--dry-run", "--quiet", "--report", str(report), *command[4:]],
                          check=False, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and ("No matching distribution" in done.stderr or "connection" in done.stderr.lower()):
        pytest.skip(f"the package index cannot be reached from here: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stderr[-2000:]
    would_install = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                     for item in json.loads(report.read_text())["install"]}
    assert "aidetect" in would_install and "grad-cam" in would_install
    assert not set(RUNTIME) & set(would_install), {n: would_install[n] for n in set(RUNTIME) & set(would_install)}
    assert not any(n.startswith(("nvidia-", "cuda-")) for n in would_install)
