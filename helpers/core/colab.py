"""Colab: get a fresh runtime ready for one notebook, without replacing what the runtime ships.

Colab opens every notebook in its own runtime, with its own CUDA build of torch and its own
pinned Jupyter kernel (ipykernel, ipython, jupyter-client). Each notebook's first code cell
clones the repository at the revision the notebook belongs to (``[tool.aidetect]
colab-revision`` in pyproject.toml, beside the repository address) and calls :func:`prepare`:

- the clone is brought to that revision on a rerun (a clone with local edits is left alone);
- the project is installed once per revision with ``pip install -e``: pyproject.toml states
  ranges, so torch, torchvision and the kernel packages the runtime has are kept (a test
  checks that pip would not touch them); what only ``make``, the app or the tests need is an
  extra (``[notebooks]``, ``[app]``, ``[dev]``);
- it says which accelerator the runtime has, and how to get a GPU when it has none;
- it takes Kaggle credentials from Colab's secrets when they are there (CIFAKE and the shoes
  are public: kagglehub downloads them without any).

Standard library only: it runs before the project's dependencies are installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

#: Where the notebooks' cell clones the project (``AIDETECT_HOME`` overrides it).
HOME = Path(os.environ.get("AIDETECT_HOME", "/content/ai-image-detector"))
#: What the runtime ships and the install must leave as it is.
RUNTIME_PACKAGES = ("torch", "torchvision", "ipykernel", "ipython", "jupyter-client")
#: Google Drive's folder for ``STORAGE = "drive"`` (see :func:`drive_storage`).
DRIVE_FOLDER = "MyDrive/aidetect"


def in_colab() -> bool:
    """Whether this runs inside Google Colab (its ``google.colab`` module is imported)."""
    return "google.colab" in sys.modules


def _git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], check=False, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def checkout(repository: str, revision: str, home: Path = HOME) -> str:
    """Clone ``repository`` at ``revision`` (a branch or tag) into ``home``, or bring an existing
    clone there; returns the commit. A clone whose tracked files were edited is kept as it is
    (with a line saying so): a rerun must never throw away a user's changes."""
    if not (home / ".git").is_dir():
        _git("clone", "--quiet", "--depth", "1", "--branch", revision, repository, str(home))
        return _git("rev-parse", "HEAD", cwd=home)
    if _git("status", "--porcelain", "--untracked-files=no", cwd=home):
        print(f"{home} has local edits: kept as they are (not updated to {revision})")
        return _git("rev-parse", "HEAD", cwd=home)
    _git("fetch", "--quiet", "--depth", "1", repository, revision, cwd=home)
    wanted = _git("rev-parse", "FETCH_HEAD", cwd=home)
    if wanted != _git("rev-parse", "HEAD", cwd=home):
        _git("checkout", "--quiet", "--detach", wanted, cwd=home)
        print(f"updated {home} to {revision} ({wanted[:10]})")
    return wanted


def installed_versions(names: tuple[str, ...] = RUNTIME_PACKAGES) -> dict[str, str | None]:
    """``{distribution: version}`` of ``names`` in this interpreter (None when absent)."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def install_command(home: Path = HOME, extras: str = "") -> list[str]:
    """The pip command that installs the project from ``home`` into this interpreter, keeping
    whatever installed packages already satisfy its ranges (pip's default strategy,
    ``only-if-needed``). Warnings stay visible: no ``-q``."""
    target = f"{home}[{extras}]" if extras else str(home)
    return [sys.executable, "-m", "pip", "install", "--progress-bar", "off",
            "--upgrade-strategy", "only-if-needed", "-e", target]


def run_pip(command: list[str]) -> None:
    """Run ``command``, raising RuntimeError (with pip's output) when it fails."""
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(("Successfully", "WARNING"))]
    print("\n".join(lines + [line for line in done.stderr.splitlines() if line.strip()]))
    if done.returncode != 0:
        raise RuntimeError(f"installing the project failed (exit {done.returncode}): {' '.join(command)}")


def install(home: Path = HOME, commit: str = "") -> bool:
    """Install the project from ``home`` once per ``commit``; returns whether pip ran.

    Checks afterwards that torch, torchvision and the kernel packages are the versions the
    runtime had, and says so loudly if not (the runtime should then be restarted).
    """
    stamp = home / ".git" / "aidetect-installed"
    if commit and stamp.is_file() and stamp.read_text().strip() == commit:
        print(f"the project is installed at {commit[:10]}")
        return False
    before = installed_versions()
    run_pip(install_command(home))
    after = installed_versions()
    changed = {name: (before[name], after[name]) for name in before
               if before[name] is not None and before[name] != after[name]}
    if changed:
        print("WARNING: the install replaced what the runtime ships: " + ", ".join(
            f"{n} {a} -> {b}" for n, (a, b) in changed.items()) + ". Restart the runtime (Runtime > Restart).")
    if commit:
        stamp.write_text(commit + "\n")
    return True


def describe_accelerator() -> str:
    """One paragraph: the runtime's GPU and the precision the project will use on it, or how
    to get a GPU when there is none."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        precision = "bfloat16" if (major, minor) >= (8, 0) else "float16 with a gradient scaler"
        return (f"GPU: {name} (compute capability {major}.{minor}; mixed precision in {precision}); "
                f"torch {torch.__version__}")
    return ("No GPU in this runtime: every notebook still runs, on the CPU (the demo in minutes; CIFAKE's "
            "training takes far longer). For a GPU: Runtime > Change runtime type > a GPU (T4 on the free "
            "tier), then run the notebook again from the top.")


def kaggle_credentials() -> str:
    """Take ``KAGGLE_USERNAME`` and ``KAGGLE_KEY`` from Colab's secrets into the environment when
    they are there; returns what happened, in a sentence."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "Kaggle: credentials from the environment."
    try:
        from google.colab import userdata  # type: ignore[import-not-found]

        found = {name: userdata.get(name) for name in ("KAGGLE_USERNAME", "KAGGLE_KEY")}
    except Exception:  # noqa: BLE001 - a secret missing, or not granted to this notebook
        found = {}
    if all(found.values()) and found:
        os.environ.update(found)
        return "Kaggle: credentials from Colab's secrets."
    return ("Kaggle: no credentials (none needed for the public CIFAKE and shoes datasets). To use "
            "yours: add KAGGLE_USERNAME and KAGGLE_KEY in Colab's Secrets (the key icon) and let this "
            "notebook read them, or run `import kagglehub; kagglehub.login()`.")


def prepare(repository: str, revision: str, home: Path = HOME) -> Path:
    """Everything the notebooks' first cell does in Colab once the clone exists: bring it to
    ``revision``, install it (once per commit), report the accelerator and Kaggle credentials,
    and make ``home/notebooks`` the working folder. Returns ``home``."""
    commit = checkout(repository, revision, home)
    if str(home) not in sys.path:
        sys.path.insert(0, str(home))
    install(home, commit)
    print(describe_accelerator())
    print(kaggle_credentials())
    print("Results land in data/ and results/ of this runtime, and vanish with it: set "
          "STORAGE = \"drive\" in the parameters cell to keep them on Google Drive.")
    os.chdir(home / "notebooks")
    return home


def drive_storage(mount_point: str = "/content/drive") -> Path:
    """Mount Google Drive (Colab asks for permission) and return the folder that keeps
    ``data/`` and ``results/`` between runtimes. Raises RuntimeError outside Colab."""
    if not in_colab():
        raise RuntimeError('STORAGE = "drive" needs Google Colab; elsewhere give a folder path')
    from google.colab import drive  # type: ignore[import-not-found]

    drive.mount(mount_point)
    return Path(mount_point) / DRIVE_FOLDER
