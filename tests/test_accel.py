"""Mixed precision is used only where it is faster: CUDA, and CPUs with native bfloat16."""

from __future__ import annotations

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
    from helpers.core.detector import predict_logits

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
