"""docs/benchmarks.md is written by several benches: bench/run.py writes the main report and carries over the
blocks other benches keep in it, each between ``<!-- kept by bench/run.py: NAME -->`` and ``<!-- end NAME -->``
(see ``kept_sections`` in bench/run.py). ``write_section`` puts one such block in place."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(name: str, body: str, doc: Path = DOC) -> None:
    """Put ``body`` (markdown, starting with its heading) in the block ``name``, replacing its earlier text."""
    start, end = f"<!-- kept by bench/run.py: {name} -->", f"<!-- end {name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    pattern = re.compile("^" + re.escape(start) + r"$.*?^" + re.escape(end) + "$", flags=re.M | re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
