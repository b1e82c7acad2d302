"""Notebook 05's findings in words, written from the tables (never typed in by hand).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from ..core.stats import Interval
from .compare import (
    ALL_TEST,
    COLOUR_BASELINE,
    COLOUR_RIGHT,
    COLOUR_WRONG,
    NEAR_COPY,
    NO_NEAR_COPY,
    ModelResult,
)


def images(n: int) -> str:
    """``n`` with a thousands separator and the right number: "1 image", "19,622 images"."""
    return f"{int(n):,} image" + ("" if int(n) == 1 else "s")


def describe_robustness(table: pd.DataFrame) -> str:
    """A sentence per model naming its most damaging perturbation (from the numbers)."""
    lines = []
    for model, part in table.groupby("model", sort=False):
        clean = part.loc[part["condition"] == "clean", "accuracy"].iloc[0]
        worst = part.loc[part["condition"] != "clean"].sort_values("accuracy").iloc[0]
        skew = ""
        if worst["flagged_fake"] > 0.9:
            skew = f"; it then calls {worst['flagged_fake']:.0%} of all images AI-generated"
        elif worst["flagged_fake"] < 0.1:
            skew = f"; it then calls {1 - worst['flagged_fake']:.0%} of all images real"
        lines.append(f"{model}: clean accuracy {clean:.1%}; worst under {worst['condition']} "
                     f"({worst['accuracy']:.1%}, AUC {worst['auc']:.3f}){skew}.")
    return "\n".join(lines)


def describe_near_duplicate_check(table: pd.DataFrame) -> str:
    """The finding of one model's :func:`near_duplicate_check` in words."""
    rows = {r.images: r for r in table.itertuples()}
    overall, clean, near = (rows[k] for k in (ALL_TEST, NO_NEAR_COPY, NEAR_COPY))
    if near.n_images == 0:
        return (f"No test image has a near-duplicate in the train split, so **{overall.model}**'s "
                f"{overall.accuracy:.1%} does not rest on copies of training images.")
    verb = "has" if near.n_images == 1 else "have"
    return (f"{near.n_images:,} of the {images(overall.n_images)} in the test split {verb} a "
            f"near-duplicate in the train split; **{overall.model}** gets {near.accuracy:.1%} of "
            f"those right. Without them its accuracy is {clean.accuracy:.1%} (95% CI [{clean.ci_low:.1%}, "
            f"{clean.ci_high:.1%}]), against {overall.accuracy:.1%} on all test images.")


def describe_colour_check(table: pd.DataFrame) -> str:
    """The finding of one model's :func:`colour_check` in words."""
    rows = {(r.classifier != COLOUR_BASELINE, r.images): r for r in table.itertuples()}
    base, overall = rows[False, ALL_TEST], rows[True, ALL_TEST]
    right, wrong = rows[True, COLOUR_RIGHT], rows[True, COLOUR_WRONG]
    text = (f"From colour alone, a gradient-boosted histogram classifier gets {base.accuracy:.1%} "
            f"of the test images right (95% CI [{base.ci_low:.1%}, {base.ci_high:.1%}]); "
            f"**{overall.model}** gets {overall.accuracy:.1%}. ")
    if wrong.n_images == 0:
        return text + ("Colour alone classifies every test image correctly, so this test split "
                       "cannot show whether the detector sees more than colour.")
    text += (f"On the {images(wrong.n_images)} whose colours mislead the baseline, the detector is "
             f"right on {wrong.accuracy:.1%} [{wrong.ci_low:.1%}, {wrong.ci_high:.1%}], against "
             f"{right.accuracy:.1%} on the other {right.n_images:,}. ")
    if wrong.ci_low <= 0.5:
        text += ("That interval reaches chance level: this test split cannot show that the detector "
                 "sees more than colour where colour misleads.")
    elif wrong.ci_high < right.accuracy:
        text += ("It is better than chance there, so it reads more than colour, but it errs more "
                 "there than elsewhere: part of what it learned is the classes' colours.")
    else:
        text += "It is about as accurate there as elsewhere: it reads more than colour."
    return text


def describe_cross_generator(result: dict[str, Any]) -> str:
    """The finding in words, generated from the numbers of :func:`cross_generator`."""
    gan, own, real, diff = (result[k] for k in ("gan_flag_rate", "own_fake_flag_rate",
                                                 "real_flag_rate", "difference"))
    text = (f"**{result['model']}** flags {gan} of the {result['n_gan']} images of the unseen GAN "
            f"as AI-generated, against {own} of the test split's own fakes and {real} of its "
            f"real photos. ")
    if np.isnan(diff.low):
        if gan.estimate == own.estimate:
            text += (f"Both rates are {gan.estimate:.0%} with no variation in either sample: no "
                     "difference is visible, so on this evidence the detector transfers to the "
                     "unseen generator.")
        else:
            text += (f"They differ by {diff.estimate:+.1%}; both samples are constant, so the "
                     "bootstrap gives no interval for the difference.")
    elif diff.high < 0:
        text += (f"That is {-diff.estimate:.1%} lower (95% CI of the difference "
                 f"[{diff.low:.1%}, {diff.high:.1%}] excludes zero): ")
        if gan.low <= real.high:
            text += ("it treats this generator's images about like real photos, so what it "
                     "learned is specific to the generator it was trained against.")
        elif gan.estimate >= 0.9:
            text += ("a measurable loss, but it still flags the great majority, so the detector "
                     "largely transfers to this generator.")
        elif gan.estimate >= 0.5:
            text += ("it catches most of them but misses a sizeable share, so part of what it "
                     "learned is specific to the generator it was trained against.")
        else:
            text += ("it misses most of them, so much of what it learned is specific to the "
                     "generator it was trained against.")
    elif diff.low > 0:
        text += (f"That is {diff.estimate:.1%} higher (95% CI of the difference "
                 f"[{diff.low:.1%}, {diff.high:.1%}]): the unseen GAN's images are easier for it "
                 "than the dataset's own fakes.")
    else:
        text += (f"The difference ({diff.estimate:+.1%}, 95% CI [{diff.low:.1%}, {diff.high:.1%}]) "
                 "is not distinguishable from zero: on this evidence the detector transfers to "
                 "the unseen generator.")
    if result.get("resized"):
        text += (f" (The GAN's {result['gan_resolution']}px images were resized to the model's "
                 "input size, which itself alters their pixel statistics.)")
    return text


def summary(results: Sequence[ModelResult], best: ModelResult, robustness: pd.DataFrame | None,
            cross: Sequence[dict[str, Any]], is_demo: bool = False,
            colour: pd.DataFrame | None = None, near: pd.DataFrame | None = None) -> str:
    """The notebook's closing paragraph (Markdown), written from the numbers; ``colour`` and
    ``near`` are :func:`colour_check` and :func:`near_duplicate_check` tables."""
    m = best.metrics
    lines = [(f"**{best.name}** (chosen on validation accuracy) classifies {m['accuracy']:.2%} of the "
              f"{images(m['n_test'])} of the test split correctly (95% CI [{m['ci_low']:.2%}, {m['ci_high']:.2%}], "
              f"{m['ci_method']}), at threshold {m['threshold']:g}: {m['n_errors']} mistakes. "
              f"ROC AUC {m['auc']:.4f}, average precision {m['average_precision']:.4f}, "
              f"expected calibration error {m['ece']:.4f}, test loss {m['test_loss']:.4f}.")]
    if len(results) > 1:
        others = ", ".join(f"{r.name} {r.metrics['accuracy']:.2%}" for r in results if r is not best)
        lines.append(f"Other models: {others}.")
    if robustness is not None and len(robustness):
        part = robustness[(robustness["model"] == best.name) & (robustness["condition"] != "clean")]
        clean = robustness.loc[(robustness["model"] == best.name)
                               & (robustness["condition"] == "clean"), "accuracy"].iloc[0]
        worst = part.sort_values("accuracy").iloc[0]
        lines.append(f"Robustness: the largest drop is under {worst['condition']} "
                     f"({clean:.1%} to {worst['accuracy']:.1%}, AUC {worst['auc']:.3f}).")
    for c in cross:
        if c["model"] == best.name:
            lines.append(f"Unseen GAN: flagged {c['gan_flag_rate'].estimate:.1%} "
                         f"[{c['gan_flag_rate'].low:.1%}, {c['gan_flag_rate'].high:.1%}] against "
                         f"{c['own_fake_flag_rate'].estimate:.1%} of the dataset's own fakes.")
    if colour is not None and len(colour):
        mine = colour[colour["model"] == best.name].set_index(["classifier", "images"])
        base = mine.loc[(COLOUR_BASELINE, ALL_TEST)]
        wrong = mine.loc[(best.name, COLOUR_WRONG)]
        if wrong["n_images"]:
            lines.append(f"Colour alone gets {base['accuracy']:.1%}; on the "
                         f"{images(wrong['n_images'])} whose colours mislead it, {best.name} is right on "
                         f"{wrong['accuracy']:.1%} [{wrong['ci_low']:.1%}, {wrong['ci_high']:.1%}].")
    if near is not None and len(near):
        mine = near[near["model"] == best.name].set_index("images")
        copies, clean = mine.loc[NEAR_COPY], mine.loc[NO_NEAR_COPY]
        if copies["n_images"]:
            lines.append(f"Without the {images(copies['n_images'])} of the test split that "
                         f"{'has' if copies['n_images'] == 1 else 'have'} a near-duplicate "
                         f"in training: {clean['accuracy']:.1%} [{clean['ci_low']:.1%}, "
                         f"{clean['ci_high']:.1%}].")
    if is_demo:
        lines.append("These are DEMO numbers (a small synthetic set built offline), not a benchmark.")
    return " ".join(lines)


def saved_summary(payload: dict[str, Any]) -> str | None:
    """:func:`summary` of a run from its saved ``performance_metrics.json`` (the results index
    leads with it); None when the file names no best model among its rows."""
    results = [SimpleNamespace(name=m["model"], metrics=m) for m in payload.get("models") or []]
    best = next((r for r in results if r.name == payload.get("best_model")), None)
    if best is None:
        return None

    def frame(key: str) -> pd.DataFrame | None:
        return pd.DataFrame(payload[key]) if payload.get(key) else None

    cross = [{k: Interval(**v) if isinstance(v, dict) else v for k, v in c.items()}
             for c in payload.get("cross_generator") or []]
    return summary(results, best, frame("robustness"), cross, bool(payload.get("is_demo")),
                   frame("colour_check"), frame("near_duplicate_check"))
