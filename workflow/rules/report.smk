# The self-contained evaluation report.


def report_inputs(wildcards):
    subjects = passed_ingest()
    return {
        "ingest": ingest_summary_path(),
        "qc": L.cohort("qc"),
        "seg": L.cohort("seg_metrics"),
        "features": L.cohort("features"),
        "coverage": L.cohort("slice_coverage"),
        "survival": [L.survival("metrics.parquet")] if SURVIVAL_ENABLED else [],
        "montages": [L.qc(s, "png") for s in subjects],
        "segs": [L.seg(s) for s in subjects],
    }


rule report:
    input:
        unpack(report_inputs),
    output:
        report(L.report("report.html"), caption="../report/report.rst", category="Report"),
    params:
        config=config,
        results_dir=R,
    log:
        L.log("report"),
    resources:
        **step_resources("report"),
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/report.py"


rule report_seg_figure:
    """Segmentation scores as a file with its caption, for `snakemake --report`."""
    input:
        L.cohort("seg_metrics"),
    output:
        report(L.report("figures", "seg_scores.png"), caption="../report/seg_scores.rst",
               category="Segmentation"),
    log:
        L.log("report_seg_figure"),
    localrule: True
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/report_seg_figure.py"


rule report_km_figure:
    """Kaplan-Meier curves of the first survival model, for `snakemake --report`."""
    input:
        L.survival(SURV["models"][0], "predictions.parquet") if SURV["models"] else [],
    output:
        report(L.report("figures", "kaplan_meier.png"), caption="../report/km.rst",
               category="Survival"),
    params:
        model=SURV["models"][0] if SURV["models"] else None,
    log:
        L.log("report_km_figure"),
    localrule: True
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/report_km_figure.py"


def report_figures():
    """The figure files: segmentation scores when models segmented labelled subjects,
    Kaplan-Meier curves when the survival stage runs."""
    return ([L.report("figures", "seg_scores.png")] if not PROVIDED_MODE else []) + \
        ([L.report("figures", "kaplan_meier.png")] if SURVIVAL_ENABLED else [])
