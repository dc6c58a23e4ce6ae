"""docs/benchmarks.md is written by several benches: bench/run.py writes the main report, and each other bench
(bench/journal.py, bench/hosts.py, ...) keeps one section of its own between marker comments, which
bench/run.py carries over when it writes the file anew."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- section: {name} -->", f"<!-- end of section: {name} -->"


def sections(text: str) -> list[str]:
    """The marked sections of a report, markers included, in their order."""
    return [m.group(0) for m in re.finditer(r"<!-- section: (.+?) -->.*?<!-- end of section: \1 -->", text, flags=re.S)]


def write_section(name: str, body: str, doc: Path = DOC) -> None:
    """Put ``body`` (markdown, starting with its heading) in the section ``name``, replacing its earlier text."""
    start, end = _markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def keep_sections(new_report: str, doc: Path = DOC) -> str:
    """The main report with the other benches' sections of the file it replaces appended."""
    old = doc.read_text() if doc.exists() else ""
    kept = sections(old)
    return new_report.rstrip() + ("\n\n" + "\n\n".join(kept) + "\n" if kept else "\n")
