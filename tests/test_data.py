"""The data layer: registry, sources, cache keying, splits, leakage, bad files, offline errors."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.core import images, paths
from helpers.data import sources
from helpers.data.cache import assign_split, load_cache, prepare
from helpers.data.datasets import (
    DATASETS,
    DROPPED,
    SPLITS,
    DatasetError,
    DatasetSpec,
    DataUnavailableError,
    get_spec,
)
from helpers.data.demo import build_demo
from helpers.data.sources import (
    _kaggle_cache_dir,
    classify_path,
    kaggle_completion_marker,
    locate,
    zip_member_name,
)
from helpers.gan.demo import demo_fakes
from helpers.training.config import TrainConfig
from helpers.training.loop import fit
from tests.conftest import write_dataset


def tree_digest(root: Path, pattern: str = "*") -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob(pattern)):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- registry and paths

def test_registry_knows_the_three_datasets():
    assert set(DATASETS) == {"cifake", "sneakers", "demo"}
    cifake = get_spec("cifake")
    assert cifake.kaggle_ref == "birdy654/cifake-real-and-ai-generated-synthetic-images/versions/3"
    assert cifake.official_split and cifake.native_size == 32
    assert get_spec("sneakers").kaggle_handle == "sunnykakar/shoes-dataset-real-and-ai-generated-images"
    assert get_spec("demo").is_demo


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(KeyError, match="cifake"):
        get_spec("imagenet")


@pytest.mark.parametrize("rel, expected", [
    ("train/REAL/0001.jpg", (0, "train")),
    ("cifake/test/FAKE/0001 (2).jpg", (1, "test")),
    ("ai-midjourney/abc.jpg", (1, None)),
    ("Shoes/real/12.jpg", (0, None)),
    ("LICENSE", (None, None)),
    ("train/other/x.jpg", (None, "train")),
])
def test_labels_and_splits_come_from_folder_names(rel, expected):
    spec = get_spec("cifake") if "train" in rel or "test" in rel else get_spec("sneakers")
    assert classify_path(rel, spec) == expected


# ---------------------------------------------------------------- sources

def _zip(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder.parent).as_posix())
    return out


def _tar(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as archive:
        archive.add(folder, arcname=folder.name)
    return out


def test_folder_zip_and_tar_sources_give_the_same_cache(project_dirs, tiny_cifake, tmp_path):
    caches = [prepare("cifake", src, seed=0, progress=False) for src in
              (tiny_cifake, _zip(tiny_cifake, tmp_path / "c.zip"), _tar(tiny_cifake, tmp_path / "c.tar.gz"))]
    assert len({c.path for c in caches}) == 3  # different sources, different keys
    assert len({c.fingerprint for c in caches}) == 1  # ... the same decoded data
    assert caches[0].images.shape == (48, 32, 32, 3) and caches[0].images.dtype == np.uint8


def test_a_missing_local_copy_names_the_path(project_dirs, tmp_path):
    with pytest.raises(DataUnavailableError, match="does not exist"):
        prepare("sneakers", tmp_path / "nowhere", progress=False)


def test_a_folder_without_class_folders_says_what_layout_is_expected(project_dirs, tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataUnavailableError, match="class folders"):
        prepare("sneakers", tmp_path / "flat", progress=False)


# ---------------------------------------------------------------- cache

def test_cache_is_reused_and_keyed_by_source_size_and_seed(project_dirs, tiny_cifake):
    first = prepare("cifake", tiny_cifake, progress=False)
    stamp = (first.path / "meta.json").stat().st_mtime_ns
    again = prepare("cifake", tiny_cifake, progress=False)
    assert again.path == first.path and (again.path / "meta.json").stat().st_mtime_ns == stamp
    assert prepare("cifake", tiny_cifake, image_size=16, progress=False).path != first.path
    assert prepare("cifake", tiny_cifake, seed=1, progress=False).path != first.path
    Image.new("RGB", (32, 32), "red").save(tiny_cifake / "train" / "REAL" / "extra.png")
    changed = prepare("cifake", tiny_cifake, progress=False)
    assert changed.path != first.path and changed.meta["n_images"] == first.meta["n_images"] + 1


def test_cache_loads_fast_and_holds_what_it_should(project_dirs, tiny_cifake):
    cache = prepare("cifake", tiny_cifake, progress=False)
    loaded = load_cache(cache.path)
    assert np.array_equal(loaded.images, cache.images) and loaded.files.dtype.kind == "U"
    assert set(np.unique(loaded.labels)) == {0, 1}
    assert loaded.meta["environment"]["packages"]["torch"]
    assert len(loaded.records()) == len(loaded.labels)


def test_raw_data_is_never_modified(project_dirs, tiny_cifake):
    Path(tiny_cifake / "train" / "REAL" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    before = tree_digest(tiny_cifake)
    prepare("cifake", tiny_cifake, progress=False)
    prepare("cifake", tiny_cifake, force=True, progress=False)
    assert tree_digest(tiny_cifake) == before


# ---------------------------------------------------------------- splits and leakage

def test_official_split_is_kept_and_validation_is_carved_from_train(project_dirs, tiny_cifake):
    cache = prepare("cifake", tiny_cifake, progress=False)
    records = cache.records()
    assert (records.loc[records["official_split"] == "test", "split"] == "test").all()
    assert set(records.loc[records["official_split"] == "train", "split"]) == {"train", "val"}


def test_split_is_deterministic_stratified_and_seed_dependent():
    labels = np.repeat([0, 1], [300, 500]).astype(np.uint8)
    a = assign_split(labels, None, seed=3, val_fraction=0.1, test_fraction=0.15)
    b = assign_split(labels, None, seed=3, val_fraction=0.1, test_fraction=0.15)
    c = assign_split(labels, None, seed=4, val_fraction=0.1, test_fraction=0.15)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    for code, fraction in ((1, 0.1), (2, 0.15)):
        part = labels[a == code]
        assert abs(len(part) / len(labels) - fraction) < 0.01
        assert abs(part.mean() - labels.mean()) < 0.02  # same class balance as the whole


def test_identical_pixels_across_splits_are_removed_from_evaluation(project_dirs, tiny_cifake):
    src = tiny_cifake / "train" / "FAKE" / "fake000.png"
    shutil.copy(src, tiny_cifake / "test" / "FAKE" / "copy_of_train.png")
    shutil.copy(src, tiny_cifake / "test" / "REAL" / "mislabelled_copy.png")
    shutil.copy(tiny_cifake / "train" / "REAL" / "real001.png", tiny_cifake / "test" / "REAL" / "leak.png")
    cache = prepare("cifake", tiny_cifake, progress=False)
    removed = set(cache.files[cache.split == DROPPED])
    assert {"test/REAL/leak.png", "test/FAKE/copy_of_train.png", "test/REAL/mislabelled_copy.png",
            "train/FAKE/fake000.png"} == removed
    reasons = cache.report().set_index("file")["reason"]
    assert reasons["test/REAL/leak.png"] == ("removed from test: pixels identical to train file "
                                             "train/REAL/real001.png")
    # the same pixels under both labels: a contradiction, removed from every split, named
    for name, part in (("test/REAL/mislabelled_copy.png", "test"), ("train/FAKE/fake000.png", "train")):
        assert reasons[name].startswith(f"removed from {part}: contradiction, pixels identical "
                                        "under both labels: ")
        assert "test/REAL/mislabelled_copy.png (REAL)" in reasons[name]
    test_hashes = {img.tobytes() for img in cache.part("test")[0]}
    assert not test_hashes & {img.tobytes() for img in cache.part("train")[0]}
    assert cache.meta["n_removed_leakage"] == 4 and cache.meta["n_contradictions"] == 3
    protocols = cache.test_protocols()  # the clean protocol holds none of them
    assert not set(cache.files[protocols["clean"]]) & removed


# ---------------------------------------------------------------- bad files

def _save(img: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


def test_every_kind_of_bad_file_is_converted_or_skipped_with_a_reason(project_dirs, tiny_cifake):
    real = tiny_cifake / "train" / "REAL"
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    _save(rgb.convert("L"), real / "gray.png")
    _save(rgb.convert("RGBA"), real / "rgba.png")
    _save(rgb.convert("CMYK"), real / "cmyk.jpg")
    _save(rgb.convert("P"), real / "palette.png")
    _save(Image.fromarray((np.arange(1024).reshape(32, 32) * 64).astype(np.uint16)), real / "deep16.png")
    _save(rgb.resize((64, 48)), real / "bigger.png")
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG")
    (real / "truncated.jpg").write_bytes(buffer.getvalue()[:200])
    (real / "notes.txt").write_text("not an image")
    (real / "fake_suffix.jpg").write_bytes(b"this is text, not a JPEG")
    (tiny_cifake / "README.md").write_text("top-level readme")

    cache = prepare("cifake", tiny_cifake, progress=False)
    report = cache.report().set_index("file")
    skipped = report[report["action"] == "skipped"]["reason"]
    assert "truncated" in skipped["train/REAL/truncated.jpg"] or "corrupt" in skipped["train/REAL/truncated.jpg"]
    assert "not an image" in skipped["train/REAL/notes.txt"]
    assert "not an image" in skipped["train/REAL/fake_suffix.jpg"]
    assert "class folder" in skipped["README.md"]
    converted = report[report["action"] == "converted"]["reason"]
    assert "L to RGB" in converted["train/REAL/gray.png"]
    assert "RGBA to RGB" in converted["train/REAL/rgba.png"]
    assert "CMYK to RGB" in converted["train/REAL/cmyk.jpg"]
    assert "P to RGB" in converted["train/REAL/palette.png"]
    assert "to RGB" in converted["train/REAL/deep16.png"]
    assert "resized 64x48 to 32x32" in converted["train/REAL/bigger.png"]
    assert cache.images.shape[1:] == (32, 32, 3)
    deep = cache.images[list(cache.files).index("train/REAL/deep16.png")]
    assert deep.max() > 200 and deep.min() < 10  # 16-bit range scaled, not clipped to white


def test_alpha_is_composited_on_white_and_sizes_follow_the_rule():
    transparent = Image.new("RGBA", (1024, 768), (0, 0, 0, 0))
    buffer = io.BytesIO()
    transparent.save(buffer, format="PNG")
    array, info = images.decode(buffer.getvalue(), 32)
    assert array.shape == (32, 32, 3) and (array == 255).all()
    assert (info.width, info.height, info.mode) == (1024, 768, "RGBA")


def test_images_at_the_target_size_are_not_resampled():
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    assert np.array_equal(images.decode(buffer.getvalue(), 32)[0], pixels)


@pytest.mark.parametrize("quality", [50, 75, 90, 95])
def test_jpeg_quality_is_estimated_from_the_tables(quality):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "gray").save(buffer, format="JPEG", quality=quality)
    assert images.decode(buffer.getvalue(), 16)[1].jpeg_quality == quality


def test_jpeg_quality_estimate_covers_every_quality():
    """Each of Pillow's 100 qualities is recognised, up to qualities whose tables coincide."""
    tables = {}
    for quality in range(1, 101):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), "gray").save(buffer, format="JPEG", quality=quality)
        with Image.open(buffer) as img:
            tables[quality] = tuple(img.quantization[0])
    for quality, table in tables.items():
        lowest_same = min(q for q, t in tables.items() if sorted(t) == sorted(table))
        assert images.estimate_jpeg_quality(table) == lowest_same, quality


def test_harmonisation_gives_both_classes_the_same_last_compression():
    pixels = np.random.default_rng(2).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    encoded = {}
    for q in (95, 90):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=q)
        encoded[q] = images.decode(buffer.getvalue(), 48, jpeg_quality=90)[0]
    plain = images.decode(buffer.getvalue(), 48)[0]
    assert not np.array_equal(encoded[95], plain)  # re-encoding happened
    # after harmonisation both copies sit equally close to the original pixels
    errors = [np.abs(encoded[q].astype(int) - pixels).mean() for q in (95, 90)]
    assert abs(errors[0] - errors[1]) < 0.25 * max(errors)


# ---------------------------------------------------------------- Kaggle, offline

def test_offline_download_fails_fast_with_instructions(project_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setattr(sources, "_network_reachable", lambda *a, **k: False)
    start = time.perf_counter()
    with pytest.raises(DataUnavailableError) as err:
        prepare("cifake", progress=False)
    message = str(err.value)
    for hint in ("kaggle.json", "KAGGLE_USERNAME", "DATA_SOURCE", "make all"):
        assert hint in message
    assert time.perf_counter() - start < 5


def small_cifake(monkeypatch, n_files: int) -> DatasetSpec:
    """The registry's CIFAKE, published (for this test) with ``n_files`` images."""
    spec = replace(get_spec("cifake"), expected_files=n_files)
    monkeypatch.setitem(DATASETS, "cifake", spec)
    return spec


def test_a_dataset_already_in_kagglehubs_cache_needs_no_network(project_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    spec = small_cifake(monkeypatch, 24)
    write_dataset(_kaggle_cache_dir(spec) / "cifake", n_per_class=8)
    kaggle_completion_marker(spec).touch()  # what kagglehub writes after a download
    monkeypatch.setattr(sources, "_network_reachable", lambda *a, **k: pytest.fail("network used"))
    assert prepare("cifake", progress=False).meta["n_images"] == 24


# ---------------------------------------------------------------- demo

def test_demo_set_is_deterministic_and_labelled_as_demo(project_dirs):
    with pytest.raises(DataUnavailableError, match="make data"):
        build_demo(seed=5, n_train=16, n_test=8)  # not built, and no generator to build it
    a = build_demo(demo_fakes, seed=5, n_train=16, n_test=8)
    first = tree_digest(a)  # every file, the manifest included (it records no timing)
    b = build_demo(demo_fakes, seed=5, n_train=16, n_test=8, force=True)
    assert a == b and tree_digest(b) == first
    assert len(list((a / "train" / "FAKE").glob("*.png"))) == 16
    readme = " ".join((a / "README.txt").read_text().split())
    assert "DEMO" in readme and "*not* a benchmark" in readme


#: sha256 of the first 64 FAKE images of the demo (seed 0) as uint8 bytes: the same on every
#: machine, since the generator's weights ship and it samples in float64 from NumPy's noise
DEMO_FAKES_DIGEST = "860db561a1805e989866513dc3aa382735106f1bb65d22829a3ec93bea06e99e"


@pytest.mark.parametrize("isa", ["native", "avx2", "default"])
def test_demo_fakes_are_the_same_bytes_whatever_the_cpu_kernels(isa):
    """The demo's fakes once differed by CPU kind; now the bytes are fixed. The kernels of an
    AVX2-only machine and the plain C++ ones are forced here through torch's own switches."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    if isa != "native":
        env.update(ATEN_CPU_CAPABILITY=isa, ONEDNN_MAX_CPU_ISA="AVX2" if isa == "avx2" else "SSE41")
    code = ("import hashlib, numpy as np; from helpers.gan.demo import demo_fakes; "
            "f, _ = demo_fakes(np.zeros((1, 32, 32, 3), np.uint8), 64, 0); "
            "print(hashlib.sha256(f.tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == DEMO_FAKES_DIGEST


def test_a_relative_data_source_becomes_absolute(tmp_path, monkeypatch):
    # the cache records where its source is; notebooks run in notebooks/, so it must be absolute
    (tmp_path / "copy").mkdir()
    monkeypatch.chdir(tmp_path)
    located = locate("sneakers", "copy")
    assert located.is_absolute() and located == (tmp_path / "copy").resolve()


def test_a_reused_cache_names_where_its_source_is_now(project_dirs, tiny_cifake, tmp_path):
    first = prepare("cifake", tiny_cifake, progress=False)
    moved = shutil.copytree(tiny_cifake, tmp_path / "moved")  # same files: same cache key
    again = prepare("cifake", moved, progress=False)
    assert again.path == first.path and again.meta["source"] == str(moved.resolve())


def test_reports_show_paths_inside_the_project_relative_to_it(tmp_path):

    inside = paths.ROOT / "data" / "processed" / "demo" / "cache"
    assert paths.shown(inside) == "data/processed/demo/cache"  # the same in every clone
    assert paths.shown(tmp_path / "cifake") == str((tmp_path / "cifake").resolve())  # elsewhere: absolute


# ---------------------------------------------------------------- file names are bytes

ODD_NAMES = [b"0 (10).jpg", b'photo, "final" v2.jpg', "café ñandú.jpg".encode(), "猫.jpg".encode(),
             b"caf\xe9-latin1.jpg", b"tab\there.jpg"]  # the Latin-1 one is not valid UTF-8


def _jpeg(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=75)
    return buffer.getvalue()


class LegacyName(zipfile.ZipInfo):
    """A zip entry whose name is stored as raw bytes without the UTF-8 flag (old tools)."""

    def _encodeFilenameFlags(self):  # zipfile calls it by this name
        return self.raw, self.flag_bits & ~0x800


def odd_name_sources(root: Path) -> dict[str, Path]:
    """The same CIFAKE-layout dataset with ODD_NAMES as a folder, a .tar.gz and a legacy zip."""
    rng = np.random.default_rng(3)
    members = []
    for split, n in (("train", 8), ("test", 3)):
        for cls in ("REAL", "FAKE"):
            for i in range(n):
                name = ODD_NAMES[i] if i < len(ODD_NAMES) else f"{i} ({i + 1}).jpg".encode()
                members.append((f"{split}/{cls}/".encode() + name, _jpeg(rng)))
    folder = root / "folder"
    try:
        for raw, content in members:
            path = os.path.join(os.fsencode(folder), raw)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as file:
                file.write(content)
    except OSError as err:  # e.g. macOS refuses names that are not UTF-8
        pytest.skip(f"this file system does not store arbitrary bytes in names: {err}")
    with tarfile.open(root / "set.tar.gz", "w:gz", encoding="utf-8", errors="surrogateescape") as tar:
        for raw, content in members:
            info = tarfile.TarInfo(os.fsdecode(raw))
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    with zipfile.ZipFile(root / "legacy.zip", "w") as archive:
        for raw, content in members:
            info = LegacyName(raw.decode("cp437"))
            info.raw = raw
            archive.writestr(info, content)
    return {"folder": folder, "tar": root / "set.tar.gz", "zip": root / "legacy.zip"}


def test_every_file_is_processed_whatever_bytes_its_name_holds(project_dirs, tmp_path):
    sources = odd_name_sources(tmp_path)
    caches = {kind: prepare("cifake", src, progress=False) for kind, src in sources.items()}
    names = {kind: sorted(map(str, cache.files)) for kind, cache in caches.items()}
    assert names["folder"] == names["tar"] == names["zip"]  # one reading of names for every source
    assert len({c.fingerprint for c in caches.values()}) == 1
    assert caches["folder"].meta["n_images"] == 22 and caches["folder"].meta["n_skipped"] == 0
    files = set(names["folder"])
    assert {"train/REAL/0 (10).jpg", "train/FAKE/café ñandú.jpg", "train/REAL/猫.jpg", "test/REAL/0 (10).jpg",
            "train/REAL/caf\\xe9-latin1.jpg", "train/REAL/tab\\there.jpg",
            'train/FAKE/photo, "final" v2.jpg', "train/REAL/7 (8).jpg"} <= files
    for cache in caches.values():  # the cache's text files are plain UTF-8, names escaped
        records = (cache.path / "records.csv").read_text(encoding="utf-8")
        assert "caf\\xe9-latin1.jpg" in records and "猫.jpg" in records
        cache.report()


def test_zip_names_without_the_utf8_flag_are_read_as_the_bytes_they_are(tmp_path):
    path = tmp_path / "names.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for raw in (b"plain.jpg", "café.jpg".encode(), b"caf\xe9.jpg"):
            info = LegacyName(raw.decode("cp437"))
            info.raw = raw
            archive.writestr(info, b"x")
        archive.writestr("flagged-猫.jpg", b"x")  # Python sets the UTF-8 flag itself
    with zipfile.ZipFile(path) as archive:
        names = [zip_member_name(m) for m in archive.infolist()]
    assert names == ["plain.jpg", "café.jpg", os.fsdecode(b"caf\xe9.jpg"), "flagged-猫.jpg"]
    assert [paths.printable(n) for n in names][2] == "caf\\xe9.jpg"


def test_printable_escapes_only_what_cannot_be_shown():
    assert paths.printable("train/FAKE/1000 (10).jpg") == "train/FAKE/1000 (10).jpg"
    assert paths.printable("café 猫.jpg") == "café 猫.jpg"
    assert paths.printable(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"
    assert paths.printable("a\nb\u202e.jpg") == "a\\nb\\u202e.jpg"  # newline, bidi override
    assert paths.printable(paths.printable(os.fsdecode(b"\xff.jpg"))) == "\\xff.jpg"


# ---------------------------------------------------------------- a dataset that is not what it claims

def _no_cache_written(data_dir: Path, dataset: str) -> bool:
    folder = data_dir / "processed" / dataset
    return not folder.exists() or not any(folder.iterdir())


def test_one_recognised_class_stops_the_data_step_naming_the_folders(project_dirs, tmp_path):
    rng = np.random.default_rng(5)
    for folder in ("only_real/real", "underscore/real", "underscore/ai_generated"):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(
                tmp_path / folder / f"{i}.jpg")
    with pytest.raises(DatasetError, match=r"one class only \(REAL\)") as only:
        prepare("sneakers", tmp_path / "only_real", progress=False)
    assert "recognised: REAL: real/ (6)" in str(only.value)
    with pytest.raises(DatasetError) as underscore:
        prepare("sneakers", tmp_path / "underscore", progress=False)
    message = str(underscore.value)
    assert "images outside any class folder: ai_generated/ (6)" in message
    assert "ai-generated" in message and "ai-midjourney" in message and "REAL: real" in message
    assert _no_cache_written(project_dirs[0], "sneakers")


def test_a_split_without_one_class_stops_the_data_step(project_dirs, tmp_path):
    source = write_dataset(tmp_path / "set", n_per_class=8)
    shutil.rmtree(source / "test" / "FAKE")  # test/ holds real photos only
    with pytest.raises(DatasetError, match="test has no FAKE image") as err:
        prepare("cifake", source, progress=False)
    assert "test 4 REAL / 0 FAKE" in str(err.value)
    assert _no_cache_written(project_dirs[0], "cifake")


def test_tiny_datasets_get_both_classes_in_every_split_or_a_clear_error(project_dirs, tmp_path):
    for n in (3, 4, 5):
        cache = prepare("sneakers", write_dataset(tmp_path / f"s{n}", n, layout="shoes"),
                             progress=False)
        assert all(count >= 1 for split in cache.meta["counts"].values() for count in split.values())
    with pytest.raises(DatasetError, match="too few images"):
        prepare("sneakers", write_dataset(tmp_path / "s1", 1, layout="shoes"), progress=False)


def test_the_split_of_ordinary_datasets_is_unchanged():
    """The minimum of one image per class applies only where a fraction rounds below it."""
    from sklearn.model_selection import train_test_split

    labels = np.repeat([0, 1], [641, 1085])
    index = np.arange(len(labels))
    pool, test = train_test_split(index, test_size=0.15, random_state=0, stratify=labels)
    _, val = train_test_split(pool, test_size=0.1 / 0.85, random_state=0, stratify=labels[pool])
    split = assign_split(labels, None, 0, 0.1, 0.15)
    assert np.array_equal(np.flatnonzero(split == 2), np.sort(test))
    assert np.array_equal(np.flatnonzero(split == 1), np.sort(val))


def test_a_one_class_cache_is_never_trained_on(project_dirs, tmp_path):
    import torch


    cache = prepare("cifake", write_dataset(tmp_path / "set", n_per_class=8), progress=False)
    cache.labels = cache.labels.copy()
    cache.labels[cache.split == SPLITS.index("val")] = 0  # validation of one class
    config = TrainConfig(dataset="cifake", model="fast", width=8, epochs=1, batch_size=8,
                               device="cpu", threads=1)
    threads = torch.get_num_threads()
    with pytest.raises(DatasetError, match="val has no FAKE image"):
        fit(cache, config, out_dir=tmp_path / "models", progress=False)
    assert not (tmp_path / "models").exists() and torch.get_num_threads() == threads


def _zip_twice(tiny: Path, out: Path, prefixes: tuple[str, ...]) -> Path:
    with zipfile.ZipFile(out, "w") as archive:
        for prefix in prefixes:
            for path in sorted(tiny.rglob("*.png")):
                archive.write(path, prefix + path.relative_to(tiny).as_posix())
    return out


def test_an_archive_holding_the_dataset_twice_is_used_once_with_a_warning(project_dirs, tiny_cifake,
                                                                        tmp_path):
    once = prepare("cifake", _zip_twice(tiny_cifake, tmp_path / "once.zip", ("archive/",)),
                        progress=False)
    twice_zip = _zip_twice(tiny_cifake, tmp_path / "twice.zip", ("archive/", "archive/cifake/"))
    with pytest.warns(UserWarning, match=r"twice: 48 files under archive/cifake/ repeat those "
                                         r"under archive/"):
        twice = prepare("cifake", twice_zip, progress=False)
    assert twice.meta["counts"] == once.meta["counts"] and twice.fingerprint == once.fingerprint
    assert twice.meta["n_removed_leakage"] == 0  # no test image counted twice, none removed
    report = twice.report()
    copies = report[report["reason"].str.startswith("second copy of the dataset")]
    assert len(copies) == 48 and copies["file"].str.startswith("archive/cifake/").all()


def test_two_parts_with_the_same_file_names_are_not_copies(project_dirs, tmp_path):
    write_dataset(tmp_path / "set" / "part1", n_per_class=8, seed=1)
    write_dataset(tmp_path / "set" / "part2", n_per_class=8, seed=2)  # same names, other images
    cache = prepare("cifake", tmp_path / "set", progress=False)
    assert cache.meta["n_images"] == 48 and cache.meta["n_skipped"] == 0


def test_a_damaged_archive_member_is_one_skipped_file(project_dirs, tiny_cifake, tmp_path):
    path = tmp_path / "set.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for file in sorted(tiny_cifake.rglob("*.png")):
            archive.write(file, file.relative_to(tiny_cifake).as_posix())
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("train/REAL/real003.png")
        start = member.header_offset + 30 + len(member.filename.encode())
    raw[start + 100] ^= 0xFF  # its CRC no longer matches
    path.write_bytes(bytes(raw))
    cache = prepare("cifake", path, progress=False)
    report = cache.report().set_index("file")
    assert "cannot read it from the source (BadZipFile" in report.loc["train/REAL/real003.png", "reason"]
    assert cache.meta["n_images"] == 47
    truncated = tmp_path / "cut.tar.gz"
    _tar(tiny_cifake, tmp_path / "whole.tar.gz")
    truncated.write_bytes((tmp_path / "whole.tar.gz").read_bytes()[:3000])
    with pytest.raises(DataUnavailableError, match="damaged archive"):
        prepare("cifake", truncated, progress=False)


# ---------------------------------------------------------------- unfinished Kaggle downloads

def test_the_completion_marker_is_where_kagglehub_writes_it(tmp_path, monkeypatch):
    from kagglehub.cache import _get_completion_marker_filepath
    from kagglehub.handle import parse_dataset_handle

    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path))
    for name in ("cifake", "sneakers"):
        spec = get_spec(name)
        theirs = _get_completion_marker_filepath(parse_dataset_handle(spec.kaggle_ref))
        assert kaggle_completion_marker(spec) == Path(theirs)


def test_an_interrupted_kaggle_download_is_refused_with_the_command(project_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setattr(sources, "_network_reachable", lambda *a, **k: False)
    spec = small_cifake(monkeypatch, 30)
    folder = _kaggle_cache_dir(spec)
    write_dataset(folder / "train_only", n_per_class=8)  # no marker: the download was cut off
    shutil.rmtree(folder / "train_only" / "test")
    with pytest.raises(DataUnavailableError, match="unfinished download") as err:
        prepare("cifake", progress=False)
    assert f"kagglehub.dataset_download('{spec.kaggle_ref}', force_download=True)" in str(err.value)
    kaggle_completion_marker(spec).touch()  # marked finished, but 16 of 30 files
    with pytest.raises(DataUnavailableError, match="16 image files, but version 3 has 30"):
        prepare("cifake", progress=False)
    assert _no_cache_written(project_dirs[0], "cifake")


def test_a_short_fresh_download_is_refused_and_a_local_subset_is_not(project_dirs, tmp_path, monkeypatch):
    import kagglehub

    spec = small_cifake(monkeypatch, 100)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setattr(sources, "_network_reachable", lambda *a, **k: True)
    short = write_dataset(tmp_path / "mounted", n_per_class=8)  # e.g. a Kaggle notebook's input
    monkeypatch.setattr(kagglehub, "dataset_download", lambda ref: str(short))
    with pytest.raises(DataUnavailableError, match="incomplete download"):
        prepare("cifake", progress=False)
    # the same files as a local copy (DATA_SOURCE) are used: a local copy may be a subset
    assert spec.expected_files == 100
    assert prepare("cifake", short, progress=False).meta["n_images"] == 24
