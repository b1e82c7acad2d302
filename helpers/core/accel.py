"""Device-side data handling shared by the detector's training loop and the GAN.

The airbench recipe: decode once, keep the uint8 images on the device, convert and augment
there, use channels_last and mixed precision. On the CPU the detector runs in bfloat16
autocast where a short probe measures it faster than fp32 on the machine at hand
(:func:`choose_cpu_amp`), and in fp32 elsewhere; the GAN's plan measures its own step the same
way (:func:`helpers.gan.train.gan_speed_probe`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .repro import write_json


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

    Kept as uint8 (a quarter of fp32's memory): 100k 32x32 images are 307 MB.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


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


def amp_dtype(device: torch.device, cpu: bool = False) -> torch.dtype | None:
    """The mixed-precision dtype for ``device``, or None for plain fp32.

    CUDA: bfloat16 where supported, else float16. CPU: bfloat16 only when asked for (``cpu``)
    and the CPU has native bfloat16 arithmetic. MPS: none.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu and cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, enabled: bool = True, cpu: bool = False):
    """Mixed-precision context for ``device``; on the CPU only with ``cpu`` (see :func:`amp_dtype`)."""
    dtype = amp_dtype(device, cpu)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


#: bfloat16 autocast is chosen on the CPU only when a probe measures it at least this much
#: faster than fp32: near a tie the choice would flip between machines of one kind, and with
#: it the results (bfloat16 rounds differently), for no real speed.
BF16_MIN_SPEED_UP = 1.15
PROBE_FORMAT = 1  # bump when what the probe measures changes, so old answers are not reused


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), e.g. ``AMD EPYC 9R14``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _steps_per_second(model: nn.Module, x: torch.Tensor, bf16: bool, steps: int) -> float:
    """Training steps (forward, backward, SGD update) per second, after two warm-up steps."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    target = torch.rand(len(x))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).float()
        loss = F.binary_cross_entropy_with_logits(logits.mean(1), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def measure_cpu_precision(build: Callable[[], nn.Module], image_size: int, batch_size: int,
                          steps: int = 3) -> dict[str, float]:
    """Training images per second of the model ``build()`` makes, in fp32 and in bfloat16
    autocast, on this CPU with the current thread count: ``{"fp32": ..., "bf16": ...}``.

    Timed on random (batch_size, 3, image_size, image_size) channels_last batches with a fresh
    copy of the model for each precision, the two interleaved twice (best of the two kept), so
    a passing load on a shared machine hits both alike. Takes a few seconds.
    """
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    rates: dict[str, float] = {"fp32": 0.0, "bf16": 0.0}
    try:
        for _ in range(2):
            for name, best in rates.items():
                model = build().to(memory_format=torch.channels_last).train()
                rates[name] = max(best, _steps_per_second(model, x, name == "bf16", steps) * batch_size)
    finally:
        torch.random.set_rng_state(state)  # the probe must not shift the run's random stream
    return rates


def cached_probe(key: dict, cache_file: Path | None, measure: Callable[[], dict]) -> dict:
    """``measure()``'s record for ``key`` on this machine, measured once and then read back.

    The record is cached in ``cache_file`` (JSON) under ``key`` plus this CPU's name and vector
    instruction set, the thread count and the torch version, so each machine kind measures each
    configuration once; ``cached`` in the returned record says whether it was reused. A damaged
    cache file only costs a new measurement.
    """
    full_key = json.dumps({**key, "cpu": cpu_name(), "isa": torch.backends.cpu.get_cpu_capability(),
                           "threads": torch.get_num_threads(), "torch": torch.__version__,
                           "format": PROBE_FORMAT}, sort_keys=True)
    known = {}
    if cache_file is not None and cache_file.is_file():
        try:
            known = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            known = {}
    if full_key in known:
        return {**known[full_key], "cached": True}
    record = measure()
    if cache_file is not None:
        write_json(cache_file, {**known, full_key: record})
    return {**record, "cached": False}


def bf16_pays(rates: dict[str, float]) -> bool:
    """Whether a probe's record (images/s under ``"fp32"`` and ``"bf16"``) shows bfloat16 at
    least :data:`BF16_MIN_SPEED_UP` times faster; False when bfloat16 was not timed."""
    return "bf16" in rates and rates["bf16"] >= BF16_MIN_SPEED_UP * rates["fp32"]


def choose_cpu_amp(build: Callable[[], nn.Module], key: dict, image_size: int, batch_size: int,
                   cache_file: Path | None) -> tuple[bool, dict]:
    """Whether bfloat16 autocast pays on this CPU for this model, measured, not guessed.

    CPUs without native bfloat16 (:func:`cpu_has_bf16`) get fp32 without a probe (emulated
    bfloat16 is slower; docs/cpu-speed-study.md). Elsewhere :func:`measure_cpu_precision` decides:
    bfloat16 when at least :data:`BF16_MIN_SPEED_UP` times faster, the answer cached per
    machine kind (:func:`cached_probe`). Returns the choice and the probe's record (images/s of
    both precisions, ``cached`` whether it was reused).

    Why measured: bfloat16 was 1.6x faster than fp32 for the CIFAKE model on an AMD EPYC
    and 1.1-1.3x *slower* on an Intel Xeon, both with AVX512-BF16.
    """
    if not cpu_has_bf16():
        return False, {"reason": "no native bfloat16 on this CPU"}
    record = cached_probe({**key, "image_size": image_size, "batch_size": batch_size}, cache_file,
                          lambda: measure_cpu_precision(build, image_size, batch_size))
    return bf16_pays(record), record


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
