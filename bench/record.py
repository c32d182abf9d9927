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


def timed_snakemake(workdir: Path, log_name: str, *args: str, slowdown=1.0) -> float:
    """Wall seconds of ``snakemake -s Snakefile -d workdir ARGS`` (the repository's
    workflow, the venv's snakemake), its output in workdir/log_name. slowdown (a
    factor, or {script: factor}) runs it on a simulated slower CPU (`throttled`)."""
    import sys

    repo = Path(__file__).resolve().parents[1]
    cmd = [str(Path(sys.executable).with_name("snakemake")), "-s", str(repo / "Snakefile"),
           "-d", str(workdir), *args]
    return timed_command(cmd, Path(workdir) / log_name, slowdown=slowdown)


def timed_command(cmd, log_path: Path, cwd=None, slowdown=1.0) -> float:
    """Wall seconds of a command (raises if it fails), its output in log_path."""
    import subprocess
    import time

    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        with throttled(proc.pid, slowdown):
            code = proc.wait()
    if code:
        raise subprocess.CalledProcessError(code, cmd)
    return time.perf_counter() - start


class throttled:
    """Simulate a slower CPU for a process group (a cpulimit-style duty cycle):
    in every PERIOD each process of the group runs for PERIOD / factor and is
    stopped (SIGSTOP) for the rest, so its work takes `factor` times as long
    and wall-clock readings inside it (a time budget) see the slow clock.

    `factors` is one number for every process, or {script: factor} for
    Snakemake script jobs (matched on ".{script}.py" in the command line, e.g.
    "seg_train") with "*" for every other process of the group."""

    PERIOD = 0.05
    REFRESH = 1.0      # seconds between scans of the group's processes

    def __init__(self, pgid: int, factors):
        self.pgid = pgid
        self.factors = factors if isinstance(factors, dict) else {"*": float(factors)}
        self._stop = self._thread = None

    def __enter__(self):
        import threading

        if any(float(f) > 1.0 for f in self.factors.values()):
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._cycle, daemon=True)
            self._thread.start()
        return self

    def factor_of(self, cmdline: str) -> float:
        for script, factor in self.factors.items():
            if script != "*" and f".{script}.py" in cmdline:
                return float(factor)
        return float(self.factors.get("*", 1.0))

    def _members(self) -> dict[int, float]:
        """{pid: run fraction per period} of the group's processes that are slowed."""
        import os

        out = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getpgid(int(entry)) != self.pgid:
                    continue
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ProcessLookupError):
                continue
            factor = self.factor_of(cmdline)
            if factor > 1.0:
                out[int(entry)] = 1.0 / factor
        return out

    def _signal(self, pid, sig):
        import os

        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _cycle(self):
        import signal
        import time

        members, scanned = {}, 0.0
        while not self._stop.is_set():
            if time.monotonic() - scanned > self.REFRESH:
                members, scanned = self._members(), time.monotonic()
            start = time.monotonic()
            for pid in members:
                self._signal(pid, signal.SIGCONT)
            for pid, run in sorted(members.items(), key=lambda kv: kv[1]):
                self._stop.wait(max(0.0, start + run * self.PERIOD - time.monotonic()))
                self._signal(pid, signal.SIGSTOP)
            self._stop.wait(max(0.0, start + self.PERIOD - time.monotonic()))
        for pid in members:
            self._signal(pid, signal.SIGCONT)

    def __exit__(self, *exc):
        import os
        import signal

        if self._stop is not None:
            self._stop.set()
            self._thread.join()
            try:
                os.killpg(self.pgid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        return False


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
