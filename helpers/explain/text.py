"""Notebook 06's findings in words, written from the maps and tables.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .cams import BOTH_VIEWS, CLASS_AGNOSTIC, peak_border_fraction, region_shares, view_alone
from .faithfulness import CAM_X_IMAGE, ROAD_COMBINED


def describe_faithfulness(table: pd.DataFrame, metric: str = ROAD_COMBINED) -> str:
    """One sentence per CAM method on ``metric``, from the computed table."""
    rows = table[(table["metric"] == metric) & (table["better_than_random"] != "(baseline)")]
    base = table[(table["metric"] == metric) & (table["better_than_random"] == "(baseline)")]
    if rows.empty or base.empty:
        return f"No {metric} scores were computed."
    lines = [(f"{metric} (higher = more faithful; random maps: {base['mean'].iloc[0]:+.3f}, "
              f"{int(base['n_images'].iloc[0])} test images):")]
    for row in rows.itertuples():
        verdict = {"better": "better than random maps",
                   "worse": "WORSE than random maps",
                   "no better": "no better than random maps"}[row.better_than_random]
        lines.append(f"- {row.method}: {row.mean:+.3f} (difference to random {row.diff_vs_random:+.3f}, "
                     f"95% CI {row.diff_ci_low:+.3f} to {row.diff_ci_high:+.3f}): {verdict}.")
    return "\n".join(lines)


def describe_average_maps(averages: Mapping[str, Mapping[str, np.ndarray]]) -> str:
    """Sentences on where each method's class-average maps put their mass (computed numbers).

    ``averages[method][class_name]`` is the mean map explaining that class on its own images.
    """
    lines = []
    for method, per_class in averages.items():
        for name, cam in per_class.items():
            s = region_shares(cam)
            what = "class-agnostic map" if method in CLASS_AGNOSTIC else f"evidence for {name}"
            lines.append(
                f"- {method}, {what} on {name} images: {s['centre_share']:.0%} of the "
                f"mass in the central quarter (uniform: {s['centre_uniform']:.0%}), "
                f"{s['border_share']:.0%} in the outer ring (uniform: {s['border_uniform']:.0%}), "
                f"peak at the {s['peak']}."
            )
    return "\n".join(lines)


def _lean(shares: Mapping[str, float | str]) -> str:
    centre = shares["centre_share"] / shares["centre_uniform"]
    border = shares["border_share"] / shares["border_uniform"]
    if centre >= 1.2 and centre >= border:
        return "towards the centre, where the object of a photo usually is"
    if border >= 1.2:
        return "towards the border, the background of most photos"
    return "fairly evenly over the image (no region stands out)"


def conclusions(averages: Mapping[str, Mapping[str, np.ndarray]], maps: np.ndarray,
                table: pd.DataFrame, map_size: tuple[int, int], image_size: int,
                method: str = "Grad-CAM") -> str:
    """A Markdown paragraph on what the maps show, every fact computed from the arguments.

    ``averages`` from :func:`class_average_maps` per method, ``maps`` the single ``method``
    maps behind them, ``table`` from :func:`faithfulness_table`.
    """
    parts = [(f"**Resolution.** The target layer's map is {map_size[0]}x{map_size[1]} for "
              f"{image_size}x{image_size} inputs: one cell covers about "
              f"{image_size // map_size[0]}x{image_size // map_size[1]} pixels, so the maps say "
              "*which part* of the image mattered, not which pixels.")]
    if method in averages:
        lean = {name: _lean(region_shares(cam)) for name, cam in averages[method].items()}
        if len(lean) > 1 and len(set(lean.values())) == 1:
            text = f"the evidence for both {' and '.join(lean)} lies {next(iter(lean.values()))}"
        else:
            text = "; ".join(f"the evidence for {name} lies {where}" for name, where in lean.items())
        ring = max(1, image_size // 8)
        road = table[(table["method"] == method) & (table["metric"] == ROAD_COMBINED)]
        caveat = ("" if road.empty or road["better_than_random"].iloc[0] == "better" else
                  f" ({method} did not beat random maps on ROAD below: read this with caution.)")
        parts.append(f"**Where the model looks ({method}, class averages).**{caveat} On average {text}. "
                     f"In {peak_border_fraction(maps):.0%} of the single maps the peak lies in "
                     f"the outer {ring}-pixel ring, which covers "
                     f"{region_shares(np.ones((image_size, image_size)))['border_uniform']:.0%} of the image.")
        border_lean = any("border" in where for where in lean.values())
        parts.append("**Compared with the CIFAKE paper.** Bird & Lotfi (2024) found Grad-CAM "
                     "attention on small imperfections in the background rather than on the object. "
                     + ("Our class averages lean to the border as well, consistent with that finding."
                        if border_lean else
                        "Our class averages do not lean to the border, so on this dataset and "
                        "model we do not see that pattern (the average hides per-image variation: "
                        "see the example grids)."))
    explained = table[table["better_than_random"] != "(baseline)"]
    if len(explained):
        sentences = []
        for metric in (ROAD_COMBINED, CAM_X_IMAGE):
            rows = explained[explained["metric"] == metric]
            if len(rows):
                sentences.append(f"on {metric}, " + "; ".join(
                    f"{r.method} is {r.better_than_random} than random maps" for r in rows.itertuples()))
        parts.append(f"**Faithfulness ({int(explained['n_images'].iloc[0])} test images).** "
                     + (". ".join(s[0].upper() + s[1:] for s in sentences)) + ". "
                     "ROAD is the more reliable of the two: multiplying by the map darkens images "
                     "into inputs the model never saw, while ROAD's imputation keeps them natural and "
                     "hides the shape of the removed region (Rong et al. 2022). A map that does no better than random should not be read as an "
                     "explanation of this model.")
    return "\n\n".join(parts)


def describe_views(table: pd.DataFrame) -> str:
    """One paragraph on :func:`view_table`: how each view decides alone and how much it weighs."""
    g, loc, both = (table.loc[k] for k in (view_alone("global"), view_alone("local"), BOTH_VIEWS))
    share = "mean |share of the logit|"
    together = ("fewer errors than either alone, so neither view's map is the whole explanation"
                if both["errors"] < min(g["errors"], loc["errors"]) else
                "no fewer errors than the better view alone")
    return (f"**Two views.** Alone, the global view (the half-size image, which Grad-CAM explains) "
            f"gets {g['accuracy']:.2%} of the test images ({int(g['errors'])} errors), the local view "
            f"(native pixels, mapped exactly above) {loc['accuracy']:.2%} ({int(loc['errors'])}); together "
            f"{both['accuracy']:.2%} ({int(both['errors'])}): {together}. Grad-CAM's maps explain the "
            f"global view's share of the logit (mean |share| {g[share]:.2f}), the local-evidence maps "
            f"the local view's ({loc[share]:.2f}).")
