"""Inference speed of a detector: measured figure next to a naive baseline, in one run.

    .venv/bin/python benchmarks/bench_inference.py [--model fast] [--image-size 32]
        [--batch-size 512] [--seconds 2] [--rounds 3] [--compile] [--checkpoint PATH] [--width N]

Variants, each timed for ``--seconds`` after a warm-up, on random inputs (speed does not
depend on the weights), in ``--rounds`` interleaved rounds whose median is reported: on a
shared machine a single timing can be off by 2x:

1. baseline: one image per forward pass, fp32, default (NCHW) memory format, ``no_grad``;
2. batched: ``--batch-size`` images per pass, otherwise the same;
3. + channels_last and ``inference_mode``;
4. + batch norm folded into the convolutions (``torch.fx.experimental.optimization.fuse``);
5. + bfloat16 autocast, on CPUs that multiply bfloat16 natively (AVX512-BF16, AMX): what
   ``helpers.core.detector`` does there;
6. (``--compile``) + ``torch.compile`` (inductor; needs a C++ compiler, slow to start);
7. end to end: :meth:`helpers.core.detector.Detector.predict_proba` on uint8 images, what notebook 05 and
   ``predict`` run (needs a checkpoint: ``--checkpoint`` or the best one of ``--dataset``).

``fast`` is built as measured on CIFAKE (``helpers.training.config.MODEL_SETTINGS``: width 64,
2x2 patch stem) unless ``--width`` / ``--patch`` say otherwise. It also counts the model's
FLOPs per image, so the figure can be set against what the CPU
can do at all: images/s x FLOPs per image = the arithmetic rate actually achieved.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.core.accel import autocast, cpu_has_bf16, set_cpu_threads
from helpers.core.detector import Detector, best_path
from helpers.core.models import build_model, count_parameters
from helpers.training.config import default_config

TARGET = 5_000  # images/s at 32x32 on 2 CPU cores for the `fast` model (issue #5)


def timed(fn, n_per_call: int, seconds: float) -> tuple[float, int]:
    """Images per second of ``fn`` (called repeatedly for ``seconds`` after one warm-up)."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * n_per_call / elapsed, calls


def bf16_inference() -> contextlib.ExitStack:
    """inference_mode + the bfloat16 autocast ``helpers.core.detector`` uses on the CPU."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    stack.enter_context(autocast(torch.device("cpu"), cpu=True))
    return stack


@dataclass
class Variant:
    """One timed way of running the model: ``fn`` classifies ``n`` images per call."""

    name: str
    fn: Callable[[], object]
    n: int
    threads: int
    context: Callable[[], contextlib.AbstractContextManager]  # entered around the timing
    baseline: bool = False  # one of the baselines the speed-ups are measured against
    extra: bool = False  # a comparison, not a candidate for the "best" line

    def measure(self, seconds: float) -> float:
        torch.set_num_threads(self.threads)
        with self.context():
            return timed(self.fn, self.n, seconds)[0]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def flops_per_image(model: torch.nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fast")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=None, help="`fast` only: first-stage width")
    parser.add_argument("--patch", type=int, default=None, help="`fast` only: stem patch side")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=2.0, help="per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--checkpoint", default=None, help="for the end-to-end line")
    parser.add_argument("--dataset", default="demo", help="best checkpoint of this dataset")
    parser.add_argument("--compare", default="1:64,2:32",
                        help="`fast` only: also time these PATCH:WIDTH variants at the best settings "
                             "(1:64 is the full-resolution design of earlier versions; '' for none)")
    args = parser.parse_args(argv)

    threads = set_cpu_threads(args.threads)
    torch.manual_seed(0)
    options = {}
    if args.model == "fast":
        options = default_config("cifake", model="fast").model_options  # its measured width and stem on CIFAKE
        options.update({k: v for k, v in (("width", args.width), ("patch", args.patch)) if v})
    model = build_model(args.model, args.image_size, **options).eval()
    size, bs = args.image_size, args.batch_size
    flops = flops_per_image(model, size)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model {args.model} {options or ''} at {size}x{size}: "
          f"{count_parameters(model):,} parameters, {flops / 1e6:.1f} MFLOP per image")
    print(f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()}, native bfloat16: "
          f"{'yes' if cpu_has_bf16() else 'no'}), {os.cpu_count()} CPUs, torch {torch.__version__}, {threads} threads, "
          f"load average {load:.2f} at start (a shared machine runs slower)")

    x1 = torch.randn(1, 3, size, size)
    xb = torch.randn(bs, 3, size, size)
    xb_cl = xb.contiguous(memory_format=torch.channels_last)
    variants: list[Variant] = [
        Variant(f"baseline: batch 1, fp32 NCHW, no_grad, {threads} threads", lambda: model(x1), 1,
                threads, torch.no_grad, baseline=True)]
    if threads > 1:
        # Batch 1 with several OpenMP threads collapses when another process holds a core
        # (each tiny parallel region waits for a descheduled thread), so the baseline is the
        # better of `threads` and 1 thread: the speed-ups are not inflated by that.
        variants.append(Variant("baseline: batch 1, fp32 NCHW, no_grad, 1 thread", lambda: model(x1), 1,
                                1, torch.no_grad, baseline=True))
    variants.append(Variant(f"batch {bs}, fp32 NCHW, no_grad", lambda: model(xb), bs, threads, torch.no_grad))
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    variants.append(Variant(f"batch {bs}, channels_last, inference_mode", lambda: model_cl(xb_cl), bs,
                            threads, torch.inference_mode))
    with torch.inference_mode():
        reference = model_cl(xb_cl)
    best_model = model_cl
    try:
        from torch.fx.experimental.optimization import fuse

        fused = fuse(model).to(memory_format=torch.channels_last)
        with torch.inference_mode():
            diff = (fused(xb_cl) - reference).abs().max().item()
        variants.append(Variant(f"+ conv-BN folded (max |logit diff| {diff:.1e})", lambda: fused(xb_cl), bs,
                                threads, torch.inference_mode))
        best_model = fused
    except Exception as err:  # noqa: BLE001 - a model fx cannot trace: say so, keep going
        print(f"  conv-BN folding not possible for {args.model}: {type(err).__name__}: {err}")
    if cpu_has_bf16():  # the precision helpers.core.detector gives cpu_amp models there
        with bf16_inference():
            # relative: a fresh model's logits are tiny, so an absolute difference says little
            diff = ((best_model(xb_cl).float() - reference).abs().max() / reference.abs().max()).item()
        variants.append(Variant(f"+ bfloat16 autocast (max logit diff {diff:.1%} of the largest)",
                                lambda: best_model(xb_cl), bs, threads, bf16_inference))
    else:
        print("  bfloat16 autocast skipped: no native bfloat16 here (the CPU lacks it, or ONEDNN_MAX_CPU_ISA caps it)")
    if args.compile:
        compiled = torch.compile(model_cl)
        with torch.inference_mode():
            start = time.perf_counter()
            compiled(xb_cl)
            print(f"  (torch.compile took {time.perf_counter() - start:.0f} s)")
        variants.append(Variant("+ torch.compile (inductor)", lambda: compiled(xb_cl), bs, threads,
                                torch.inference_mode))
    if threads > 1:  # on a shared machine fewer OpenMP threads can be faster (no spin-waiting)
        variants.append(Variant(f"batch {bs}, channels_last, inference_mode, 1 thread",
                                lambda: model_cl(xb_cl), bs, 1, torch.inference_mode))
    if args.model == "fast" and args.compare:
        for variant in args.compare.split(","):
            patch, width = (int(v) for v in variant.split(":"))
            other = build_model("fast", size, width=width, patch=patch).eval()
            with contextlib.suppress(Exception):  # untraceable: time it unfused
                from torch.fx.experimental.optimization import fuse

                other = fuse(other)
            other = other.to(memory_format=torch.channels_last)
            variants.append(Variant(
                f"patch {patch} width {width} ({flops_per_image(other, size) / 1e6:.0f} MFLOP): best settings",
                lambda m=other: m(xb_cl), bs, threads, bf16_inference if cpu_has_bf16() else torch.inference_mode,
                extra=True))

    checkpoint = args.checkpoint
    try:
        checkpoint = checkpoint or best_path(args.dataset)
        detector = Detector.load(checkpoint, device="cpu")
        n = 4 * bs
        size = detector.image_size
        images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        trained = {k: detector.config[k] for k in ("width", "patch", "cpu_amp") if detector.config.get(k)}
        variants.append(Variant(
            f"end to end: predict_proba, uint8 in ({Path(checkpoint).name}, {trained})",
            lambda: detector.predict_proba(images, "cpu", batch_size=bs), n, threads,
            contextlib.nullcontext, extra=True))
    except Exception as err:  # noqa: BLE001 - no checkpoint yet: the rest still stands
        print(f"  end-to-end line skipped ({type(err).__name__}: {err})")

    print(f"timing each variant for {args.seconds:g} s, in {args.rounds} interleaved rounds "
          "(median and range of the rounds; a neighbour's burst hits every variant alike):")
    rates = {v.name: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            rates[v.name].append(v.measure(args.seconds))
    torch.set_num_threads(threads)
    median = {name: float(np.median(r)) for name, r in rates.items()}
    baseline = max(median[v.name] for v in variants if v.baseline)
    for v, after in zip(variants, [*variants[1:], None]):
        r = rates[v.name]
        ratio = "" if v.baseline else f"x{median[v.name] / baseline:.1f}"
        print(f"  {v.name:<62} {median[v.name]:9,.0f} images/s  ({min(r):,.0f}-{max(r):,.0f})  {ratio}")
        if v.baseline and not (after and after.baseline):
            print(f"  (speed-ups below are against the better baseline median, {baseline:,.0f} images/s)")

    best_name, best = max((median[v.name], v.name) for v in variants if not (v.baseline or v.extra))[::-1]
    print(f"\nbest (median of {args.rounds}): {best:,.0f} images/s ({best_name}), baseline "
          f"{baseline:,.0f} images/s, x{best / baseline:.1f}")
    print(f"achieved {best * flops / 1e9:.1f} GFLOP/s; the target of {TARGET:,} images/s would need "
          f"{TARGET * flops / 1e9:.0f} GFLOP/s for this model")
    if args.model == "fast" and size == 32 and not (args.width or args.patch):
        verdict = "MET" if best >= TARGET else "NOT MET"
        print(f"target {TARGET:,} images/s at 32x32 for `fast`: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
