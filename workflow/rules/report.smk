# The self-contained evaluation report.


def report_inputs(wildcards):
    subjects = passed_ingest()
    return {
        "ingest": ingest_summary_path(),
        "qc": f"{R}/cohort/qc.parquet",
        "seg": f"{R}/cohort/seg_metrics.parquet",
        "features": f"{R}/cohort/features.parquet",
        "coverage": f"{R}/cohort/slice_coverage.parquet",
        "survival": f"{R}/survival/metrics.parquet",
        "montages": [f"{subject_dir(s)}/preproc/qc.png" for s in subjects],
        "segs": [f"{subject_dir(s)}/seg/seg.nii.gz" for s in subjects],
    }


rule report:
    input:
        unpack(report_inputs),
    output:
        report(f"{R}/report/report.html", caption="../report/report.rst", category="Report"),
    params:
        config=config,
        results_dir=R,
    log:
        f"{R}/logs/report.log",
    resources:
        **step_resources("report"),
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/report.py"


rule report_figures:
    """The main figures as files with captions, for `snakemake --report`."""
    input:
        seg=f"{R}/cohort/seg_metrics.parquet",
        survival=f"{R}/survival/metrics.parquet",
    output:
        seg=report(f"{R}/report/figures/seg_scores.png", caption="../report/seg_scores.rst",
                   category="Segmentation"),
        km=report(f"{R}/report/figures/kaplan_meier.png", caption="../report/km.rst",
                  category="Survival"),
    params:
        results_dir=R,
        km_model=config["survival"]["models"][0],
    log:
        f"{R}/logs/report_figures.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/report_figures.py"
