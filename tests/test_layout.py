"""The package's layout shows its architecture: parts in layers, imports only downward, no cycles.

Low to high: the base modules (states, crash points, redaction, records); files and images; the Roboflow client; the config;
the journal; the plugin host (what actions see); processing (a file's way through the rules, undo, deliveries);
the review page and the service (daemon, watcher); the commands, the CLI, the public plugin module, the
stand-ins for tests (testing) and the demo. A module
may import its own part or a lower one. The test reads imports from the source, TYPE_CHECKING ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "rfwatch"

LAYERS: list[set[str]] = [
    {"rfwatch", "states", "crashpoints", "redact", "errors", "secret_files", "record"},
    {"files", "images"},
    {"roboflow"},
    {"config"},
    {"journal"},
    {"host"},
    {"processing"},
    {"review", "service", "exports"},
    {"commands", "cli", "plugin", "default_plugins", "__main__", "testing", "demo"},
]
LAYER = {part: n for n, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else "rfwatch"


def imports() -> list[tuple[str, str, str]]:
    """(file, importing part, imported part) for every import of rfwatch inside rfwatch."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        module = ".".join(p for p in rel.parts if p != "__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + (
                    [f"{node.module}.{a.name}" for a in node.names] if node.module == "rfwatch" else []
                )
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "rfwatch" and name != "rfwatch":
                    out.append((str(path.relative_to(REPO)), part_of(module), part_of(name)))
    return out


def test_every_part_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    parts = {p for p in parts if not p.startswith("__pycache__") and p != "data" and p != "__init__"}
    assert parts <= set(LAYER), f"parts with no layer: {parts - set(LAYER)}"


def test_imports_go_down_only():
    upward = [
        f"{path}: {src} imports {dst}"
        for path, src, dst in imports()
        if src != dst and src in LAYER and dst in LAYER and LAYER[dst] > LAYER[src]
    ]
    assert upward == [], "imports that point up:\n" + "\n".join(upward)


def test_no_cycles_between_parts():
    edges: dict[str, set[str]] = {}
    for _, src, dst in imports():
        if src != dst:
            edges.setdefault(src, set()).add(dst)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(p for p in edges if p in reach(p))
    assert cycles == [], f"parts in an import cycle: {cycles}"
