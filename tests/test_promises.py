"""README promises that no other test defended (issue 18): each test names the promise and fails when it is broken.

Real processes and the stand-in servers on 127.0.0.1, as everywhere: `rfwatch run --once`, `rfwatch status`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import files_under, run_cli, unique_jpeg, write_config

RED, GREEN = (230, 10, 10), (10, 230, 10)


@pytest.fixture(autouse=True)
def _key(api_key):
    return api_key


def _names(folder: Path) -> set[str]:
    return {p.name for p in files_under(folder)} if folder.exists() else set()


def _counts(cfg: Path) -> dict[str, int]:
    result = run_cli("status", "-c", str(cfg), "--json")
    assert result.returncode == 0, result.stderr
    return {state: n for state, n in json.loads(result.stdout)["counts"].items() if n}


def test_a_file_an_action_moved_stays_there_when_a_later_action_fails(tmp_path, server):
    """Rules: "a file still where it was found goes to failed: (if set), one an earlier action already moved
    stays there; rfwatch retry runs the failed actions again"."""
    rules = [{"then": [{"move": "sorted/{class}/{name}"}, {"command": ["sh", "-c", "test -e ok"]}]}]
    cfg = write_config(tmp_path, server, rules=rules, failed="failed")
    data = unique_jpeg(RED, 1)
    (tmp_path / "inbox" / "a.jpg").write_bytes(data)
    once = run_cli("run", "-c", str(cfg), "--once")
    assert once.returncode == 1, once.stderr[-2000:]
    assert "failed: action command" in once.stderr
    assert _names(tmp_path / "sorted") == {"a.jpg"} and _names(tmp_path / "failed") == set()
    assert _counts(cfg) == {"failed": 1}
    (failed,) = json.loads(run_cli("status", "-c", str(cfg), "--json").stdout)["last_failed"]
    assert failed["path"] == str(tmp_path / "sorted" / "red" / "a.jpg"), "the journal lost where the file is"

    (tmp_path / "ok").touch()  # the cause fixed: retry redoes the failed step only, where the file is
    assert run_cli("retry", "-c", str(cfg), "--failed").returncode == 0
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert (tmp_path / "sorted" / "red" / "a.jpg").read_bytes() == data
    assert _counts(cfg) == {"done": 1} and _names(tmp_path / "failed") == set()


def test_a_file_that_fails_before_any_action_goes_to_failed_with_its_reason(tmp_path, server):
    """Keeps going: an image the API rejects goes to `failed:` with a log line naming the file and the reason;
    the file beside it is sorted as usual."""
    cfg = write_config(tmp_path, server, failed="failed", concurrency=1)
    server.fail_next(400, message="bad image")
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 2))
    once = run_cli("run", "-c", str(cfg), "--once")
    assert once.returncode == 1
    (line,) = [x for x in once.stderr.splitlines() if "a.jpg: failed: " in x]
    assert "rejected by the API" in line, line
    assert _names(tmp_path / "failed") == {"a.jpg"} and _counts(cfg) == {"failed": 1}
    (tmp_path / "inbox" / "b.jpg").write_bytes(unique_jpeg(GREEN, 3))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert _names(tmp_path / "sorted") == {"b.jpg"}


def test_identical_content_is_classified_once_across_runs(tmp_path, server):
    """The journal: identical content (same SHA-256 and model) reuses the earlier prediction instead of calling
    the API, in a later run too."""
    cfg = write_config(tmp_path, server)
    data = unique_jpeg(RED, 4)
    (tmp_path / "inbox" / "a.jpg").write_bytes(data)
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert len(server.inference_requests()) == 1
    (tmp_path / "inbox" / "b.jpg").write_bytes(data)  # the same photo under another name
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert len(server.inference_requests()) == 1, "identical content was sent to the API again"
    assert _names(tmp_path / "sorted") == {"a.jpg", "b.jpg"}
    history = run_cli("history", "-c", str(cfg), str(tmp_path / "inbox" / "b.jpg")).stdout
    assert "cached prediction for identical content" in history


def test_new_content_under_the_name_of_a_finished_file_is_processed(tmp_path, server):
    """A finished file is never processed again, but it is known by its content's size and mtime as well as its
    name: a new photo saved under the name of one left in place (unmatched) is taken."""
    rules = [{"name": "reds", "when": {"class": "red"}, "then": [{"move": "reds/{name}"}]}]
    cfg = write_config(tmp_path, server, rules=rules)
    photo = tmp_path / "inbox" / "a.jpg"
    photo.write_bytes(unique_jpeg(GREEN, 5))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert _counts(cfg) == {"unmatched": 1} and photo.exists()
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0  # the same file again: left alone
    assert len(server.inference_requests()) == 1
    red = unique_jpeg(RED, 6, size=(64, 48))  # another photo, saved over it
    photo.write_bytes(red)
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert (tmp_path / "reds" / "a.jpg").read_bytes() == red and not photo.exists()
    assert _counts(cfg) == {"unmatched": 1, "done": 1}
