"""The CPU's precision probe: is bfloat16 autocast worth it for this model on this machine?
A short timed probe (:func:`measure_cpu_precision`), repeated readings kept only when steady
(:func:`probe_problem`) and cached per machine kind (:func:`cached_probe`, which the GAN's plan
also uses), and the choice (:func:`choose_cpu_amp`). Split from :mod:`.accel`, whose devices
and precision rules it measures.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import accel
from .repro import write_json

#: bfloat16 autocast is chosen on the CPU only when a probe measures it at least this much
#: faster than fp32: near a tie the choice would flip between machines of one kind, and with
#: it the results (bfloat16 rounds differently), for no real speed.
BF16_MIN_SPEED_UP = 1.15


PROBE_FORMAT = 2  # bump when what the probe measures changes, so old answers are not reused


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


#: Largest spread of one precision's repeated readings, (max - min) / max, at which a probe is
#: taken as steady; a busy machine (issue #33: bfloat16 read 514 and fp32 595 images/s while
#: another job ran, a third of the quiet speed) shows as readings that disagree.
PROBE_MAX_SPREAD = 0.15


#: Largest 1-minute load average per CPU core, beyond this process's own threads
#: (:func:`load_per_core`), at which a probe is taken as quiet: above one other runnable task
#: per core, another job shares the cores.
PROBE_MAX_LOAD = 1.0


def load_per_core() -> float | None:
    """The 1-minute load average per CPU core left after this process's own torch threads (None
    where the OS has none, e.g. Windows): what *other* jobs put on the cores. The load average
    counts this process too, and a run that uses every core puts one task on each by itself, so
    without the subtraction every probe would look loaded."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    return max(0.0, load - torch.get_num_threads()) / (os.cpu_count() or 1)


def probe_problem(record: dict) -> str | None:
    """Why the probe ``record`` must not decide for good (None: steady): its repeated readings
    (``readings``: precision -> images/s) disagree by more than :data:`PROBE_MAX_SPREAD`, or the
    machine was loaded (``load_per_core`` over :data:`PROBE_MAX_LOAD`)."""
    for name, values in record.get("readings", {}).items():
        if values and max(values) > 0 and (max(values) - min(values)) / max(values) > PROBE_MAX_SPREAD:
            return (f"{name} readings {', '.join(f'{v:,.0f}' for v in values)} images/s disagree by more "
                    f"than {PROBE_MAX_SPREAD:.0%}")
    load = record.get("load_per_core")
    if load is not None and load > PROBE_MAX_LOAD:
        return f"load average {load:.2f} per core (over {PROBE_MAX_LOAD:g}): another job shares the CPU"
    return None


def measure_cpu_precision(build: Callable[[], nn.Module], image_size: int, batch_size: int,
                          steps: int = 3, repeats: int = 3) -> dict:
    """Training images per second of the model ``build()`` makes, in fp32 and in bfloat16
    autocast, on this CPU with the current thread count: ``{"fp32": best, "bf16": best,
    "readings": {"fp32": [...], "bf16": [...]}, "load_per_core": ...}``.

    Timed on random (batch_size, 3, image_size, image_size) channels_last batches with a fresh
    copy of the model for each reading, the two precisions interleaved ``repeats`` times (the
    best of each kept), so a passing load hits both alike; the readings and the load average
    let :func:`probe_problem` tell a busy machine. Takes a few seconds.
    """
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    readings: dict[str, list[float]] = {"fp32": [], "bf16": []}
    load = load_per_core()
    try:
        for _ in range(repeats):
            for name, values in readings.items():
                model = build().to(memory_format=torch.channels_last).train()
                values.append(_steps_per_second(model, x, name == "bf16", steps) * batch_size)
    finally:
        torch.random.set_rng_state(state)  # the probe must not shift the run's random stream
    later = load_per_core()
    return {**{name: max(values) for name, values in readings.items()}, "readings": readings,
            "load_per_core": None if load is None else max(load, later or 0.0)}


def cached_probe(key: dict, cache_file: Path | None, measure: Callable[[], dict],
                 attempts: int = 2) -> dict:
    """``measure()``'s record for ``key`` on this machine: a steady reading is measured once and
    then read back; one that :func:`probe_problem` finds unsteady is measured again (up to
    ``attempts`` times) and, if still unsteady, used for this run only and never cached.

    The record is cached in ``cache_file`` (JSON) under ``key`` plus this CPU's name and vector
    instruction set, the thread count and the torch version, so each machine kind measures each
    configuration once; ``cached`` in the returned record says whether it was reused,
    ``unsteady`` (when present) why it was not kept. A damaged cache file only costs a new
    measurement.
    """
    full_key = json.dumps({**key, "cpu": accel.cpu_name(), "isa": torch.backends.cpu.get_cpu_capability(),
                           "threads": torch.get_num_threads(), "torch": torch.__version__,
                           "format": PROBE_FORMAT}, sort_keys=True)
    known = {}
    if cache_file is not None and cache_file.is_file():
        try:
            known = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            known = {}
    if full_key in known and probe_problem(known[full_key]) is None:
        return {**known[full_key], "cached": True}
    for _ in range(max(1, attempts)):
        record = measure()
        problem = probe_problem(record)
        if problem is None:
            break
    if problem is not None:
        return {**record, "cached": False, "unsteady": problem}
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
    machine kind when the reading was steady (:func:`cached_probe`, :func:`probe_problem`).
    Returns the choice and the probe's record (images/s of both precisions, their readings,
    ``cached`` whether it was reused, ``unsteady`` why it was not kept). ``TrainConfig.cpu_amp``
    (notebook 03's ``CPU_AMP``) set to True or False skips the probe.

    Why measured: bfloat16 was 1.6x faster than fp32 for the CIFAKE model on an AMD EPYC
    and 1.1-1.3x *slower* on an Intel Xeon, both with AVX512-BF16.
    """
    if not accel.cpu_has_bf16():
        return False, {"reason": "no native bfloat16 on this CPU"}
    record = cached_probe({**key, "image_size": image_size, "batch_size": batch_size}, cache_file,
                          lambda: measure_cpu_precision(build, image_size, batch_size))
    return bf16_pays(record), record
