"""Secrets from files (review.token_file, a webhook's secret_file and headers_file), and commands that only read
the journal working without the secrets (issue 20, item 4)."""

from __future__ import annotations

import base64
import json

import yaml
from helpers import run_cli, unique_jpeg, write_config

from rfwatch.config import ConfigError, config_from_dict, load_config

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def _webhook_rule(receiver, **options):
    return [
        {"name": "notify", "then": [{"move": "sorted/{class}/{name}"}, {"webhook": {"url": receiver.url, **options}}]}
    ]


def test_journal_commands_work_without_the_secret_and_say_which_action_would_not_run(tmp_path, server, receiver):
    """The README's `sudo -u rfwatch rfwatch status`: the webhook secret's variable is the service's, not the user's."""
    cfg = write_config(tmp_path, server, rules=_webhook_rule(receiver, secret="${RFWATCH_TEST_WEBHOOK_SECRET}"))
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg((200, 0, 0), 1))
    ran = run_cli("run", "-c", str(cfg), "--once", env={"RFWATCH_TEST_WEBHOOK_SECRET": SECRET})
    assert ran.returncode == 0, ran.stderr
    moved = tmp_path / "sorted" / "red" / "a.jpg"
    for args in (
        ("status", "-c", str(cfg)),
        ("status", "--json", "-c", str(cfg)),
        ("history", "-c", str(cfg), str(moved)),
        ("undo", "--dry-run", "-c", str(cfg)),
    ):
        result = run_cli(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert (
            "rules[0].then[1].webhook.secret: environment variable RFWATCH_TEST_WEBHOOK_SECRET is not set: "
            "the webhook action of rule 'notify' would not run" in result.stderr
        ), result.stderr
    assert json.loads(run_cli("status", "--json", "-c", str(cfg)).stdout)["counts"]["done"] == 1
    assert moved.exists()  # undo --dry-run changed nothing
    # What changes things still needs it: run, and a real undo (it sends file.undone, signed).
    for args in (("run", "-c", str(cfg), "--once"), ("undo", "-c", str(cfg))):
        result = run_cli(*args)
        assert result.returncode == 2 and "environment variable RFWATCH_TEST_WEBHOOK_SECRET is not set" in result.stderr


def test_a_review_token_missing_off_loopback_does_not_stop_status(tmp_path, server):
    cfg = write_config(tmp_path, server, review={"listen": "0.0.0.0:8765", "token_file": "absent-token"})
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 2  # run needs it
    (tmp_path / "inbox").mkdir(exist_ok=True)
    (tmp_path / "state").mkdir()
    doc = yaml.safe_load(cfg.read_text())
    doc["review"] = {}
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(doc))
    assert run_cli("run", "-c", str(tmp_path / "plain.yaml"), "--once").returncode == 0  # a journal to read
    status = run_cli("status", "-c", str(cfg))
    assert status.returncode == 0, status.stderr
    assert "review.token_file: cannot read" in status.stderr and "the review page would not start" in status.stderr


def test_secret_and_headers_files_sign_and_go_with_each_webhook(tmp_path, server, receiver):
    from standardwebhooks import Webhook

    (tmp_path / "secret").write_text(SECRET + "\n")  # as `echo ... > file` writes it: one newline, stripped
    (tmp_path / "headers").write_text("# for the receiver\nAuthorization: Bearer header-file-value\n\nX-Team: ops\n")
    cfg = write_config(tmp_path, server, rules=_webhook_rule(receiver, secret_file="secret", headers_file="headers"))
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg((200, 0, 0), 2))
    result = run_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 0, result.stderr
    (request,) = receiver.ok()
    assert request.headers["authorization"] == "Bearer header-file-value" and request.headers["x-team"] == "ops"
    Webhook(SECRET).verify(request.body, dict(request.headers))  # raises if the signature is not the file's secret
    assert "header-file-value" not in result.stderr


def test_secret_files_are_read_through_the_credentials_directory(tmp_path, monkeypatch):
    """systemd's LoadCredential=: the unit sets $CREDENTIALS_DIRECTORY; the config names files inside it."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "review-token").write_text("a-review-token-of-32-characters!\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = config_from_dict(
        {"review": {"listen": "0.0.0.0:8765", "token_file": "${CREDENTIALS_DIRECTORY}/review-token"}}, tmp_path
    )
    assert cfg.review.token == "a-review-token-of-32-characters!"


def test_a_secret_file_changed_is_read_again_on_reload(tmp_path):
    """A SIGHUP reload loads the config again: the file's new content is used (Daemon.reload calls load_config)."""
    (tmp_path / "token").write_text("first-token-0123456789")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"review": {"listen": "0.0.0.0:1", "token_file": "token"}}))
    assert load_config(tmp_path / "c.yaml").review.token == "first-token-0123456789"
    (tmp_path / "token").write_text("second-token-0123456789\n")
    assert load_config(tmp_path / "c.yaml").review.token == "second-token-0123456789"


def test_an_empty_token_gets_a_plain_message(tmp_path, server, monkeypatch):
    monkeypatch.setenv("RFWATCH_TEST_EMPTY", "")
    cfg = write_config(tmp_path, server, review={"listen": "127.0.0.1:8765", "token": "${RFWATCH_TEST_EMPTY}"})
    result = run_cli("check", "-c", str(cfg), env={"RFWATCH_TEST_EMPTY": ""})
    assert result.returncode == 2
    assert "review.token: is empty" in result.stderr and "got a str" not in result.stderr
    (tmp_path / "empty").write_text("\n")
    try:
        config_from_dict({"review": {"token_file": str(tmp_path / "empty")}}, tmp_path)
    except ConfigError as exc:
        assert f"review.token_file: {tmp_path / 'empty'} is empty" in str(exc)
    else:
        raise AssertionError("an empty token file was taken")


def test_a_bad_headers_file_is_named_never_shown(tmp_path, server, receiver):
    (tmp_path / "headers").write_text("Bearer c2VrcmV0LXZhbHVl\n")
    cfg = write_config(tmp_path, server, rules=_webhook_rule(receiver, headers_file="headers"))
    result = run_cli("check", "-c", str(cfg))
    assert result.returncode == 2 and "rules[0].then[1].webhook.headers_file: " in result.stderr
    assert "line 1: expected a header line" in result.stderr and "c2VrcmV0" not in result.stderr


def test_a_new_webhook_secret_in_its_file_signs_after_a_reload(tmp_path, server, receiver, api_key):
    """`systemctl reload rfwatch` (SIGHUP: Daemon.reload) reads the secret file again; the next event uses it."""
    from helpers import DaemonThread, wait_for
    from standardwebhooks import Webhook

    second = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()
    (tmp_path / "secret").write_text(SECRET + "\n")
    cfg = write_config(tmp_path, server, rules=_webhook_rule(receiver, secret_file="secret"))
    with DaemonThread(cfg) as d:
        (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg((200, 0, 0), 3))
        wait_for(lambda: len(receiver.ok()) == 1, what="the first event")
        (tmp_path / "secret").write_text(second + "\n")
        assert d.daemon.reload()
        (tmp_path / "inbox" / "b.jpg").write_bytes(unique_jpeg((200, 0, 0), 4))
        wait_for(lambda: len(receiver.ok()) == 2, what="the second event")
    first, after = receiver.ok()
    Webhook(SECRET).verify(first.body, dict(first.headers))
    Webhook(second).verify(after.body, dict(after.headers))  # raises if still signed with the old secret
