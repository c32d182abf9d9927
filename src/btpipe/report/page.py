"""Build the self-contained evaluation report (report/report.html).

``build_report`` reads whatever exists under results_dir; a missing or
unreadable input makes its section say "not available" and never stops the
report. Each section function (cohort, segmentation, radiomics, survival,
provenance modules) turns files into display blocks (:mod:`btpipe.report.blocks`)
that one Jinja2 template renders; images are inline data URIs, so the HTML
file is the whole report.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from importlib import resources
from pathlib import Path

from .. import __version__
from ..io import write_text
from .blocks import missing
from .cohort import cohort_section, demo_section, gallery_section, preproc_section
from .inputs import Inputs, cohort_subjects
from .provenance import methods_section, provenance_section
from .radiomics import radiomics_section
from .segmentation import provided_labels_section, segmentation_section
from .survival import survival_section

log = logging.getLogger("btpipe.report")


def _template_text(name: str) -> str:
    return resources.files("btpipe.report").joinpath("templates", name).read_text(encoding="utf-8")


def render_html(context: dict) -> str:
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(autoescape=True)
    template = env.from_string(_template_text("report.html.j2"))
    return template.render(css=Markup(_template_text("report.css")),
                           js=Markup(_template_text("report.js")), **context)


def _guarded(name: str, build, inp: Inputs) -> dict | None:
    """Run one section builder; an unexpected error becomes a 'not available' note."""
    try:
        return build()
    except Exception as exc:
        log.exception("report section %s failed", name)
        inp.problems.append(f"section {name}: {type(exc).__name__}: {exc}")
        return {"id": name, "title": name.capitalize(),
                "blocks": [missing(f"{name.capitalize()} (error while building: {type(exc).__name__}: {exc})")]}


def build_report(results_dir, config, out_path, run_info=None) -> Path:
    """Write the self-contained HTML evaluation report and return its path.

    Inputs: results_dir (the pipeline's output folder; any subset of its files
    may exist), config (the effective configuration dict), run_info (optional
    dict of provenance: versions, commit, command line, times). Output:
    out_path, written atomically; images are embedded as data URIs.
    """
    start = time.perf_counter()
    results_dir = Path(results_dir)
    config = dict(config or {})
    inp = Inputs(results_dir)
    subjects = cohort_subjects(inp)
    builders = [
        ("demo", lambda: demo_section(inp, config)),
        ("cohort", lambda: cohort_section(inp, subjects)),
        ("gallery", lambda: gallery_section(inp, subjects, config)),
        ("preproc", lambda: preproc_section(inp, subjects)),
        ("segmentation", lambda: provided_labels_section(config) or segmentation_section(inp)),
        ("radiomics", lambda: radiomics_section(inp, config)),
        ("survival", lambda: survival_section(inp)),
        ("methods", lambda: methods_section(config, results_dir)),
    ]
    sections = [s for s in (_guarded(n, b, inp) for n, b in builders) if s]
    sections.append(_guarded("provenance", lambda: provenance_section(
        config, run_info, results_dir, inp, time.perf_counter() - start), inp))
    context = {
        "title": (config.get("report") or {}).get("title") or "btpipe evaluation report",
        "version": __version__,
        "generated": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "results_dir": str(results_dir),
        "sections": sections,
    }
    html = render_html(context)
    out_path = Path(out_path)
    write_text(out_path, html)
    return out_path
