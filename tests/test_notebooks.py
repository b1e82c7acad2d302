"""Execute the notebooks headlessly with papermill, as `make all` does, on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from helpers.core import parameters
from helpers.core.detector import Detector, best_path
from helpers.training.config import ROBUST_DEGRADE
from helpers.training.degrade import run_name
from tests.conftest import ROOT, shared_path, write_dataset

papermill = pytest.importorskip("papermill")
NOTEBOOKS = ROOT / "notebooks"


def run(name: str, out_dir: Path, **parameters) -> dict:
    out = out_dir / name
    papermill.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=parameters,
                               cwd=str(NOTEBOOKS), progress_bar=False, kernel_name="python3")
    return json.loads(out.read_text())


def test_notebook_sources_have_no_outputs_and_one_parameters_cell():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), path.name
        # nbformat 4.5 cells carry ids; without them papermill warns on every run and adds random ones
        ids = [c.get("id") for c in nb["cells"]]
        assert all(ids) and len(set(ids)) == len(ids), f"{path.name}: missing or repeated cell ids"
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
        assert "colab-badge" in nb["cells"][0]["source"] if isinstance(nb["cells"][0]["source"], str) \
            else "colab-badge" in "".join(nb["cells"][0]["source"]), path.name


@pytest.mark.slow
def test_data_and_explore_notebooks_run_on_a_tiny_demo_layout(project_dirs, tmp_path):
    _, results = project_dirs
    source = write_dataset(tmp_path / "tiny", n_per_class=24)
    for name in ("01_download.ipynb", "02_explore.ipynb"):
        run(name, tmp_path, DATASET="demo", DATA_SOURCE=str(source))
    report = json.loads((results / "demo" / "data_report.json").read_text())
    assert report["n_images"] == 72 and report["is_demo"]
    assert {p.name for p in (results / "demo" / "figures").glob("*.png")} >= {
        "class_balance.png", "samples.png", "spectrum.png"}
    near = pd.read_csv(results / "demo" / "near_duplicates.csv")  # written even when empty
    assert list(near.columns)[:3] == ["split", "index", "file"]


@pytest.mark.slow
@pytest.mark.shared
def test_data_step_on_the_shared_shoes_copy(project_dirs, tmp_path):
    source = shared_path("sneakers")
    _, results = project_dirs
    run("01_download.ipynb", tmp_path, DATASET="sneakers", DATA_SOURCE=str(source))
    report = json.loads((results / "sneakers" / "data_report.json").read_text())
    assert report["n_images"] > 1500 and report["harmonise_jpeg"] == 90
    assert report["counts"]["test"]["REAL"] > 0 and report["counts"]["test"]["FAKE"] > 0


@pytest.mark.slow
def test_train_gan_evaluate_gradcam_notebooks_run_in_order(project_dirs, tmp_path):
    """04 -> 03 -> 05 -> 06 on a tiny demo-layout set: the chain `make all` runs (04 first, in a
    fresh tree: it builds the data itself, as it must when Colab opens it alone)."""
    data, results = project_dirs
    source = str(write_dataset(tmp_path / "tiny", n_per_class=32))
    common = dict(DATASET="demo", DATA_SOURCE=source)
    # precision asked (CPU_BF16, CPU_AMP), so no speed probe runs: the probes have their own tests
    run("04_train_gan.ipynb", tmp_path, EPOCHS=1, BATCH_SIZE=16, WIDTH=8, FID_SAMPLES=16, N_EXPORT=16,
        CPU_BF16=False, **common)
    assert list((data / "processed" / "demo").iterdir()) and (results / "demo" / "gan_metrics.json").exists()
    run("03_train_cnn.ipynb", tmp_path, EPOCHS=2, CPU_AMP=False, **common)
    run("05_evaluate.ipynb", tmp_path, N_BOOTSTRAP=50, GALLERY_SIZE=4, **common)
    run("06_gradcam.ipynb", tmp_path, N_PER_GROUP=2, N_AVERAGE=16, N_FAITHFUL=8, **common)
    demo = results / "demo"
    # notebook 03 trains the default, fits the linear probe and trains the robust detector;
    # 05 evaluates all three
    robust = run_name("fast", ROBUST_DEGRADE["demo"])
    names = sorted({"fast", "lite0_probe", robust})
    for name in names:
        assert Detector.load(demo / "models" / f"{name}.pt").robustness["split"] == "val"
    assert list((demo / "curves").glob("*.png")) and list((demo / "generated_images").glob("*.png"))
    metrics = pd.read_csv(demo / "performance_metrics.csv")
    assert sorted(metrics["model"]) == names and metrics["ci_low"].notna().all()
    assert (demo / "confusion_matrix.png").exists() and (demo / "gradcam" / "faithfulness.csv").exists()
    severity = pd.read_csv(demo / "robustness_severity.csv")  # the clean and the robust detector's curves
    assert robust in set(severity["model"]) and severity["model"].nunique() == 2
    assert set(severity["family"]) == {"blur", "rescale", "jpeg", "crop", "rescale_jpeg"}
    assert (severity["acc_low"] <= severity["accuracy"]).all() and list((demo / "evaluation").glob("severity_*.png"))
    near = pd.read_csv(demo / "near_duplicate_check.csv")
    for _, rows in near.groupby("model"):
        assert rows["images"].tolist() == ["all test images", "no near-duplicate in train",
                                           "near-duplicate in train"]
    unseen = pd.read_csv(demo / "cross_dataset_unseen.csv")
    # the best from scratch by validation, every pretrained one and the one predict uses
    pretrained = unseen.set_index("detector")["pretrained"].to_dict()
    assert pretrained.pop("demo/lite0_probe") is True and not any(pretrained.values())
    assert set(pretrained) <= {"demo/fast", f"demo/{robust}"} and f"demo/{best_path('demo').stem}" in unseen["detector"].values


# --------------------------------------------------------------------------- each notebook alone

def printed_text(nb: dict) -> str:
    """What an executed notebook printed (stream outputs), as one string."""
    return "".join("".join(o["text"]) if isinstance(o.get("text"), list) else o.get("text", "")
                   for c in nb["cells"] for o in c.get("outputs", []))


@pytest.mark.slow
def test_explore_alone_builds_the_demo_set_on_the_spot(project_dirs, tmp_path):
    """Colab opens each notebook in a fresh runtime: 02 with nothing in data/ or results/ builds
    the demo set itself (the shipped generator: seconds) and says so."""
    data, results = project_dirs
    nb = run("02_explore.ipynb", tmp_path, DATASET="demo")
    printed = printed_text(nb)
    assert "building the offline demo set" in printed and "demo set built in" in printed
    assert list((data / "raw" / "demo").glob("demo-v2-*/manifest.json"))
    assert (results / "demo" / "figures" / "class_balance.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name, parameters", [
    # the probe, the robust detector and the precision probe are the chain test's and their own
    ("03_train_cnn.ipynb", dict(EPOCHS=1, PROBE=False, ROBUST="none", CPU_AMP=False)),
    ("05_evaluate.ipynb", dict(N_BOOTSTRAP=20, GALLERY_SIZE=2, ROBUSTNESS=False)),
    ("06_gradcam.ipynb", dict(N_PER_GROUP=1, N_AVERAGE=8, N_FAITHFUL=4)),
])
def test_each_notebook_runs_alone_in_a_fresh_tree(project_dirs, tmp_path, name, parameters):
    """03, 05 and 06 each run with empty data/ and results/ (no notebook before them; 04 does in
    the chain test above): the data is built on the spot, and 05 and 06 train the dataset's
    default detector first, saying so. A tiny demo-layout copy stands in for the demo's 3,200
    images to keep the test short."""
    data, results = project_dirs
    source = str(write_dataset(tmp_path / "tiny", n_per_class=24))
    nb = run(name, tmp_path, DATASET="demo", DATA_SOURCE=source, **parameters)
    printed = printed_text(nb)
    if name in ("05_evaluate.ipynb", "06_gradcam.ipynb"):
        assert "No detector of demo" in printed and "trained fast in" in printed
    assert list((data / "processed" / "demo").iterdir())  # the cache was built by this notebook
    outputs = {"03_train_cnn.ipynb": "models/fast.pt", "05_evaluate.ipynb": "performance_metrics.csv", "06_gradcam.ipynb": "gradcam/faithfulness.csv"}
    assert (results / "demo" / outputs[name]).exists()


# --------------------------------------------------------------------------- misspelt parameters

def tiny_notebook(folder: Path, name: str, parameters: str) -> Path:
    """A notebook with one code cell tagged ``parameters`` (never executed here)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(EPOCHS)")]
    path = folder / name
    nbformat.write(nb, path)
    return path


def test_a_misspelt_parameter_is_refused_with_the_valid_names(tmp_path):

    train = tiny_notebook(tmp_path, "train.ipynb", 'DATASET = "demo"\nEPOCHS = 3\nLR = 0.1\n')
    tiny_notebook(tmp_path, "gan.ipynb", 'DATASET = "demo"\nWIDTH = 8\n')
    parameters.check_parameters(train, ["-p", "EPOCHS", "5", "-r", "LR", "0.2"], ["-p", "DATASET", "x"])
    with pytest.raises(ValueError, match=r"unknown parameter EPOHCS \(did you mean EPOCHS\?\); "
                                         r"train.ipynb declares: DATASET, EPOCHS, LR"):
        parameters.check_parameters(train, ["-p", "EPOHCS", "5"])
    with pytest.raises(ValueError, match="unknown parameter BATCH"):  # YAML forms count too
        parameters.check_parameters(train, ["-y", "BATCH: 4"])
    # PARAMS goes to every notebook: a name some notebook declares is fine, a typo is not
    parameters.check_parameters(train, [], ["-p", "WIDTH", "16"])
    with pytest.raises(ValueError, match=r"unknown parameter WDTH \(did you mean WIDTH\?\); the "
                                         r"notebooks declare: DATASET, EPOCHS, LR, WIDTH"):
        parameters.check_parameters(train, [], ["-p", "WDTH", "16"])
    assert parameters.main([str(train), "-p", "EPOCHS", "1", "--", "-p", "DATASET", "demo"]) == 0
    assert parameters.main([str(train), "-p", "EPOHCS", "1"]) == 1


def test_make_checks_the_parameters_before_papermill_runs():
    """`make -n` (prints the commands, runs nothing): each step's check precedes its papermill
    call and sees the step's own options and, after --, those of every notebook."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "-B", "train", "DATASET=demo", "TRAIN_PARAMS=-p EPOHCS 1",
                          "PARAMS=-p DEVICE cpu"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    check = next(i for i, line in enumerate(out) if "helpers.core.parameters notebooks/03_train_cnn" in line)
    run = next(i for i, line in enumerate(out) if "papermill notebooks/03_train_cnn" in line)
    assert check < run
    assert out[check].split("helpers.core.parameters ")[1].split() == [
        "notebooks/03_train_cnn.ipynb", "-p", "EPOHCS", "1", "--", "-p", "DATASET", "demo",
        "-p", "SEED", "0", "-p", "DEVICE", "cpu"]

    with pytest.raises(ValueError, match=r"did you mean EPOCHS\?\); 03_train_cnn.ipynb declares"):
        parameters.check_parameters(NOTEBOOKS / "03_train_cnn.ipynb", ["-p", "EPOHCS", "1"],
                                  ["-p", "DATASET", "demo", "-p", "DEVICE", "cpu"])
