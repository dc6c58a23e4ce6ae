"""docs/benchmarks.md is written by several benches: bench/run.py writes the main report and carries over the
blocks other benches keep in it, each between ``<!-- kept by bench/run.py: NAME -->`` and ``<!-- end NAME -->``:
``write_section`` puts one such block in place, ``kept_sections`` reads them all back for bench/run.py."""

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


def kept_sections(doc: Path = DOC) -> str:
    """The blocks other benches wrote into ``doc``, each as it was, for bench/run.py to append to its report."""
    text = doc.read_text() if doc.exists() else ""
    kept = re.finditer(r"^<!-- kept by bench/run\.py: ([\w-]+) -->\n.*?^<!-- end \1 -->$", text, re.M | re.S)
    return "".join("\n" + block.group(0) + "\n" for block in kept)
