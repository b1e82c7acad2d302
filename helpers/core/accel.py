"""Device-side data handling shared by the detector's training loop and the GAN.

The airbench recipe: decode once, keep the uint8 images on the device, convert and augment
there, use channels_last and mixed precision. On the CPU the detector runs in bfloat16
autocast where a short probe measures it faster than fp32 on the machine at hand
(:func:`helpers.core.precision_probe.choose_cpu_amp`), and in fp32 elsewhere; the GAN's plan measures its own step the same
way (:func:`helpers.gan.plan.gan_speed_probe`).

Precision, one rule for every device (:func:`amp_dtype`): *training* runs in bfloat16 autocast
on CUDA GPUs of compute capability 8.0 or more, in float16 autocast with a ``GradScaler``
(:func:`grad_scaler`) on older CUDA GPUs, in fp32 on MPS, and on a CPU in fp32 unless bfloat16
is native and asked for. *Inference* (a detector's validation, threshold and scoring, the GAN's
samples and export) runs in :data:`INFERENCE_DTYPE`, fp32, everywhere
(:func:`inference_autocast`); the one exception is a detector trained in bfloat16 on a CPU,
validated and scored in bfloat16 on CPUs that have it natively, as it always was.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else is passed to torch."""

    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_cpu_threads(threads: int | None = None) -> int:
    """Use every core for intra-op work (torch defaults to physical cores only), and let
    malloc reuse freed activations instead of faulting fresh pages in every step
    (:func:`reuse_freed_memory`)."""


    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    reuse_freed_memory()
    return threads


#: Images per forward pass when scoring without gradients. On a CPU a small batch keeps each
#: layer's activations in cache: the default detectors score 1.04-1.85x (shoes' lite0 3.1x)
#: faster than at 512, one reference model 0.82x (benchmarks/bench_inference_batch.py,
#: docs/cpu-speed-study.md); a GPU wants large batches.
CPU_INFERENCE_BATCH = 64
ACCELERATOR_INFERENCE_BATCH = 512


def inference_batch_size(device: torch.device | str, requested: int | None = None) -> int:
    """Images per forward pass for inference on ``device``: ``requested`` when given, else
    :data:`CPU_INFERENCE_BATCH` on a CPU and :data:`ACCELERATOR_INFERENCE_BATCH` elsewhere."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"batch size must be at least 1, not {requested}")
        return int(requested)
    return CPU_INFERENCE_BATCH if torch.device(device).type == "cpu" else ACCELERATOR_INFERENCE_BATCH


def images_to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 array -> (N, 3, H, W) uint8 tensor on ``device``, channels_last.

    Kept as uint8 (a quarter of fp32's memory): 100k 32x32 images are 307 MB. The copy is
    asynchronous only on CUDA, from pinned memory; elsewhere it is a plain blocking copy, since
    a ``non_blocking`` copy from pageable memory to MPS can hand over a half-written tensor
    (pytorch/pytorch#139550, #189690).
    """
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=cuda).contiguous(memory_format=torch.channels_last)


# oneDNN's ISA levels (ONEDNN_MAX_CPU_ISA) at which it still has native bfloat16 kernels
ONEDNN_BF16_LEVELS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX",
                      "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "ALL",
                      "DEFAULT"}


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX).

    Elsewhere bfloat16 is emulated and slower than fp32, as it is under a oneDNN cap below
    those instructions (``ONEDNN_MAX_CPU_ISA=AVX2``, or the older ``DNNL_MAX_CPU_ISA``): the
    figures are in docs/cpu-speed-study.md.
    """
    for variable in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        cap = os.environ.get(variable, "").strip().upper()
        if cap and cap not in ONEDNN_BF16_LEVELS:
            return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


#: The compute capability from which a CUDA GPU has native bfloat16 (Ampere, sm_80). Below it
#: ``torch.cuda.is_bf16_supported()`` still says True (bfloat16 is emulated), but cuDNN has no
#: bfloat16 kernels there: depthwise convolutions (EfficientNet-Lite0) fail with "unable to
#: find an engine" or crawl, so those GPUs train in float16 with a loss scaler.
CUDA_BF16_CAPABILITY = (8, 0)
#: What inference runs in on every device: the thresholds were chosen in fp32 (module docstring).
INFERENCE_DTYPE = torch.float32


def amp_dtype(device: torch.device, cpu: bool = False) -> torch.dtype | None:
    """The mixed-precision dtype for training on ``device``, or None for plain fp32.

    CUDA: bfloat16 where the GPU's compute capability is at least :data:`CUDA_BF16_CAPABILITY`,
    float16 below it (to be used with :func:`grad_scaler`). CPU: bfloat16 only when asked for
    (``cpu``) and the CPU has native bfloat16 arithmetic. MPS and others: none. The detector's
    loop and the GAN's step both take their precision from here.
    """
    device = torch.device(device)
    if device.type == "cuda":
        capability = tuple(torch.cuda.get_device_capability(device))
        return torch.bfloat16 if capability >= CUDA_BF16_CAPABILITY else torch.float16
    if device.type == "cpu" and cpu and cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, enabled: bool = True, cpu: bool = False):
    """Mixed-precision context for training on ``device``; on the CPU only with ``cpu``
    (see :func:`amp_dtype`)."""
    device = torch.device(device)
    dtype = amp_dtype(device, cpu) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, enabled: bool = True, cpu: bool = False) -> torch.amp.GradScaler:
    """A loss scaler for training on ``device``: enabled exactly where :func:`amp_dtype` says
    float16 (CUDA GPUs below compute capability 8.0), a pass-through elsewhere (bfloat16 and
    fp32 need no scaling; a disabled scaler's ``scale``, ``step`` and ``update`` change nothing).

    Micikevicius et al., "Mixed Precision Training", ICLR 2018: float16 gradients underflow
    without it.
    """
    device = torch.device(device)
    on = enabled and amp_dtype(device, cpu) == torch.float16
    return torch.amp.GradScaler(device.type, enabled=on)


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict | None) -> None:
    """Restore a :func:`grad_scaler`'s ``state`` (its ``state_dict()``) if it has one to give.

    A run saved in bfloat16 or fp32 (disabled scaler: empty state) and resumed on a float16 GPU
    keeps the fresh scaler instead of raising, as ``GradScaler.load_state_dict`` does; a state
    saved in float16 and resumed elsewhere is ignored by the disabled scaler.
    """
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)


def inference_autocast(device: torch.device, cpu_amp: bool = False):
    """The precision context of inference on ``device``: :data:`INFERENCE_DTYPE` (fp32, no
    autocast) on every device, except bfloat16 autocast on a CPU with native bfloat16 for a
    detector trained with ``cpu_amp`` (validated, its threshold chosen and scored so)."""
    device = torch.device(device)
    if device.type == "cpu" and cpu_amp and cpu_has_bf16():
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def deterministic_by_default(device: torch.device | str) -> bool:
    """Whether a run on ``device`` uses deterministic algorithms unless told otherwise: on a CPU
    yes (same seed and threads, same numbers: what the committed results rest on); on CUDA and
    MPS no, since deterministic mode there turns off cuDNN's autotuning, fills every fresh
    allocation with NaN and takes slow deterministic backward kernels."""
    return torch.device(device).type == "cpu"


#: What ``torch.cuda.set_sync_debug_mode("warn")`` says for each synchronising call.
SYNC_WARNING = "called a synchronizing CUDA operation"


def count_host_syncs(fn: Callable[[], object], warmup: int = 1, repeats: int = 1) -> list[str]:
    """The host-device synchronisations ``fn()`` makes on a CUDA device: runs it ``warmup``
    times unwatched (first calls allocate and pick kernels), then ``repeats`` times under
    ``torch.cuda.set_sync_debug_mode("warn")``, and returns one message per synchronising call
    seen (an empty list: none). The previous debug mode is restored. Needs a CUDA device
    (``RuntimeError`` from torch otherwise); meant for GPU checks of a GAN or training step.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(repeats):
                fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return [str(w.message) for w in caught if SYNC_WARNING in str(w.message)]


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), e.g. ``AMD EPYC 9R14``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# glibc's mallopt() parameters (<malloc.h>) and the variables that set them at start-up
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def reuse_freed_memory(keep_mb: int = 1024, mmap_mb: int = 256) -> bool:
    """Let glibc's malloc keep freed blocks for reuse instead of handing them back to the OS.

    A CPU training step frees and reallocates the same tens of megabytes of activations every
    step; by default glibc hands blocks that large back to the OS, so each step faults its pages
    in afresh. Blocks of up to ``mmap_mb`` now come from the heap and up to ``keep_mb`` of freed
    heap is kept (up to 1.4x faster training steps: docs/cpu-speed-study.md).

    Only on Linux with glibc, and neither when the user set malloc's own variables nor with
    ``REUSE_FREED_MEMORY=0`` in the environment: returns whether the setting was applied.
    The cost is memory that stays with the process after a peak.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if os.environ.get("REUSE_FREED_MEMORY") == "0" or any(map(os.environ.get, MALLOC_VARIABLES)):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_mb << 20)
                and libc.mallopt(M_TRIM_THRESHOLD, keep_mb << 20))


def to_float(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> normalised float batch, keeping the memory format."""
    return (batch.float().div_(255.0) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def channel_stats(images: np.ndarray, max_images: int = 20_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0-1 scale) of a uint8 (N, H, W, 3) array."""
    sample = images[:: max(1, len(images) // max_images)].astype(np.float32) / 255.0
    return sample.mean(axis=(0, 1, 2)).tolist(), sample.std(axis=(0, 1, 2)).tolist()
