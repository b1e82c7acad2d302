"""The sections of notebook 05 after its detectors are scored: one method each of
:class:`Sections`, which :class:`helpers.evaluation.session.Evaluation` inherits. Each writes
its files and returns a :class:`Section` to show; the attributes it uses (``params``,
``results``, ``best``, ``splits``, ``cache``, ``device``, ``spec``) are the Evaluation's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..core import notebook as nbh
from ..core import paths, repro
from ..core.postprocess import perturbed_sets
from ..data import datasets
from ..gan import export
from . import breakdown, compare, cross_dataset, figures, metrics, text
from . import domain as domain_eval
from .robustness import clean_and_robust, robustness_table, severity_table


@dataclass
class Section:
    """What one section shows, in order: printed lines, Markdown, tables and figures (already
    saved). In a notebook, a cell ending with it displays them."""

    items: list[tuple[str, Any]] = field(default_factory=list)

    def add(self, kind: str, item: Any) -> Section:
        """Append ``item`` (``kind``: "print", "markdown", "table" or "figure"); returns self."""
        self.items.append((kind, item))
        return self

    def of(self, kind: str) -> list[Any]:
        """The items of one ``kind``, in order."""
        return [item for k, item in self.items if k == kind]

    def _ipython_display_(self) -> None:
        from IPython.display import Markdown, display

        for kind, item in self.items:
            if kind == "print":
                print(item)
            else:
                display(Markdown(item) if kind == "markdown" else item)


class Sections:
    """Notebook 05's sections from the headline numbers to the files and summary."""

    tables: dict[str, pd.DataFrame | None]

    def save_figure(self, section: Section, fig, name: str) -> Section:
        """Save ``fig`` as ``results/<dataset>/evaluation/<name>.png``, close it, show it in ``section``."""
        import matplotlib.pyplot as plt

        nbh.save_fig(fig, self.params.DATASET, name, "evaluation")
        plt.close(fig)
        return section.add("figure", fig)

    def write(self, frame: pd.DataFrame, name: str) -> pd.DataFrame:
        """``results/<dataset>/<name>.csv`` (atomic), kept in ``tables``."""
        repro.write_csv(frame, paths.results_dir(self.params.DATASET) / f"{name}.csv")
        self.tables[name] = frame
        return frame

    def headline(self):
        """Score every detector (:attr:`results`); print and return the best by validation."""
        print(f"best model (highest validation accuracy, not chosen on test): {self.best.name}")
        return self.best

    def protocols(self) -> Section:
        """Every test file against the clean split: ``test_protocols.csv``."""
        p, shown = self.params, Section()
        table = self.write(pd.concat([breakdown.protocol_table(r, self.split_of(r).cache, self.device,
                                                               p.BATCH_SIZE, p.N_BOOTSTRAP, p.SEED)
                                      for r in self.results], ignore_index=True), "test_protocols")
        for _, rows in table.groupby("model", sort=False):
            shown.add("markdown", breakdown.describe_protocols(rows))
        return shown.add("table", table.set_index(["model", "protocol"]).round(4))

    def per_class(self) -> Section:
        """Classification report and confusion matrix of each model; the best one's matrix is
        also ``confusion_matrix.png``."""
        shown, best = Section(), self.best
        for r in self.results:
            shown.add("markdown", f"**{r.name}** (threshold {r.threshold:.3g})")
            shown.add("table", metrics.classification_table(r.y_true, r.p_fake, r.threshold).round(4))
            fig = figures.plot_confusion(r)
            self.save_figure(shown, fig, f"confusion_{r.name}")
            if r is best:
                figures.save_result_figure(fig, self.params.DATASET, "confusion_matrix")
        return shown

    def curves(self) -> Section:
        """ROC and precision-recall curves of every model."""
        shown = self.save_figure(Section(), figures.plot_roc(self.results), "roc_curve")
        return self.save_figure(shown, figures.plot_pr(self.results), "pr_curve")

    def calibration(self) -> Section:
        """Reliability diagram; ECE and Brier score of each model."""
        shown = self.save_figure(Section(), figures.plot_calibration(self.results), "calibration")
        return shown.add("print", "\n".join(f"{r.name}: ECE {r.metrics['ece']:.4f}, Brier score "
                                            f"{r.metrics['brier']:.4f}" for r in self.results))

    def mistakes(self) -> Section:
        """The most confident mistakes of each model, with their files."""
        shown, size = Section(), self.params.GALLERY_SIZE
        for r in self.results:
            mistakes = metrics.confident_mistakes(r.y_true, r.p_fake, r.files, size, r.threshold)
            if mistakes.empty:
                shown.add("markdown", f"**{r.name}** makes no mistakes on the {len(r.y_true)} test images.")
                continue
            shown.add("markdown", f"**{r.name}**: {r.metrics['n_errors']} mistakes, the {len(mistakes)} "
                                  "most confident:")
            shown.add("table", mistakes[["file", "true", "predicted", "p_fake"]].round(4))
            fig = figures.plot_gallery(self.split_of(r).images, mistakes,
                                       f"{r.name}: most confident mistakes (threshold {r.threshold:.3g})")
            self.save_figure(shown, fig, f"mistakes_{r.name}")
        return shown

    def per_category(self) -> Section:
        """Accuracy per image category and class (datasets whose file names carry one):
        ``per_category.csv``."""
        p, shown, tables = self.params, Section(), []
        if not self.spec.categories:
            print(f"{p.DATASET}: the file names carry no image category; section skipped")
            return shown
        for r in self.results:
            table = breakdown.per_category_table(r, self.spec, p.N_BOOTSTRAP, p.SEED)
            tables.append(table)
            shown.add("markdown", breakdown.describe_categories(table))
            self.save_figure(shown, breakdown.plot_per_category(table), f"per_category_{r.name}")
            for kind, mistakes in breakdown.mistakes_by_kind(r, p.GALLERY_SIZE).items():
                if not mistakes.empty:
                    fig = figures.plot_gallery(self.split_of(r).images, mistakes,
                                               f"{r.name}: most confident mistakes, {kind}")
                    self.save_figure(shown, fig, f"mistakes_{kind.replace(' ', '_')}_{r.name}")
        table = self.write(pd.concat(tables, ignore_index=True), "per_category")
        return shown.add("table", table.pivot_table(index="category", columns=["model", "class"],
                                                    values="accuracy", sort=False).round(4))

    def colour(self) -> Section:
        """The detector where colour alone misleads: ``colour_check.csv``."""
        shown = Section()
        table = self.write(pd.concat([compare.colour_check(r, self.split_of(r).colour_p_fake, *self.check_args())
                                      for r in self.results], ignore_index=True), "colour_check")
        for _, rows in table.groupby("model", sort=False):
            shown.add("markdown", text.describe_colour_check(rows))
        return shown.add("table", table.drop(columns="model").round(4))

    def near_duplicates(self) -> Section:
        """The detector without the test images that have a near-copy in train:
        ``near_duplicate_check.csv``."""
        shown = Section()
        table = self.write(pd.concat([compare.near_duplicate_check(r, self.split_of(r).near_copy,
                                                                   *self.check_args())
                                      for r in self.results], ignore_index=True), "near_duplicate_check")
        for _, rows in table.groupby("model", sort=False):
            shown.add("markdown", text.describe_near_duplicate_check(rows))
        return shown.add("table", table.drop(columns=["model", "classifier"]).round(4))

    def robustness(self) -> Section:
        """CNNDetection's post-processing protocol (``ROBUSTNESS``): ``robustness.csv``."""
        p, shown = self.params, Section()
        if not p.ROBUSTNESS:
            print("robustness skipped (ROBUSTNESS = False)")
            return shown
        sets = {size: perturbed_sets(s.images[s.subset]) for size, s in self.splits.items()}
        table = self.write(pd.concat([
            robustness_table(r.detector, sets[r.detector.image_size], r.y_true[s.subset], self.device,
                             p.BATCH_SIZE, p.THRESHOLD, clean_p_fake=r.p_fake[s.subset])
            for r in self.results for s in [self.split_of(r)]], ignore_index=True), "robustness")
        self.save_figure(shown, figures.plot_robustness(table), "robustness")
        shown.add("markdown", text.describe_robustness(table).replace("\n", "  \n"))
        return shown.add("table", table.set_index(["model", "condition"])[
            ["accuracy", "auc", "fake_recall", "real_recall", "flagged_fake", "accuracy_drop"]].round(4))

    def severity(self) -> Section:
        """Accuracy against severity of the best clean and the best robust detector:
        ``robustness_severity.csv``."""
        p, shown = self.params, Section()
        if not p.ROBUSTNESS:
            print("severity curves skipped (ROBUSTNESS = False)")
            return shown
        compared = clean_and_robust([r.detector for r in self.results])
        s = self.split_of(compared[0])
        table = self.write(severity_table(compared, s.images[s.subset], s.labels[s.subset], device=self.device,
                                          batch_size=p.BATCH_SIZE, n_bootstrap=p.N_BOOTSTRAP, seed=p.SEED),
                           "robustness_severity")
        shown.add("print", "compared: " + ", ".join(d.name for d in compared))
        for family in dict.fromkeys(table["family"]):
            self.save_figure(shown, figures.plot_severity(table, family), f"severity_{family}")
        return shown

    def cross_generator(self) -> Section:
        """Notebook 04's GAN images, never seen in training: ``cross_generator.csv``."""
        p, shown = self.params, Section()
        manifest = export.load_manifest(p.DATASET)
        if manifest is None:
            return shown.add("markdown", f"No GAN export in `{export.export_dir(p.DATASET)}`: notebook 04 "
                                         f"writes it (`make gan DATASET={p.DATASET}`). The cross-generator "
                                         "test is skipped.")
        exported = {size: export.load_exported(p.DATASET, size) for size in self.splits}
        self.cross = [compare.cross_generator(r, images, manifest.get("resolution"), self.device,
                                              p.BATCH_SIZE, *self.check_args())
                      for r in self.results for images in [exported[r.detector.image_size]]
                      if images is not None and len(images)]
        if not self.cross:
            return shown.add("markdown", "The GAN export holds no images; the cross-generator test is skipped.")
        frame = self.write(compare.cross_generator_frame(self.cross), "cross_generator")
        self.save_figure(shown, figures.plot_cross_generator(frame), "cross_generator")
        for c in self.cross:
            shown.add("markdown", text.describe_cross_generator(c))
        return shown

    def comparison(self) -> Section:
        """The models side by side, next to the published results; accuracy against training time."""
        p, published, shown = self.params, self.spec.published, Section()
        shown.add("table", compare.comparison_table(self.results))
        if published:
            shown.add("table", pd.DataFrame(published, columns=["published result", "test accuracy"])
                      .set_index("published result").style.format("{:.2%}"))
        if len(self.results) > 1:
            self.save_figure(shown, figures.plot_comparison(compare.metrics_frame(self.results)),
                             "model_comparison")
        else:
            shown.add("print", f"one model evaluated ({self.results[0].name}); train the reference models to "
                               f"compare: make reference-models DATASET={p.DATASET}")
        curves = breakdown.training_curves(p.DATASET, [r.name for r in self.results])
        if len(curves):
            self.save_figure(shown, breakdown.plot_accuracy_vs_time(curves, published), "accuracy_vs_training_time")
            targets = sorted({a for _, a in published} | {0.95})
            shown.add("table", pd.concat([breakdown.time_to_reach(curves, t) for t in targets], ignore_index=True)
                      .pivot(index="model", columns="target", values="seconds").round(0)
                      .rename(columns=lambda t: f"s to val {t:.2%}"))
        return shown

    def sources(self) -> list:
        """Every source of the cross-dataset matrix that exists: each dataset's clean test split
        and GAN images (computed once; why the others are missing is printed)."""
        if getattr(self, "_sources", None) is None:
            p, self._sources = self.params, []
            self._detectors_all, skipped = cross_dataset.dataset_detectors(device=self.device, seed=p.SEED)
            for name, reason in skipped:
                print(f"not in the matrix: {name}: {reason}")
            missing = []
            for name in datasets.DATASETS:
                for make_source in (cross_dataset.test_source, cross_dataset.gan_source):
                    source = make_source(name, p.SEED, p.CROSS_DATASET_MAX_IMAGES)
                    (missing if isinstance(source, str) else self._sources).append(source)
            for reason in missing:
                print(f"source not available: {reason}")
        return self._sources

    def cross_dataset(self) -> Section:
        """Every dataset's specialist and pretrained detectors on every source:
        ``cross_dataset.csv`` and ``cross_dataset_unseen.csv``."""
        shown, sources = Section(), self.sources()
        if not (self._detectors_all and sources):
            return shown
        table = self.write(cross_dataset.matrix(self._detectors_all, sources, self.device), "cross_dataset")
        self.save_figure(shown, cross_dataset.plot(table), "cross_dataset")
        shown.add("markdown", cross_dataset.describe(table))
        shown.add("table", table.drop(columns=["trained_on_source"]).set_index(["detector", "source"]).round(3))
        unseen = self.write(cross_dataset.unseen_summary(table), "cross_dataset_unseen")
        shown.add("markdown", cross_dataset.describe_generalisation(unseen))
        return shown.add("table", unseen.set_index("detector").round(3))

    def domain_check(self) -> Section:
        """Each detector's domain check on every source: ``domain_check.csv``."""
        shown, sources = Section(), self.sources()
        for d in self._detectors_all:
            if d.domain is None:
                print(f"{d.name}: domain check {d.domain_status}")
        checked = [d for d in self._detectors_all if d.domain is not None]
        if not (checked and sources):
            return shown
        table = self.write(domain_eval.table(checked, sources, self.device), "domain_check")
        self.save_figure(shown, domain_eval.plot(table), "domain_check")
        shown.add("markdown", domain_eval.describe(table))
        return shown.add("table", table.set_index(["detector", "source"]).round(3))

    def write_summary(self) -> Section:
        """``performance_metrics.csv`` and ``.json`` (every parameter recorded, the checks'
        tables), and the closing paragraph."""
        records = {name: None if (t := self.tables.get(name)) is None else t.to_dict(orient="records")
                   for name in ("robustness", "colour_check", "near_duplicate_check", "test_protocols",
                                "per_category", "cross_dataset")}
        extra = {"best_model": self.best.name, "skipped": self.skipped, "cross_generator": self.cross or None,
                 **records}
        csv_path, json_path = compare.write_performance(self.params.DATASET, self.results, self.cache,
                                                        self.record, extra)
        shown = Section().add("print", f"wrote {csv_path}\nwrote {json_path}")
        return shown.add("markdown", text.summary(self.results, self.best, self.tables.get("robustness"),
                                                  self.cross, self.cache.meta["is_demo"],
                                                  self.tables.get("colour_check"),
                                                  self.tables.get("near_duplicate_check")))
