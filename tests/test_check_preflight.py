"""`rfwatch check` fails wherever `run` would (issue 20, item 3): each failure names the key and the fix."""

from __future__ import annotations

import os

import pytest
from helpers import run_cli, write_config


def _problems(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("rfwatch: ")]


def test_a_missing_key_fails_check_as_it_fails_run(tmp_path, server):
    cfg = write_config(tmp_path, server)
    check = run_cli("check", "-c", str(cfg), env={"ROBOFLOW_API_KEY": ""})
    assert check.returncode != 0 and "ok" not in check.stdout.splitlines()
    assert "rfwatch: roboflow.api_key: no Roboflow API key: set ROBOFLOW_API_KEY" in check.stderr
    run = run_cli("run", "-c", str(cfg), "--once", env={"ROBOFLOW_API_KEY": ""})
    assert run.returncode != 0


def test_a_missing_watch_folder_fails_check_and_run_says_so_plainly(tmp_path, server):
    cfg = write_config(tmp_path, server, watch=[{"path": str(tmp_path / "p")}])
    check = run_cli("check", "-c", str(cfg))
    fix = f"watch[0].path: the folder {tmp_path / 'p'} does not exist: create it (mkdir -p {tmp_path / 'p'})"
    assert check.returncode != 0 and f"rfwatch: {fix}" in check.stderr, check.stderr
    run = run_cli("run", "-c", str(cfg), "--once")
    assert run.returncode != 0 and fix in run.stderr
    assert "[Errno" not in run.stderr and f"'{tmp_path / 'p'}'" not in run.stderr  # not "[Errno 2] ...: '/p'"


def test_a_watch_folder_that_is_a_file_fails_check(tmp_path, server):
    (tmp_path / "afile").write_text("x")
    cfg = write_config(tmp_path, server, watch=[{"path": "afile"}])
    check = run_cli("check", "-c", str(cfg))
    assert check.returncode != 0 and f"watch[0].path: {tmp_path / 'afile'} is not a folder" in check.stderr


def test_metrics_without_prometheus_client_fails_check(tmp_path, server):
    """A Python where prometheus_client cannot be imported, as without the extra installed."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "sitecustomize.py").write_text("import sys\nsys.modules['prometheus_client'] = None\n")
    cfg = write_config(tmp_path, server, metrics={"listen": "127.0.0.1:0"})
    env = {"PYTHONPATH": f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    check = run_cli("check", "-c", str(cfg), env=env)
    assert check.returncode != 0
    assert "rfwatch: metrics.listen: needs prometheus-client: pip install 'rfwatch[metrics]'" in check.stderr
    run = run_cli("run", "-c", str(cfg), "--once", env=env)
    assert run.returncode != 0 and "prometheus-client" in run.stderr  # run stops on it too


def test_an_upload_project_the_key_cannot_reach_fails_check(tmp_path, server, platform):
    """The README's own `project: my-project` made every upload fail for good; the platform stand-in knows."""
    bad = write_config(tmp_path, server, review={"upload": {"project": "my-project"}})
    check = run_cli("check", "-c", str(bad))
    assert check.returncode != 0
    assert "rfwatch: review.upload.project: the key cannot reach project 'my-project'" in check.stderr
    good = write_config(tmp_path, server, review={"upload": {"project": "colors"}})
    ok = run_cli("check", "-c", str(good))
    assert ok.returncode == 0, ok.stderr


def test_a_model_the_key_cannot_reach_fails_check(tmp_path, server, platform):
    cfg = write_config(tmp_path, server, model="nosuch/1")
    check = run_cli("check", "-c", str(cfg))
    assert check.returncode != 0 and "rfwatch: roboflow.model: nosuch/1" in check.stderr


def test_an_unreachable_platform_is_a_warning_not_a_failure(tmp_path, server):
    cfg = write_config(tmp_path, server, review={"upload": {"project": "my-project"}})  # platform_url: port 9
    check = run_cli("check", "-c", str(cfg))
    assert check.returncode == 0, check.stderr
    assert "not checked: the platform API cannot be reached" in check.stdout


def test_a_review_token_missing_off_loopback_fails_check(tmp_path, server):
    cfg = write_config(tmp_path, server, review={"listen": "0.0.0.0:8765"})
    check = run_cli("check", "-c", str(cfg))
    assert check.returncode != 0 and "review.token: required when review.listen is not a loopback" in check.stderr


@pytest.mark.parametrize(
    "extra,key",
    [
        ({"state": "blocker/journal.db"}, "state: the journal's folder"),
        ({"failed": "blocker/failed"}, "failed: the destination"),
        ({"rules": [{"then": [{"move": "blocker/sorted/{class}/{name}"}]}]}, "rules[0].then[0].move: the destination"),
        ({"roots": {"archive": "blocker/archive"}}, "roots.archive: the destination"),
    ],
)
def test_unwritable_state_or_destination_roots_fail_check(tmp_path, server, extra, key):
    """A file where a folder must be created: no user can write there (root included, unlike chmod)."""
    (tmp_path / "blocker").write_text("a file, not a folder")
    cfg = write_config(tmp_path, server, **extra)
    check = run_cli("check", "-c", str(cfg))
    assert check.returncode != 0
    assert any(line.startswith(f"rfwatch: {key}") and "is not a folder" in line for line in _problems(check)), (
        check.stderr
    )


def test_check_passes_a_good_config_and_creates_nothing(tmp_path, server):
    cfg = write_config(tmp_path, server)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    check = run_cli("check", "-c", str(cfg))
    assert check.returncode == 0 and check.stdout.splitlines()[-1] == "ok", check.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
