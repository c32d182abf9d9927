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
