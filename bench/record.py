"""Replace one '## heading' section of docs/benchmarks.md, keeping the others."""

from __future__ import annotations

import re
from pathlib import Path


def replace_section(path: Path, heading: str, body: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(block + "\n", text) if pattern.search(text) else \
        text.rstrip() + "\n\n" + block
    path.write_text(text)


def run_json_script(code: str, *args: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter (so its peak RSS and imports are its
    own) and return the JSON object printed on its last output line."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code, *args], check=True,
                          capture_output=True, text=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timed_snakemake(workdir: Path, log_name: str, *args: str) -> float:
    """Wall seconds of ``snakemake -s Snakefile -d workdir ARGS`` (the repository's
    workflow, the venv's snakemake), its output in workdir/log_name."""
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    cmd = [str(Path(sys.executable).with_name("snakemake")), "-s", str(repo / "Snakefile"),
           "-d", str(workdir), *args]
    start = time.perf_counter()
    with open(Path(workdir) / log_name, "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def benchmark_records(results: Path, rule: str = "*"):
    """One row per job from Snakemake's benchmark files results/benchmarks/{rule}/{job}.tsv:
    rule, job, s (wall), max_rss_mb."""
    import pandas as pd

    rows = []
    for tsv in sorted(Path(results).glob(f"benchmarks/{rule}/*.tsv")):
        rec = pd.read_csv(tsv, sep="\t").iloc[0]
        rows.append({"rule": tsv.parent.name, "job": tsv.stem, "s": rec["s"],
                     "max_rss_mb": rec["max_rss"]})
    return pd.DataFrame(rows, columns=["rule", "job", "s", "max_rss_mb"])
