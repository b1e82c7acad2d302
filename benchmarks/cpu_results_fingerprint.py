"""Are the CPU's numbers still the same, bit for bit? Saves, then compares, the results of small
fixed CPU runs of every path the committed results rest on.

    python benchmarks/cpu_results_fingerprint.py save before.pt    # on the old code
    python benchmarks/cpu_results_fingerprint.py save after.pt     # on the new code
    python benchmarks/cpu_results_fingerprint.py compare before.pt after.pt

What it runs (one thread, deterministic algorithms; about 10 s): three GAN steps and a short
epoch of ``fastgan`` and ``dcgan`` in fp32 and in bfloat16 autocast (their losses, G, D and EMA
weights, samples); DiffAugment with a seeded generator, the global stream and a bfloat16
batch; FID/KID by each method on random features; a one-epoch ``fast`` detector (weights,
threshold, P(FAKE)) and bfloat16 CPU scoring. ``compare`` prints how many tensors differ and
exits 1 if any does. Written for issue #32's CUDA branches, which had to leave the CPU alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.core.detector import Detector
from helpers.core.scoring import predict_logits
from helpers.gan import quality
from helpers.gan.augment import diff_augment
from helpers.gan.config import recipe_config
from helpers.gan.train import GAN, STAT_KEYS, to_unit_range
from tests.conftest import textured, train_tiny_detector


def gan_results(out: dict, images: np.ndarray) -> None:
    real = to_unit_range(torch.from_numpy(images[:8]).permute(0, 3, 1, 2))
    for recipe in ("fastgan", "dcgan"):
        for bf16 in (False, True):
            name = f"{recipe}{'_bf16' if bf16 else ''}"
            gan = GAN(recipe_config(recipe, ngf=16, ndf=16, batch_size=8, cpu_bf16=bf16, seed=3),
                      torch.device("cpu"))
            out[f"{name}/steps"] = torch.stack([gan.step(real) for _ in range(3)])
            epoch = gan.train_epoch(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
            out[f"{name}/epoch"] = torch.tensor([epoch[k] for k in STAT_KEYS])
            for part, state in gan.networks_state().items():
                out.update({f"{name}/{part}/{k}": v.clone() for k, v in state.items()})
            out[f"{name}/samples"] = torch.from_numpy(gan.generate(8, seed=1))


def augment_and_quality_results(out: dict) -> None:
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    out["augment/generator"] = diff_augment(x, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(7)
    out["augment/global"] = diff_augment(x)
    out["augment/bf16"] = diff_augment(x.bfloat16(), generator=torch.Generator().manual_seed(5))
    feats = np.random.default_rng(1).normal(size=(300, 64)).astype(np.float32)
    for method in ("auto", "low-rank", "torchmetrics"):
        r = quality.fid_kid(feats[:150], feats[150:] + 0.1, kid_subsets=10, kid_subset_size=50, fid_method=method)
        out[f"quality/{method}"] = torch.tensor([r["fid"], r["kid"], r["kid_std"]], dtype=torch.float64)


def detector_results(out: dict, rng: np.random.Generator) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        detector = Detector.load(train_tiny_detector(Path(tmp), "cifake")["checkpoint"])
    out.update({f"detector/{k}": v.clone() for k, v in detector.model.state_dict().items()})
    out["detector/threshold"] = torch.tensor(detector.threshold, dtype=torch.float64)
    images = np.stack([textured(rng, 32, i % 2 == 1) for i in range(20)])
    out["detector/p_fake"] = torch.from_numpy(detector.predict_proba(images))
    mean, std = torch.tensor(detector.mean), torch.tensor(detector.std)
    out["detector/bf16_logits"] = predict_logits(detector.model, torch.from_numpy(images).permute(0, 3, 1, 2),
                                                 mean, std, cpu_amp=True)


def save(path: Path) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rng = np.random.default_rng(0)
    out: dict[str, torch.Tensor] = {}
    gan_results(out, np.stack([textured(rng, 32, False) for _ in range(24)]))
    augment_and_quality_results(out)
    detector_results(out, rng)
    torch.save(out, path)
    print(f"{len(out)} tensors saved to {path}")


def compare(first: Path, second: Path) -> int:
    a, b = torch.load(first, weights_only=True), torch.load(second, weights_only=True)
    missing = sorted(set(a) ^ set(b))
    differ = [k for k in a if k in b and not torch.equal(a[k], b[k])]
    print(f"{len(a)} tensors, {len(differ)} differ, {len(missing)} in one file only")
    for key in differ[:20]:
        print(f"  {key}: max |difference| {(a[key].double() - b[key].double()).abs().max().item():.3g}")
    return 1 if differ or missing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("save").add_argument("path", type=Path)
    pair = sub.add_parser("compare")
    pair.add_argument("first", type=Path)
    pair.add_argument("second", type=Path)
    args = parser.parse_args()
    if args.command == "save":
        save(args.path)
        return 0
    return compare(args.first, args.second)


if __name__ == "__main__":
    raise SystemExit(main())
