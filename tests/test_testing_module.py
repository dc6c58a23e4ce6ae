"""rfwatch.testing as a plugin author uses it: the fixtures come from rfwatch's pytest11 entry point, so the
example plugin's own tests (plugins/rfwatch-thumbnail/tests) run with no conftest.py and nothing from this
repository's tests; and the daemon helper and the stand-ins' deployment profiles do what they say."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from helpers import unique_jpeg

from rfwatch.testing import VALID_KEY

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "plugins" / "rfwatch-thumbnail"


def _rfwatch_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.split(".")[0] == "rfwatch"}


def test_the_example_plugins_tests_pass_with_only_rfwatch_testing(tmp_path):
    tests = sorted((PLUGIN / "tests").glob("test_*.py"))
    assert tests, "the example plugin has tests"
    assert not list(PLUGIN.rglob("conftest.py")), "the fixtures come from rfwatch, not from a conftest.py"
    assert set().union(*(_rfwatch_modules(t) for t in tests)) == set(), "its tests import nothing of rfwatch's"
    # Installed as its author would (into a folder of its own, from a copy: parallel runs never share a build).
    source = tmp_path / "rfwatch-thumbnail"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
    subprocess.run([*pip, str(source)], check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ROBOFLOW_"))}
    # The plugin's folder first; then the run's own PYTHONPATH (breakage/run.py points it at a broken rfwatch).
    pythonpath = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env.update(PYTHONPATH=pythonpath, PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "inner")],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"{len(_test_functions(tests))} passed" in result.stdout, result.stdout[-2000:]


def _test_functions(files: list[Path]) -> list[str]:
    return [
        node.name
        for f in files
        for node in ast.parse(f.read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    ]


@pytest.mark.rfwatch_server(profile="serverless")
def test_the_marker_chooses_the_deployment_and_both_stand_ins_share_the_account(rfwatch_server, rfwatch_platform):
    assert rfwatch_server.url.startswith("http://127.0.0.1:") and rfwatch_platform.url.startswith("http://127.0.0.1:")
    # serverless.roboflow.com's middleware answers a missing key with its own body (roboflow_server.py cites it).
    r = requests.post(f"{rfwatch_server.url}/colors/1", data=b"x", timeout=10)
    assert (r.status_code, r.json()) == (401, {"status": 401, "message": "Unauthorized api_key"})
    assert rfwatch_platform.catalog is rfwatch_server.catalog
    ok = requests.get(f"{rfwatch_platform.url}/", params={"api_key": VALID_KEY}, timeout=10)
    assert ok.json()["workspace"] == rfwatch_server.catalog.workspace


def test_without_the_marker_the_server_is_classify_roboflow_com(rfwatch_server):
    r = requests.post(f"{rfwatch_server.url}/colors/1", data=b"x", timeout=10)
    assert r.status_code == 401 and "message" in r.json() and "status" not in r.json()


def test_wait_for_returns_once_the_file_is_finished(rfwatch_server, rfwatch_daemon):
    """RunningDaemon.wait_for waits for a finished file, not for the journal's first row of it: with the API
    answering after 0.4 s the file is journaled (detected, then classified) well before it is sorted."""
    rfwatch_server.latency = 0.4
    daemon = rfwatch_daemon(rules=[{"name": "sort", "then": [{"move": "sorted/{class}/{name}"}]}])
    daemon.drop("slow.jpg", unique_jpeg((210, 40, 40), 7))
    done = daemon.wait_for("slow.jpg")
    assert (done.state, done.top) == ("done", "red")
    assert done.path == daemon.root / "sorted" / "red" / "slow.jpg" and done.path.exists()
