"""The plugin contract: hooks are documented, and an external plugin installs and works from YAML."""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import files_under, run_cli, unique_jpeg, write_config
from PIL import Image

from rfwatch.host import hookspecs

REPO = Path(__file__).resolve().parents[1]
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "rfwatch_spec")]


def test_every_hook_has_a_docstring_and_a_section_in_the_guide_with_its_signature():
    """As datasette's tests/test_docs.py: the guide documents every hook with the spec's own arguments."""
    guide = (REPO / "docs" / "plugins.md").read_text()
    assert set(HOOKS) == {
        "register_actions",
        "register_deliverers",
        "startup",
        "shutdown",
        "ignore_file",
        "file_classified",
        "file_processed",
        "file_failed",
        "file_reviewed",
        "status_lines",
    }
    documented = dict(re.findall(r"^### `(\w+)\(([^)]*)\)`", guide, re.M))
    for name in HOOKS:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"
        assert name in documented, f"{name} is not documented in docs/plugins.md"
        spec_args = list(inspect.signature(getattr(hookspecs, name)).parameters)
        doc_args = [a.strip() for a in documented[name].split(",") if a.strip()]
        assert doc_args == spec_args, f"docs/plugins.md says {name}({documented[name]}), the spec {spec_args}"


def test_every_name_of_the_public_module_is_documented():
    import rfwatch.plugin

    guide = (REPO / "docs" / "plugins.md").read_text()
    missing = [name for name in rfwatch.plugin.__all__ if f"### `{name}`" not in guide]
    assert not missing, f"rfwatch.plugin names with no section in docs/plugins.md: {missing}"
    for name in rfwatch.plugin.__all__:
        assert hasattr(rfwatch.plugin, name), name


def _rfwatch_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: inside rfwatch/default_plugins
                module = "rfwatch.default_plugins" + ("." + module if module else "") if node.level == 1 else "rfwatch"
            if module == "rfwatch" or module.startswith("rfwatch."):
                found.append(module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name == "rfwatch" or a.name.startswith("rfwatch.")]
    return found


def test_built_in_plugins_use_only_the_public_module():
    """The built-ins are written like third-party plugins: rfwatch.plugin, and their own package."""
    offenders = {}
    for path in sorted((REPO / "rfwatch" / "default_plugins").glob("*.py")):
        bad = [
            m for m in _rfwatch_imports(path) if m != "rfwatch.plugin" and not m.startswith("rfwatch.default_plugins")
        ]
        if bad:
            offenders[path.name] = bad
    assert not offenders, f"built-in plugins importing rfwatch internals: {offenders}"
    example = REPO / "plugins" / "rfwatch-thumbnail" / "rfwatch_thumbnail" / "__init__.py"
    assert _rfwatch_imports(example) == ["rfwatch.plugin"]


def test_the_import_check_catches_an_internal_import(tmp_path):
    """The check above can fail: a plugin importing rfwatch.files.place is caught."""
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("from rfwatch.files.place import place_file\nfrom ..templates import Template\n")
    assert _rfwatch_imports(sneaky) == ["rfwatch.files.place", "rfwatch"]


#: Every table the journal's schema creates (read from its source: a table added later is covered at once).
JOURNAL_TABLES = tuple(
    sorted(set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", (REPO / "rfwatch/journal/schema.py").read_text())))
)
_SQL_ON_A_TABLE = re.compile(
    r"\b(insert\s+into|update|delete\s+from|from|join)\s+(" + "|".join(JOURNAL_TABLES) + r")\b", re.IGNORECASE
)


def test_only_the_journal_package_knows_the_journal_tables():
    """All SQL against the journal's tables lives in rfwatch/journal/: callers use its named transitions."""
    package = REPO / "rfwatch"
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.is_relative_to(package / "journal"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _SQL_ON_A_TABLE.search(code) and ('"' in code or "'" in code):
                found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert found == [], "SQL against the journal's tables outside rfwatch/journal/:\n" + "\n".join(found)


def test_the_ownership_test_finds_sql_outside_the_journal(tmp_path):
    """The check above is not blind: the same pattern finds a statement in a string."""
    assert {"files", "produced", "claims", "outbox", "seq_frames", "file_counts"} <= set(JOURNAL_TABLES)
    assert _SQL_ON_A_TABLE.search('db.run("SELECT state FROM files WHERE id=?")')
    assert _SQL_ON_A_TABLE.search("tx.run('UPDATE outbox SET lease=NULL')")


@pytest.fixture
def installed_example_plugin(tmp_path):
    """pip-installed into a folder of its own (not the running environment): runs never clash."""
    target = tmp_path / "site"
    pkg = REPO / "plugins" / "rfwatch-thumbnail"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target)]
    subprocess.run([*pip, str(pkg)], check=True, capture_output=True, timeout=300)
    return {"PYTHONPATH": str(target)}


def test_example_plugin_installs_with_pip_and_its_action_works(tmp_path, server, api_key, installed_example_plugin):
    env = installed_example_plugin
    listing = json.loads(run_cli("plugins", "--json", env=env).stdout)
    (plugin,) = [p for p in listing if p["name"] == "thumbnail"]
    assert plugin["actions"] == ["thumbnail"] and plugin["distribution"].startswith("rfwatch-thumbnail")
    rules = [
        {
            "name": "r",
            "then": [{"thumbnail": {"to": "thumbs/{class}/{stem}.webp", "size": 64}}, {"move": "sorted/{name}"}],
        }
    ]
    cfg = write_config(tmp_path, server, rules=rules)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg((200, 0, 0), 1, size=(400, 300)))
    result = run_cli("run", "-c", str(cfg), "--once", env=env)
    assert result.returncode == 0, result.stderr
    thumb = tmp_path / "thumbs" / "red" / "a.webp"
    with Image.open(thumb) as img:
        assert img.format == "WEBP" and img.size == (64, 48)
    assert not [p for p in files_under(tmp_path / "thumbs") if p.name.startswith(".")], "no temporary file left"
    # its undo (rfwatch undo calls it) removes the thumbnail and puts the file back
    undo = run_cli("undo", "-c", str(cfg), str(tmp_path / "sorted" / "a.jpg"), env=env)
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert not thumb.exists() and (tmp_path / "inbox" / "a.jpg").exists()
    bad = write_config(tmp_path, server, rules=[{"then": [{"thumbnail": {"to": "x/{name}", "size": 2}}]}])
    check = run_cli("check", "-c", str(bad), env=env)
    assert check.returncode == 2 and "rules[0].then[0].thumbnail: size: expected an integer" in check.stderr


PLUGIN_WRAPPER = """
import json, rfwatch
from pathlib import Path
LOG = Path(__file__).with_name("calls.jsonl")

def note(*what):
    with open(LOG, "a") as fh:
        fh.write(json.dumps(what) + "\\n")

@rfwatch.hookimpl(wrapper=True)
def ignore_file(path):
    result = yield              # pluggy new-style wrapper: sees the final result of the others
    note("wrapper", path.name, result)
    return result
"""
PLUGIN_FIRST = """
import json, rfwatch
from pathlib import Path
LOG = Path(__file__).with_name("calls.jsonl")

@rfwatch.hookimpl(tryfirst=True)
def ignore_file(path):
    with open(LOG, "a") as fh:
        fh.write(json.dumps(["tryfirst", path.name]) + "\\n")

@rfwatch.hookimpl
def file_processed(ctx):
    with open(LOG, "a") as fh:
        fh.write(json.dumps(["processed", ctx.path.name]) + "\\n")
"""
PLUGIN_RAISES = """
import rfwatch

@rfwatch.hookimpl
def ignore_file(path):
    raise RuntimeError("boom in ignore_file")

@rfwatch.hookimpl
def file_processed(ctx):
    raise RuntimeError("boom in file_processed")
"""
PLUGIN_SKIPS = """
import json, rfwatch
from pathlib import Path
LOG = Path(__file__).with_name("calls.jsonl")

@rfwatch.hookimpl
def ignore_file(path):
    with open(LOG, "a") as fh:
        fh.write(json.dumps(["skipper", path.name]) + "\\n")
    return True if path.name.startswith("skip") else None
"""


def test_wrapper_tryfirst_and_a_raising_plugin_behave_as_pluggy_documents(tmp_path, server, api_key):
    """Hooks go through pluggy: a wrapper sees the real result, tryfirst runs first, one failure harms nobody."""
    plugins = []
    for name, code in [
        ("wrapper", PLUGIN_WRAPPER),
        ("first", PLUGIN_FIRST),
        ("raises", PLUGIN_RAISES),
        ("skips", PLUGIN_SKIPS),
    ]:
        (tmp_path / f"p_{name}.py").write_text(code)
        plugins.append(f"p_{name}.py")
    cfg = write_config(tmp_path, server, plugins=plugins)
    (tmp_path / "inbox" / "keep.jpg").write_bytes(unique_jpeg((200, 0, 0), 1))
    (tmp_path / "inbox" / "skip-me.jpg").write_bytes(unique_jpeg((200, 0, 0), 2))
    result = run_cli("run", "-c", str(cfg), "--once", env={"RFWATCH_TRACE_PLUGINS": "1"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sorted" / "red" / "keep.jpg").exists(), "a wrapper must not make every file ignored"
    assert (tmp_path / "inbox" / "skip-me.jpg").exists(), "the skipping plugin's True wins"
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    for name in ("keep.jpg", "skip-me.jpg"):
        mine = [c for c in calls if c[1] == name]
        order = [c[0] for c in mine]
        assert order[0] == "tryfirst", order  # tryfirst ran before the others
        assert "skipper" in order, "the raising plugin did not stop the others"
        assert mine[order.index("wrapper")][2] == (True if name.startswith("skip") else None)
    assert ["processed", "keep.jpg"] in calls, "file_processed of another plugin still ran"
    assert "p_raises.py failed in ignore_file" in result.stderr
    assert "p_raises.py failed in file_processed" in result.stderr
    assert "boom in ignore_file" in result.stderr
    # RFWATCH_TRACE_PLUGINS=1 prints every hook call with its implementations
    assert "rfwatch plugins: ignore_file(path=" in result.stderr
    assert "rfwatch plugins: file_processed returned" in result.stderr


STATUS_PLUGIN = """
from rfwatch.plugin import hookimpl

@hookimpl
def status_lines(config, deliveries):
    return [f"chatplug: {sum(deliveries.pending_by_plugin().values())} waiting, model {config.roboflow.model}"]
"""


def test_status_lines_are_printed_by_status_plugins_and_plain_status_runs_no_plugin(tmp_path, server):
    """A third party's status_lines reach `rfwatch status --plugins` (with the plugins' names); plain `status`
    loads no plugin at all, so a plugin's module is not even imported (issue 23: a light command stays light)."""
    (tmp_path / "chatplug.py").write_text(STATUS_PLUGIN + "\nopen(__file__ + '.imported', 'w').close()\n")
    cfg = write_config(tmp_path, server, plugins=["chatplug"])
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg((200, 0, 0), 1))
    env = {"PYTHONPATH": str(tmp_path)}
    assert run_cli("run", "-c", str(cfg), "--once", env=env).returncode == 0
    marker = tmp_path / "chatplug.py.imported"
    marker.unlink()
    plain = run_cli("status", "-c", str(cfg), env=env)
    assert plain.returncode == 0 and "done 1" in plain.stdout, plain.stderr
    assert "chatplug" not in plain.stdout and not marker.exists()
    full = run_cli("status", "--plugins", "-c", str(cfg), env=env)
    assert "chatplug: 0 waiting, model colors/1" in full.stdout, full.stdout + full.stderr
    assert "plugins: " in full.stdout and "chatplug" in full.stdout.split("plugins: ")[-1]
    report = json.loads(run_cli("status", "--plugins", "--json", "-c", str(cfg), env=env).stdout)
    assert report["plugins_status"] == ["chatplug: 0 waiting, model colors/1"] and "chatplug" in report["plugins"]
    assert json.loads(run_cli("status", "--json", "-c", str(cfg), env=env).stdout)["plugins"] is None
