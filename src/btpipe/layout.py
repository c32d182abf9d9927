"""Where every file of a run lives under ``results_dir`` (docs/outputs.md).

The one place that knows the results layout: the workflow's rules build their input and
output paths with it, the steps read paths it built, and the report finds its inputs with it.
A subject argument left at ``"{subject}"`` gives a rule's wildcard pattern.

    >>> Layout("results").seg("demo-000")
    'results/subjects/demo-000/seg/seg.nii.gz'
    >>> Layout().preproc("t1ce")
    'subjects/{subject}/preproc/t1ce.nii.gz'
"""

from __future__ import annotations

from pathlib import PurePath

SUBJECT = "{subject}"


class Layout:
    """Paths under one results folder (``None`` or ``""``: paths relative to it)."""

    def __init__(self, results_dir=None):
        self.root = str(results_dir).rstrip("/") if results_dir not in (None, "") else ""

    def path(self, *parts) -> str:
        return "/".join([p for p in (self.root, *map(str, parts)) if p])

    # ------------------------------------------------------------ one subject

    def subject_dir(self, subject=SUBJECT) -> str:
        return self.path("subjects", subject)

    def nifti_dir(self, subject=SUBJECT) -> str:
        return self.path("subjects", subject, "nifti")

    def ingest_record(self, subject=SUBJECT) -> str:
        return self.path("subjects", subject, "nifti", "ingest.json")

    def series_table(self, subject=SUBJECT) -> str:
        return self.path("subjects", subject, "nifti", "series.parquet")

    def preproc_dir(self, subject=SUBJECT) -> str:
        return self.path("subjects", subject, "preproc")

    def preproc(self, seq, subject=SUBJECT) -> str:
        """Atlas-space sequence, skull-stripped, raw intensities."""
        return self.path("subjects", subject, "preproc", f"{seq}.nii.gz")

    def norm(self, seq, subject=SUBJECT) -> str:
        """Atlas-space sequence normalised for the models."""
        return self.path("subjects", subject, "preproc", "norm", f"{seq}.nii.gz")

    def brain_mask(self, subject=SUBJECT, native=False) -> str:
        name = "brain_mask_native" if native else "brain_mask"
        return self.path("subjects", subject, "preproc", f"{name}.nii.gz")

    def transform(self, name, subject=SUBJECT) -> str:
        """ITK transform: t1ce_to_atlas, atlas_to_t1ce, {t1,t2,flair}_to_t1ce."""
        return self.path("subjects", subject, "preproc", "transforms", f"{name}.mat")

    def qc(self, subject=SUBJECT, kind="json") -> str:
        return self.path("subjects", subject, "preproc", f"qc.{kind}")

    def reference(self, kind, subject=SUBJECT) -> str:
        """Expert labels (kind seg) or a reference brain mask carried to atlas space."""
        return self.path("subjects", subject, "preproc", "reference", f"{kind}.nii.gz")

    def seg(self, subject=SUBJECT, name="seg") -> str:
        """seg, prob, uncertainty or seg_native of the subject's segmentation."""
        return self.path("subjects", subject, "seg", f"{name}.nii.gz")

    def seg_metrics(self, subject=SUBJECT) -> str:
        return self.path("subjects", subject, "seg", "metrics.json")

    def radiomics(self, subject=SUBJECT) -> str:
        return self.path("subjects", subject, "radiomics.parquet")

    def slice_bag(self, subject=SUBJECT) -> str:
        return self.path("subjects", subject, "slices.npz")

    @staticmethod
    def subject_of(path) -> str:
        """The subject id of a path under ``subjects/{subject}/``."""
        parts = PurePath(path).parts
        if "subjects" not in parts[:-1]:
            raise ValueError(f"{path} is not under a subjects/ folder")
        last = len(parts) - 1 - parts[::-1].index("subjects")
        return parts[last + 1]

    # ------------------------------------------------------------ cohort tables and models

    def cohort(self, name) -> str:
        """ingest, qc, features, slice_coverage, seg_metrics, seg_summary (.parquet)."""
        return self.path("cohort", f"{name}.parquet")

    def seg_models(self, *parts) -> str:
        return self.path("models", "segmentation", *parts)

    def seg_model(self, name="{fold}") -> str:
        """fold{k} or final."""
        return self.path("models", "segmentation", name, "model.pt")

    # ------------------------------------------------------------ survival and report

    def survival(self, *parts) -> str:
        return self.path("survival", *parts)

    def report(self, *parts) -> str:
        return self.path("report", *parts)

    # ------------------------------------------------------------ run records and work files

    def log(self, rule, job=None) -> str:
        return self.path("logs", rule, f"{job}.log") if job else self.path("logs", f"{rule}.log")

    def benchmark(self, rule, job) -> str:
        return self.path("benchmarks", rule, f"{job}.tsv")

    def work(self, *parts) -> str:
        """Working files no rule declares (checkpoints, caches): an interrupted run resumes."""
        return self.path("work", *parts)
