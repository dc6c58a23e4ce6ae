"""The plugin contract: hooks are documented, and an external plugin installs and works from YAML."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli, unique_jpeg, write_config
from PIL import Image

from rfwatch import hookspecs

REPO = Path(__file__).resolve().parents[1]
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "rfwatch_spec")]


def test_every_hook_has_a_docstring_and_a_section_in_the_guide():
    guide = (REPO / "docs" / "plugins.md").read_text()
    assert set(HOOKS) == {
        "register_actions",
        "startup",
        "shutdown",
        "ignore_file",
        "file_classified",
        "file_processed",
        "file_failed",
    }
    for name in HOOKS:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"
        assert f"### `{name}(" in guide, f"{name} is not documented in docs/plugins.md"


@pytest.fixture
def installed_example_plugin():
    pkg = REPO / "plugins" / "rfwatch-thumbnail"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(pkg)]
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    yield
    subprocess.run(
        [sys.executable, "-m", "pip", "uninstall", "-q", "-y", "rfwatch-thumbnail"],
        check=True,
        capture_output=True,
        timeout=300,
    )


def test_example_plugin_installs_with_pip_and_its_action_works(tmp_path, server, api_key, installed_example_plugin):
    listing = json.loads(run_cli("plugins", "--json").stdout)
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
    result = run_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "thumbs" / "red" / "a.webp") as img:
        assert img.format == "WEBP" and img.size == (64, 48)
    bad = write_config(tmp_path, server, rules=[{"then": [{"thumbnail": {"to": "x/{name}", "size": 2}}]}])
    check = run_cli("check", "-c", str(bad))
    assert check.returncode == 2 and "rules[0].then[0].thumbnail: size: expected an integer" in check.stderr
