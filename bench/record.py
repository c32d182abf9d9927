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
