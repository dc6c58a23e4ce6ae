"""Commands import only what they use (issue 23, item 1).

`rfwatch --help`, `status`, `history`, `retry`, `undo --dry-run` and `plugins` must not load requests, the image
stack (Pillow) or the review server; only commands that may run actions, or are asked to (`status --plugins`,
`plugins`), load the plugins. Each
check runs the command in a fresh interpreter and reads its ``sys.modules`` afterwards: what a user pays for at
every start. The speed itself is measured in bench/startup.py, never here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import UNREACHABLE_PLATFORM, VALID_KEY, files_under, run_cli, unique_jpeg, write_config
from roboflow_server import RoboflowServer

#: Modules no light command may load: the HTTP stack, the image stack, the review page.
HEAVY = ("requests", "urllib3", "PIL", "rfwatch.review.server", "rfwatch.review.app")
#: Modules that mean the plugins were loaded (pluggy and the built-ins it registers).
PLUGINS = ("pluggy", "rfwatch.host.manager", "rfwatch.default_plugins")

_PROBE = """
import json, sys
from rfwatch.cli import main
out, argv = sys.argv[1], sys.argv[2:]
try:
    code = main(argv) if argv else 0
except SystemExit as exc:  # --help
    code = exc.code
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def loaded_by(tmp_path: Path, *argv: str) -> set[str]:
    """The modules loaded once ``rfwatch ARGV`` has run in a fresh interpreter (no ARGV: ``import rfwatch.cli``)."""
    out = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.json"
    env = dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY, ROBOFLOW_PLATFORM_URL=UNREACHABLE_PLATFORM)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), *argv], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0 and out.exists(), proc.stderr
    report = json.loads(out.read_text())
    assert report["code"] == 0, f"rfwatch {' '.join(argv)} exited {report['code']}: {proc.stderr}"
    return set(report["modules"])


def among(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


@pytest.fixture(scope="module")
def small_journal(tmp_path_factory):
    """A journal of a few sorted files (a real `run --once`), then a config whose rules use every built-in that
    could pull in something heavy (webhook: requests; annotate: Pillow; review: the platform client)."""
    tmp = tmp_path_factory.mktemp("journal")
    server = RoboflowServer().start()  # once for the module: the commands below never call it
    try:
        cfg = write_config(tmp, server)
        for n, color in enumerate([(230, 10, 10), (10, 230, 10), (10, 10, 230)]):
            (tmp / "inbox" / f"img{n}.jpg").write_bytes(unique_jpeg(color, n))
        ran = run_cli("run", "--once", "-q", "-c", str(cfg))
    finally:
        server.stop()
    assert ran.returncode == 0, ran.stderr
    sorted_files = files_under(tmp / "sorted")
    assert len(sorted_files) == 3
    doc = yaml.safe_load(cfg.read_text())
    doc["rules"] = [
        {
            "name": "everything",
            "then": [
                {"webhook": {"url": "http://127.0.0.1:9/hook", "secret": "whsec_" + "QUJD" * 8}},
                {"annotate": "annotated/{class}/{name}"},
                {"review": "review/{class}/{name}"},
            ],
        }
    ]
    doc["review"] = {"upload": {"project": "colors"}}
    cfg.write_text(yaml.safe_dump(doc))
    return cfg, sorted_files[0]


def test_importing_the_cli_loads_no_http_image_plugin_or_review_code(tmp_path):
    modules = loaded_by(tmp_path)
    assert "rfwatch.cli" in modules
    assert among(modules, HEAVY) == []
    assert among(modules, PLUGINS) == []
    assert among(modules, ("rfwatch.review",)) == []


def test_help_loads_neither_the_config_nor_the_journal(tmp_path):
    modules = loaded_by(tmp_path, "--help")
    assert among(modules, HEAVY) == []
    assert among(modules, PLUGINS) == []
    assert among(modules, ("yaml", "rfwatch.config", "rfwatch.journal")) == []


def test_status_loads_no_plugins_and_status_plugins_does(tmp_path, small_journal):
    cfg, _ = small_journal
    modules = loaded_by(tmp_path, "status", "-c", str(cfg))
    assert among(modules, HEAVY) == []
    assert among(modules, PLUGINS) == []  # it names each delivery's plugin from the journal (outbox.deliverers)
    # `status --plugins` loads them, for their names and status_lines (docs/plugins.md), but builds no rule.
    modules = loaded_by(tmp_path, "status", "--plugins", "-c", str(cfg))
    assert among(modules, HEAVY) == []
    assert "rfwatch.default_plugins.webhook" in modules
    assert among(modules, ("rfwatch.host.rules", "rfwatch.host.runtime")) == []


def test_history_loads_no_plugins(tmp_path, small_journal):
    cfg, path = small_journal
    modules = loaded_by(tmp_path, "history", "-c", str(cfg), str(path))
    assert among(modules, HEAVY) == []
    assert among(modules, PLUGINS) == []


def test_retry_loads_no_plugins(tmp_path, small_journal):
    cfg, _ = small_journal
    modules = loaded_by(tmp_path, "retry", "-c", str(cfg))
    assert among(modules, HEAVY) == []
    assert among(modules, PLUGINS) == []


def test_undo_dry_run_and_plugins_load_no_http_or_image_stack(tmp_path, small_journal):
    cfg, _ = small_journal
    for argv in (("undo", "--dry-run", "-c", str(cfg)), ("plugins", "-c", str(cfg))):
        modules = loaded_by(tmp_path, *argv)
        assert among(modules, HEAVY) == [], argv
        assert "rfwatch.default_plugins.webhook" in modules, argv  # they do load the plugins: they need them


def test_the_public_plugin_module_is_small(tmp_path):
    """`import rfwatch.plugin` loads a handful of rfwatch modules, not the runtime (it loaded 23 before)."""
    out = tmp_path / "plugin.json"
    code = f"import json, sys, rfwatch.plugin; json.dump(sorted(sys.modules), open({str(out)!r}, 'w'))"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    modules = set(json.loads(out.read_text()))
    ours = among(modules, ("rfwatch",))
    assert len(ours) <= 6, ours
    assert among(modules, HEAVY + PLUGINS + ("rfwatch.config", "rfwatch.journal", "rfwatch.host.runtime")) == []
