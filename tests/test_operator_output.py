"""Logs a journal can filter and output an operator can trust (issue 20, item 6): `<N>` priorities on journald's
stream, RFC 3339 times with offsets, whole JSON in history, only documented fields in log lines and webhook
bodies, no traceback on a closed pipe, the verdict first on a bad key."""

from __future__ import annotations

import json
import os
import re
import subprocess

from helpers import needs_exiftool, rfwatch_cmd, run_cli, unique_jpeg, write_config
from roboflow_server import VALID_KEY

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def _run_with_stderr_in(path, *args, journal_stream: str | None):
    """rfwatch with stderr on ``path``; JOURNAL_STREAM as given ("match": that file's device:inode, as journald
    sets it for the stream it hands a unit)."""
    with open(path, "w") as err:
        st = os.fstat(err.fileno())
        env = dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY)
        if journal_stream is not None:
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}" if journal_stream == "match" else journal_stream
        subprocess.run(rfwatch_cmd(*args), stdout=subprocess.DEVNULL, stderr=err, env=env, timeout=120)
    return path.read_text().splitlines()


def test_on_journalds_stream_lines_carry_syslog_priorities(tmp_path, server):
    cfg = write_config(tmp_path, server)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg((200, 0, 0), 1))
    (tmp_path / "inbox" / "bad.jpg").write_text("not a picture")
    lines = _run_with_stderr_in(tmp_path / "err", "run", "-c", str(cfg), "--once", journal_stream="match")
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines
    assert any(line.startswith("<4>") and "bad.jpg" in line for line in lines), lines  # journalctl -p warning
    assert any(line.startswith("<6>") and "a.jpg" in line for line in lines), lines
    assert not any(re.search(r"\d\d:\d\d:\d\d", line.split(" ", 1)[0]) for line in lines)  # journald adds the time
    (tmp_path / "inbox" / "c.jpg").write_bytes(unique_jpeg((200, 0, 0), 2))
    args = ("run", "-c", str(cfg), "--once", "--log-format", "json")
    as_json = _run_with_stderr_in(tmp_path / "err2", *args, journal_stream="match")
    docs = [json.loads(line[3:]) for line in as_json if line.startswith("<6>")]
    assert any("c.jpg" in d["message"] for d in docs) and all("time" not in d for d in docs)


def test_a_journal_stream_that_is_not_stderr_gets_plain_lines_with_rfc3339_times(tmp_path, server):
    """A command run from a shell inside a unit inherits JOURNAL_STREAM while its stderr is the terminal."""
    cfg = write_config(tmp_path, server)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg((200, 0, 0), 3))
    lines = _run_with_stderr_in(tmp_path / "err", "run", "-c", str(cfg), "--once", journal_stream="8:1234")
    assert lines and not any(line.startswith("<") for line in lines)
    assert all(RFC3339.match(line.split(" ", 1)[0]) for line in lines), lines
    (tmp_path / "inbox" / "b.jpg").write_bytes(unique_jpeg((200, 0, 0), 4))
    as_json = run_cli("run", "-c", str(cfg), "--once", "--log-format", "json")
    assert all(RFC3339.match(json.loads(line)["time"]) for line in as_json.stderr.splitlines())


def test_status_and_history_print_rfc3339_times_with_offsets(tmp_path, server):
    cfg = write_config(tmp_path, server)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg((200, 0, 0), 5))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    env = {"TZ": "UTC-05:30"}  # POSIX: five and a half hours east of UTC
    report = json.loads(run_cli("status", "--json", "-c", str(cfg), env=env).stdout)
    (done,) = report["last_done"]
    assert RFC3339.match(done["at"]) and done["at"].endswith("+05:30"), done["at"]
    assert all(RFC3339.match(h["since"]) for h in report["holders"])
    text = run_cli("status", "-c", str(cfg), env=env).stdout
    assert re.search(r"^  \S+\+05:30  ", text, re.M), text
    history = run_cli("history", "-c", str(cfg), str(tmp_path / "sorted" / "red" / "a.jpg"), env=env).stdout
    stamps = re.findall(r"^  (\S+)  ", history, re.M)
    assert stamps and all(RFC3339.match(s) and s.endswith("+05:30") for s in stamps), history


@needs_exiftool
def test_history_keeps_json_whole_and_log_lines_and_webhooks_show_documented_fields(tmp_path, server, receiver):
    long_keywords = [f"{{class}}-{'k' * 90}-{n}" for n in range(8)]  # a result of well over 500 characters
    rules = [
        {
            "name": "tagged",
            "then": [
                {"tag": {"mode": "embed", "keywords": long_keywords}},
                {"move": "sorted/{class}/{name}"},
                {"webhook": receiver.url},
            ],
        }
    ]
    cfg = write_config(tmp_path, server, rules=rules)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg((200, 0, 0), 6))
    ran = run_cli("run", "-c", str(cfg), "--once")
    assert ran.returncode == 0, ran.stderr
    for internal in ("timeout", "embed_before", "iptc_digest_in_sync", "embed_added", "embed_sha256"):
        assert internal not in ran.stderr, ran.stderr
    (event,) = [json.loads(d.body) for d in receiver.ok()]
    tag_result = event["data"]["actions"][0]["result"]
    assert set(tag_result) == {"keywords", "embedded"}, tag_result
    history = run_cli("history", "-c", str(cfg), str(tmp_path / "sorted" / "red" / "a.jpg")).stdout
    done_lines = [
        line.split(" done: ", 1)[1].rsplit("  (on ", 1)[0] for line in history.splitlines() if " done: " in line
    ]
    assert len(done_lines) == 3, history
    for text in done_lines:
        json.loads(text)  # whole JSON: raises if cut in the middle of a string


def test_status_into_a_pipe_closed_early_ends_without_a_traceback(tmp_path, server):
    """`rfwatch status | head -2`: the reader is gone before rfwatch writes (a real pipe, its read end closed)."""
    cfg = write_config(tmp_path, server)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg((200, 0, 0), 7))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            rfwatch_cmd("status", "-c", str(cfg)),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY),
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode != 0  # like any program that could not write its output (head's SIGPIPE: 141)


def test_a_bad_key_message_leads_with_the_verdict(tmp_path, server, platform):
    a = tmp_path / "a.jpg"
    a.write_bytes(unique_jpeg((200, 0, 0), 8))
    env = {"ROBOFLOW_PLATFORM_URL": platform.url, "ROBOFLOW_API_KEY": "wrong-key"}
    result = run_cli("classify", "--api-url", server.url, "--model", "colors/1", str(a), env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(f"rfwatch: {a}: the API key is not valid"), result.stderr
    assert "HTTP 403" in result.stderr  # the server's own words follow
