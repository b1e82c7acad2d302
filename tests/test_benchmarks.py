"""The benchmark scripts still run, at tiny settings. Their figures are read by people, not
asserted (speed is never a test), but a script that no longer starts would otherwise be found
only by the next person who needs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile

import pytest
from PIL import Image

from tests.conftest import ROOT, shared_path


def run(script: str, *args: str, timeout: int = 300) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_inference_prints_medians_and_the_verdict():
    out = run("bench_inference.py", "--seconds", "0.05", "--rounds", "2", "--compare", "2:16",
              "--dataset", "no-such-dataset")
    assert "2 interleaved rounds" in out and "patch 2 width 16" in out
    assert "speed-ups below are against the better baseline median" in out
    assert "end-to-end line skipped" in out  # no checkpoint of that dataset: said, not fatal
    assert "target 5,000 images/s at 32x32 for `fast`: " in out


def test_bench_inference_batch_marks_the_batch_the_project_uses():
    out = run("bench_inference_batch.py", "--batch-sizes", "512", "64", "--seconds", "0.05",
              "--rounds", "1", "--only", "demo")
    assert "demo default: fast" in out and "shoes" not in out
    assert "* batch   64" in out and "x1.00" in out


def test_bench_train_compares_the_two_loops():
    shared_path("cifar10-test-jpg.zip")
    out = run("bench_train.py", "--images", "300", "--epochs", "1", "--rounds", "1",
              "--models", "cifake_paper")
    assert "369 MB" in out and "seed-style loop" in out and "project loop" in out
    assert re.search(r"images/s +x\d+\.\d", out)  # a speed-up figure next to the baseline


def test_bench_train_times_an_epoch_of_random_images_without_the_shared_data():
    # the GPU target's measurement: it must not depend on ../shared, which GPU users lack
    out = run("bench_train.py", "--images", "300", "--epochs", "1", "--rounds", "1",
              "--models", "cifake_paper", "--epoch-images", "600")
    seconds = re.search(r"one epoch of the CIFAKE default config \(\w+\) over 600 random 32x32 "
                        r"images on CPU: (\d+\.\d+) s", out)
    assert seconds and float(seconds.group(1)) > 0, out


def test_cifake_standin_has_cifakes_layout_and_no_source_in_two_splits(tmp_path):
    shared_path("sneakers")
    shared_path("cifar10-test-jpg.zip")
    out = tmp_path / "standin"
    printed = run("cifake_standin.py", str(out), "--test-per-class", "40", "--train-per-class", "120")
    assert "not CIFAKE" in printed
    for label in ("REAL", "FAKE"):
        test = {p.stem.rsplit("_", 1)[0] for p in (out / "test" / label).glob("*.jpg")}
        train = {p.stem.rsplit("_", 1)[0] for p in (out / "train" / label).glob("*.jpg")}
        assert len(list((out / "test" / label).glob("*.jpg"))) == 40
        assert len(list((out / "train" / label).glob("*.jpg"))) == 120
        assert test and train and not test & train  # whole source images per split
    with Image.open(next((out / "train" / "FAKE").glob("*.jpg"))) as img:
        assert img.size == (32, 32) and img.format == "JPEG"
    assert not list(tmp_path.glob("standin.tmp*"))  # the staging folder is gone
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cifake_standin

    with zipfile.ZipFile(cifake_standin.CIFAR) as archive:
        ids = [source_id for label in ("REAL", "FAKE") for source_id, _ in cifake_standin.sources(label, archive)]
    assert len(ids) == len(set(ids)) > 10_000  # one name per source image: no file overwrites another
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cifake_standin.py"), str(out)],
                           capture_output=True, text=True, check=False)
    assert again.returncode == 1 and "exists" in again.stderr  # never overwritten


def test_gan_recipes_scores_each_recipe_against_the_real_floor(tmp_path):
    """The GAN study's script on a tiny CIFAR-like archive: a KID row per recipe and the floor."""
    import csv

    import numpy as np

    archive = tmp_path / "photos.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(40):
            image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
            with zf.open(f"test/cat/{i:04d}.jpg", "w") as f:
                image.save(f, format="JPEG")
    out = run("gan_recipes.py", "--data", "cifar10", "--source", str(archive), "--recipes", "dcgan",
              "projected", "--minutes", "0.001", "--score-at", "0.001", "--fid-samples", "8",
              "--batch-size", "8", "--width", "8", "--out", str(tmp_path / "out"))
    rows = list(csv.DictReader((tmp_path / "out" / "kid_vs_time.csv").open()))
    assert [r["recipe"] for r in rows] == ["dcgan", "projected"] and {r["n_fake"] for r in rows} == {"8"}
    assert "floor: KID" in out and "[8 vs 8 images]" in out
    assert (tmp_path / "out" / "kid_vs_time.png").exists() and (tmp_path / "out" / "samples_projected.png").exists()
    # a variant joins the study under its tag, beside the earlier rows
    run("gan_recipes.py", "--data", "cifar10", "--source", str(archive), "--recipes", "dcgan", "--tag", "bf16",
        "--cpu-bf16", "--minutes", "0.001", "--score-at", "0.001", "--fid-samples", "8", "--batch-size", "8",
        "--width", "8", "--out", str(tmp_path / "out"))
    rows = list(csv.DictReader((tmp_path / "out" / "kid_vs_time.csv").open()))
    assert [r["recipe"] for r in rows] == ["dcgan", "projected", "dcgan+bf16"]
    runs = json.loads((tmp_path / "out" / "summary.json").read_text())["runs"]  # how each row was run
    assert sorted(runs) == ["dcgan", "dcgan+bf16", "projected"]
    assert (runs["dcgan"]["args"]["tag"], runs["dcgan+bf16"]["args"]["tag"]) == ("", "bf16") and runs["dcgan"]["isa"]


def test_cpu_results_fingerprint_saves_and_finds_no_difference_with_itself(tmp_path):
    path = tmp_path / "fingerprint.pt"
    assert "tensors saved" in run("cpu_results_fingerprint.py", "save", str(path))
    assert "0 differ, 0 in one file only" in run("cpu_results_fingerprint.py", "compare", str(path), str(path))


@pytest.mark.slow
def test_the_gpu_check_runs_every_section_in_its_cpu_smoke_mode(tmp_path):
    """The GPU check runs on a lent machine with minutes to spare: the script itself must not be
    what fails there. On the CPU every section runs at tiny settings (no GPU test is selected)."""
    out = run("gpu_check.py", "--device", "cpu", "--gan-seconds", "1", "--gan-images", "128",
              "--epoch-images", "1000", "--out", str(tmp_path), timeout=900)
    assert "every section ran" in out
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["failed"] == [] and 0 <= report["demo detector"]["val_acc"] <= 1  # one fp32 epoch
    assert report["GAN"]["steps"] > 0 and report["CUDA-marked tests"]["files"]
