"""Every way a config, a command or an action can be wrong says what and where."""

from __future__ import annotations

import pytest
from helpers import run_cli, unique_jpeg, write_config


@pytest.fixture(autouse=True)
def _key(api_key):
    return api_key


@pytest.mark.parametrize(
    "action,message",
    [
        ({"webhook": {"secret": "whsec_AAAA"}}, "webhook: url: expected an http:// or https:// URL"),
        (
            {"webhook": {"url": "https://x", "secret": "whsec_!!!"}},
            "webhook: secret: expected whsec_ followed by base64",
        ),
        ({"webhook": {"url": "https://x", "secret": "whsec_QUFBQQ=="}}, "webhook: secret: too short"),
        ({"webhook": {"url": "https://x", "headers": ["a"]}}, "webhook: headers: expected a mapping"),
        (
            {"webhook": {"url": "https://x", "timeout": 0}},
            "webhook: timeout: expected a positive number of seconds, at most 120, got 0",
        ),
        (
            {"webhook": {"url": "https://x", "timeout": 900}},  # it would outlast the outbox's lease
            "webhook: timeout: expected a positive number of seconds, at most 120, got 900",
        ),
        ({"log": {"path": "x.log", "format": "xml"}}, "log: format: expected jsonl or csv, got 'xml'"),
        ({"log": {"path": "{klass}.log"}}, "log: path: unknown placeholder {klass}"),
        ({"command": []}, "command: expected a non-empty list of arguments (no shell is used)"),
        ({"command": {"args": ["true"], "timeout": "soon"}}, "command: timeout: expected a positive number"),
        ({"annotate": {"to": "a/{name}", "on_conflict": "clobber"}}, "annotate: on_conflict: expected one of"),
        ({"copy": None}, 'copy: to: expected a template such as "sorted/{class}/{name}"'),
        ({"tag": {"hierarchy": "|"}}, "tag: hierarchy: expected a parent keyword"),
    ],
)
def test_bad_action_options_name_the_key(tmp_path, server, action, message):
    cfg = write_config(tmp_path, server, rules=[{"then": [action]}])
    result = run_cli("check", "-c", str(cfg))
    assert result.returncode == 2
    assert f"rules[0].then[0].{message}" in result.stderr


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"metrics": {"listen": "9464"}}, 'metrics.listen: expected "host:port"'),
        ({"plugins": ["missing_plugin.py"]}, "missing_plugin.py: no such file"),
        ({"plugins": ["no_such_module_xyz"]}, "plugins: no_such_module_xyz: cannot import"),
        ({"log_format": "xml"}, 'log_format: expected text or json, got "xml"'),
    ],
)
def test_bad_top_level_keys(tmp_path, server, extra, message):
    cfg = write_config(tmp_path, server, **extra)
    result = run_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_plugin_that_fails_to_import_or_clashes(tmp_path, server):
    (tmp_path / "broken.py").write_text("raise RuntimeError('half written')\n")
    cfg = write_config(tmp_path, server, plugins=["broken.py"])
    result = run_cli("check", "-c", str(cfg))
    assert (
        result.returncode == 2
        and "plugins: " in result.stderr
        and "failed to load: RuntimeError('half written')" in result.stderr
    )
    (tmp_path / "clash.py").write_text(
        "import rfwatch\n@rfwatch.hookimpl\ndef register_actions(register):\n    register('move', lambda o: print)\n"
    )
    cfg = write_config(tmp_path, server, plugins=["clash.py"])
    result = run_cli("check", "-c", str(cfg))
    assert result.returncode == 2 and "action 'move' is registered by both" in result.stderr


def test_missing_watched_folder_and_bad_files(tmp_path, server):
    cfg = write_config(tmp_path, server, watch=[{"path": "nowhere"}])
    result = run_cli("run", "-c", str(cfg))
    assert (
        result.returncode == 1 and f"watch[0].path: the folder {tmp_path / 'nowhere'} does not exist" in result.stderr
    )
    (tmp_path / "bad.yaml").write_text("roboflow: [unclosed\n")
    result = run_cli("check", "-c", str(tmp_path / "bad.yaml"))
    assert result.returncode == 2 and "bad.yaml: not valid YAML" in result.stderr
    result = run_cli("check", "-c", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2 and "absent.yaml: cannot read config file: No such file or directory" in result.stderr


def test_journal_commands_report_what_they_cannot_find(tmp_path, server):
    cfg = write_config(tmp_path, server)
    result = run_cli("status", "-c", str(cfg))
    assert result.returncode == 2 and "state: no journal at" in result.stderr
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg((200, 0, 0), 1))
    run_cli("run", "-c", str(cfg), "--once")
    retry = run_cli("retry", "-c", str(cfg), str(tmp_path / "inbox" / "nothing.jpg"))
    assert retry.returncode == 1 and "1 path(s) have no failed or undone entry in the journal" in retry.stderr
    history = run_cli("history", "-c", str(cfg), str(tmp_path / "inbox" / "nothing.jpg"))
    assert history.returncode == 1 and "no journal entry for" in history.stderr
    prune = run_cli("prune", "-c", str(cfg), "--older-than", "-1")
    assert prune.returncode == 2 and "--older-than: expected a number of days >= 0, got -1" in prune.stderr


def test_classify_save_with_several_inputs_needs_a_folder(tmp_path, server):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(unique_jpeg((1, 2, 3), 1))
    b.write_bytes(unique_jpeg((1, 2, 3), 2))
    result = run_cli(
        "classify", "--api-url", server.url, "--model", "colors/1", "--save", str(tmp_path / "x.jpg"), str(a), str(b)
    )
    assert result.returncode == 2 and "--save: with several inputs, give a folder" in result.stderr
    folder = run_cli(
        "classify",
        "--api-url",
        server.url,
        "--model",
        "colors/1",
        "--save",
        str(tmp_path / "out") + "/",
        str(a),
        str(b),
    )
    assert folder.returncode == 0 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.jpg", "b.jpg"]


def test_tag_without_exiftool_fails_at_load(monkeypatch):
    import shutil

    from rfwatch.default_plugins.tag import TagAction

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="needs exiftool: apt-get install libimage-exiftool-perl"):
        TagAction({})


def test_a_hanging_or_missing_command(tmp_path, server):
    for args, message in (
        (["sleep", "5"], "sleep timed out after 0.5s"),
        (["/nonexistent/notify"], "cannot run /nonexistent/notify: No such file or directory"),
    ):
        rules = [{"name": "r", "then": [{"command": {"args": args, "timeout": 0.5}}]}]
        cfg = write_config(tmp_path, server, rules=rules)
        (tmp_path / "inbox" / f"{len(message)}.jpg").write_bytes(unique_jpeg((200, 0, 0), len(message)))
        result = run_cli("run", "-c", str(cfg), "--once")
        assert result.returncode == 1 and message in result.stderr, result.stderr
