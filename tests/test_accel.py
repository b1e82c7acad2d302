"""Mixed precision is used only where it is faster and native: CUDA (bfloat16 from sm_80,
float16 with a loss scaler below), and CPUs with native bfloat16; inference is fp32 everywhere;
copies are asynchronous only on CUDA; determinism is chosen per device."""

from __future__ import annotations

import contextlib
import typing

import matplotlib as mpl
import numpy as np
import pytest
import torch

from helpers.core import accel

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_cpu_autocast_only_on_cpus_with_native_bfloat16(monkeypatch, native):
    monkeypatch.setattr(accel, "cpu_has_bf16", lambda: native)
    assert accel.amp_dtype(CPU, cpu=True) == (torch.bfloat16 if native else None)
    assert accel.amp_dtype(CPU) is None  # the GAN does not ask for it
    with accel.autocast(CPU, enabled=True, cpu=True):
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == (torch.bfloat16 if native else torch.float32)
    with accel.autocast(CPU, enabled=False, cpu=True):
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32


def test_cpu_has_bf16_reads_the_processor_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert accel.cpu_has_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert accel.cpu_has_bf16() is True


@pytest.mark.parametrize("cap, native", [("AVX2", False), ("avx512_core", False),
                                         ("AVX512_CORE_BF16", True), ("AVX512_CORE_AMX", True)])
def test_a_onednn_cap_below_bfloat16_means_fp32(monkeypatch, cap, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert accel.cpu_has_bf16() is native


def test_uint8_batches_become_normalised_floats_in_the_same_layout():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8).contiguous(
        memory_format=torch.channels_last)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.2, 0.2])
    x = accel.to_float(images, mean, std)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x[:, 1], (images[:, 1].float() / 255 - 0.4) / 0.2)


def test_malloc_keeps_freed_memory_unless_told_not_to(monkeypatch):
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert not accel.reuse_freed_memory()  # nothing to tune elsewhere
        return
    for name in accel.MALLOC_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REUSE_FREED_MEMORY", "1")
    assert accel.reuse_freed_memory()  # glibc accepted both settings
    monkeypatch.setenv("REUSE_FREED_MEMORY", "0")
    assert not accel.reuse_freed_memory()
    monkeypatch.delenv("REUSE_FREED_MEMORY")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")  # the user's own choice wins
    assert not accel.reuse_freed_memory()


def test_inference_batch_is_small_on_a_cpu_large_on_a_gpu_and_a_given_one_wins():
    assert accel.inference_batch_size(CPU) == accel.CPU_INFERENCE_BATCH == 64
    assert accel.inference_batch_size("cuda") == accel.ACCELERATOR_INFERENCE_BATCH == 512
    assert accel.inference_batch_size("cpu", 7) == 7
    with pytest.raises(ValueError, match="at least 1"):
        accel.inference_batch_size(CPU, 0)


def test_scoring_runs_in_cpu_sized_chunks_with_the_same_logits():
    from helpers.core.scoring import predict_logits

    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 1, 3)

        def forward(self, x):
            seen.append(len(x))
            return self.conv(x).mean(dim=(1, 2, 3))

    model = Recorder().eval()
    images = torch.randint(0, 256, (150, 3, 8, 8), dtype=torch.uint8)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    default = predict_logits(model, images, mean, std)
    assert seen == [64, 64, 22]
    seen.clear()
    one_pass = predict_logits(model, images, mean, std, batch_size=150)
    assert seen == [150]
    torch.testing.assert_close(default, one_pass)


# --------------------------------------------------------------------------- CUDA and MPS branches
# Forced on the CPU: torch.cuda's answers (capability, bf16 support) are stood in for.

CUDA, MPS = torch.device("cuda"), torch.device("mps")


def force_cuda(monkeypatch, capability: tuple[int, int]) -> None:
    """Make torch.cuda report a GPU of ``capability`` whose bfloat16 is 'supported' (emulated
    below sm_80, as torch.cuda.is_bf16_supported() says on a T4)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


class ScalerSpy:
    """Stands in for torch.amp.GradScaler: records the device and whether it was enabled."""

    made: typing.ClassVar[list] = []

    def __init__(self, device="cuda", enabled=True, **_):
        self.device, self.enabled = device, enabled
        ScalerSpy.made.append((device, enabled))

    def is_enabled(self):
        return self.enabled


@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16), ((7, 0), torch.float16),
                                               ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_cuda_takes_bfloat16_only_from_sm80_and_float16_with_a_scaler_below(monkeypatch, capability, dtype):
    force_cuda(monkeypatch, capability)
    monkeypatch.setattr(torch.amp, "GradScaler", ScalerSpy)
    ScalerSpy.made = []
    assert accel.amp_dtype(CUDA) == dtype  # though is_bf16_supported() says True on every one
    accel.grad_scaler(CUDA)
    accel.grad_scaler(CUDA, enabled=False)  # --no-amp: fp32, nothing to scale
    assert ScalerSpy.made == [("cuda", dtype == torch.float16), ("cuda", False)]


def test_mps_and_the_cpu_train_without_a_scaler(monkeypatch):
    monkeypatch.setattr(accel, "cpu_has_bf16", lambda: True)
    assert accel.amp_dtype(MPS) is None and not accel.grad_scaler(MPS).is_enabled()
    assert not accel.grad_scaler(CPU).is_enabled()
    assert not accel.grad_scaler(CPU, cpu=True).is_enabled()  # bfloat16 needs no scaling
    assert isinstance(accel.autocast(MPS), contextlib.nullcontext)


@pytest.mark.parametrize("device, capability", [(CUDA, (7, 5)), (CUDA, (8, 0)), (MPS, None), (CPU, None)])
def test_inference_runs_in_fp32_on_every_device(monkeypatch, device, capability):
    if capability:
        force_cuda(monkeypatch, capability)
    monkeypatch.setattr(accel, "cpu_has_bf16", lambda: True)
    assert accel.INFERENCE_DTYPE == torch.float32
    assert isinstance(accel.inference_autocast(device), contextlib.nullcontext)
    # a detector trained in bfloat16 on a CPU is scored so on CPUs that have it, nowhere else
    assert isinstance(accel.inference_autocast(device, cpu_amp=True), contextlib.nullcontext) == (device != CPU)


def test_scoring_never_enters_autocast_off_a_bf16_cpu_detector(monkeypatch):
    from helpers.core.scoring import predict_logits

    def refuse(*args, **kwargs):
        raise AssertionError("inference entered autocast")

    monkeypatch.setattr(torch, "autocast", refuse)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 3), torch.nn.Flatten(), torch.nn.LazyLinear(1)).eval()
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    logits = predict_logits(model, images, torch.full((3,), 0.5), torch.full((3,), 0.25))
    assert logits.dtype == torch.float32 and logits.shape == (4,)


def test_an_empty_scaler_state_leaves_a_float16_scaler_fresh_and_a_disabled_one_ignores_any():
    enabled, disabled = torch.amp.GradScaler("cpu", init_scale=8.0), torch.amp.GradScaler("cpu", enabled=False)
    accel.load_scaler_state(enabled, disabled.state_dict())  # saved in bf16/fp32: {} (torch raises on it)
    assert enabled.get_scale() == 8.0
    accel.load_scaler_state(enabled, torch.amp.GradScaler("cpu", init_scale=2.0).state_dict())
    assert enabled.get_scale() == 2.0
    accel.load_scaler_state(disabled, enabled.state_dict())
    assert not disabled.is_enabled()


@pytest.mark.parametrize("kind, non_blocking, pinned", [("cuda", True, True), ("mps", False, False),
                                                        ("cpu", False, False)])
def test_only_cuda_copies_asynchronously_and_only_from_pinned_memory(monkeypatch, kind, non_blocking, pinned):
    copies, pins = [], []
    real_to = torch.Tensor.to

    def fake_to(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, (str, torch.device)) and torch.device(target).type != "cpu":
            copies.append(kwargs.get("non_blocking", False))
            return self  # stands in for the device copy
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: pins.append(1) or self)
    out = accel.images_to_device(np.zeros((2, 4, 4, 3), np.uint8), torch.device(kind))
    assert out.shape == (2, 3, 4, 4) and out.is_contiguous(memory_format=torch.channels_last)
    assert copies == ([non_blocking] if kind != "cpu" else [])
    assert bool(pins) == pinned


@pytest.mark.parametrize("device, deterministic", [("cpu", True), ("cuda", False), ("mps", False)])
def test_determinism_is_chosen_per_device_by_notebook_setup(monkeypatch, device, deterministic):
    from helpers.core import notebook

    seen = []
    monkeypatch.setattr(notebook, "seed_everything", lambda seed, det: seen.append(det))
    monkeypatch.setattr(notebook, "set_cpu_threads", lambda: 1)
    assert accel.deterministic_by_default(device) is deterministic
    with mpl.rc_context():  # setup's plotting style stays inside this test
        notebook.setup("demo", 0, device=device)
        notebook.setup("demo", 0, deterministic=True, device=device)  # asked: as asked
    assert seen == [deterministic, True]


def test_auto_setup_on_a_gpu_machine_is_not_deterministic(monkeypatch):
    from helpers.core import notebook

    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(notebook, "seed_everything", lambda seed, det: seen.append(det))
    monkeypatch.setattr(notebook, "set_cpu_threads", lambda: 1)
    monkeypatch.setattr(notebook, "check_versions", lambda: {"python": "3", "packages": {}})
    with mpl.rc_context():
        notebook.setup("demo", 0)
    assert seen == [False]


class _Tiny(torch.nn.Sequential):
    """A detector's network small enough to score in a test (its own class, so patching its
    ``to`` touches nothing else)."""

    def __init__(self):
        super().__init__(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                         torch.nn.Linear(2, 1))


def _detector(model):
    from helpers.core.detector import Detector

    return Detector(model.eval(), "fast", "demo", 8, [0.5] * 3, [0.25] * 3, {}, {}, "fingerprint")


def test_predict_proba_moves_the_model_to_the_device_it_is_asked_for(monkeypatch):
    from helpers.core.detector import Detector

    torch.manual_seed(0)
    model = _Tiny()
    detector = _detector(model)
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    expected = detector.predict_proba(images)
    moves, real_to = [], torch.nn.Module.to
    monkeypatch.setattr(_Tiny, "to", lambda self, *a, **k: moves.append(a) or real_to(self, *a, **k))
    # the model reports another device (as one loaded on a GPU would): asking for the CPU moves it
    monkeypatch.setattr(Detector, "device", property(lambda self: CPU if moves else torch.device("cuda", 0)))
    assert np.array_equal(detector.predict_proba(images, device="cpu"), expected)
    assert moves == [(CPU,)]
    detector.predict_proba(images, device="cpu")  # there already: no second move
    assert moves == [(CPU,)]


@pytest.mark.cuda
def test_a_cpu_detector_scores_on_the_gpu_in_fp32_like_on_the_cpu():
    torch.manual_seed(0)
    detector = _detector(_Tiny())
    images = np.random.default_rng(0).integers(0, 256, (300, 8, 8, 3), dtype=np.uint8)
    on_cpu = detector.predict_proba(images)
    on_gpu = detector.predict_proba(images, device="cuda")
    assert detector.device.type == "cuda"
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=0, atol=1e-5)  # fp32 both: no bf16 rounding


def test_host_syncs_are_counted_under_cuda_sync_debug_mode(monkeypatch):
    import warnings

    modes = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    calls = []

    def step():  # what torch does on a GPU in "warn" mode for each synchronising call
        calls.append(1)
        if modes and modes[-1] == "warn":
            warnings.warn(f"{accel.SYNC_WARNING} (item)", UserWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)

    found = accel.count_host_syncs(step, warmup=2, repeats=3)
    assert len(calls) == 5 and len(found) == 3  # the warm-up is not watched
    assert modes == ["warn", 0]  # the previous mode is put back


@pytest.mark.cuda
def test_on_this_gpu_the_precision_follows_its_compute_capability():
    device = torch.device("cuda")
    native = torch.cuda.get_device_capability() >= (8, 0)
    assert accel.amp_dtype(device) == (torch.bfloat16 if native else torch.float16)
    assert accel.grad_scaler(device).is_enabled() is not native
    x = torch.randn(4, 8, device=device)
    with accel.autocast(device):
        y = torch.nn.Linear(8, 2).to(device)(x)
    assert y.dtype == accel.amp_dtype(device)
    images = accel.images_to_device(np.zeros((3, 4, 4, 3), np.uint8), device)
    assert images.device.type == "cuda" and int(images.sum()) == 0
