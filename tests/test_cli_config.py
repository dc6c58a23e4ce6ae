"""`rfwatch classify` and `rfwatch check` from the shell, and config validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli, unique_jpeg, write_config
from PIL import Image
from roboflow_server import VALID_KEY

from rfwatch.config import ConfigError, config_from_dict, load_config


def test_classify_files_and_urls_prints_one_documented_object_each(tmp_path, server):
    a = tmp_path / "a.jpg"
    a.write_bytes(unique_jpeg((10, 200, 10), 1, size=(300, 200)))
    server.files["b.jpg"] = unique_jpeg((10, 10, 200), 2)
    url = f"{server.url}/files/b.jpg"
    result = run_cli("classify", "--api-url", server.url, "--model", "colors/1", str(a), url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert first["top"] == "green" and first["image"] == {"width": 300, "height": 200}
    assert first["prediction_type"] == "ClassificationModel" and first["image_path"] == str(a)
    assert second["top"] == "blue" and second["image_path"] == url


def test_classify_reports_each_failure_and_exits_1(tmp_path, server):
    bad = tmp_path / "bad.jpg"
    bad.write_text("text")
    good = tmp_path / "good.jpg"
    good.write_bytes(unique_jpeg((200, 0, 0), 3))
    result = run_cli(
        "classify", "--api-url", server.url, "--model", "colors/1", str(bad), str(good), str(tmp_path / "missing.jpg")
    )
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 1
    errors = result.stderr.strip().splitlines()
    assert any(str(bad) in e and "not a recognised image format" in e for e in errors)
    # the path once, and what is wrong with it
    assert any(e == f"rfwatch: {tmp_path / 'missing.jpg'}: no such file" for e in errors), errors


def test_classify_with_a_bad_key_never_shows_it(tmp_path, server):
    good = tmp_path / "good.jpg"
    good.write_bytes(unique_jpeg((200, 0, 0), 4))
    secret = "rf_secret_value_that_must_not_leak"
    result = run_cli(
        "classify", "-vv", "--api-url", server.url, "--model", "colors/1", str(good), env={"ROBOFLOW_API_KEY": secret}
    )
    assert result.returncode == 1 and "HTTP 403" in result.stderr  # classify.roboflow.com refuses a bad key so
    assert secret not in result.stdout + result.stderr
    assert "api_key=***" in result.stderr  # the DEBUG URL line was there, masked


def test_classify_save_writes_an_annotated_image(tmp_path, server):
    src = tmp_path / "a.jpg"
    src.write_bytes(unique_jpeg((200, 0, 0), 5, size=(320, 240)))
    before = src.read_bytes()
    out = tmp_path / "out" / "labelled.png"
    result = run_cli("classify", "--api-url", server.url, "--model", "colors/1", "--save", str(out), str(src))
    assert result.returncode == 0, result.stderr
    with Image.open(out) as img:
        assert img.size == (320, 240) and img.format == "PNG"
        assert img.convert("RGB").getpixel((1, 1)) == (0, 0, 0)  # the label's banner
    assert src.read_bytes() == before


def test_usage_errors_exit_2(tmp_path, server):
    img = tmp_path / "a.jpg"
    img.write_bytes(unique_jpeg((1, 2, 3), 6))
    no_key = run_cli("classify", "--api-url", server.url, "--model", "colors/1", str(img), env={"ROBOFLOW_API_KEY": ""})
    assert no_key.returncode == 2 and "ROBOFLOW_API_KEY" in no_key.stderr
    no_model = run_cli("classify", "--api-url", server.url, str(img))
    assert no_model.returncode == 2 and "model" in no_model.stderr
    bad_model = run_cli("classify", "--model", "nonsense", str(img))
    assert bad_model.returncode == 2 and "project/version" in bad_model.stderr


def test_python_dash_m_and_key_file(tmp_path, server):
    key_file = tmp_path / "key"
    key_file.write_text(VALID_KEY + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"roboflow:\n  api_key_file: key\n  model: ws/colors/1\n  api_url: {server.url}\n")
    img = tmp_path / "a.jpg"
    img.write_bytes(unique_jpeg((1, 2, 200), 7))
    result = run_cli("classify", "-c", str(cfg), str(img), env={"ROBOFLOW_API_KEY": ""})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["top"] == "blue"


@pytest.mark.parametrize(
    "doc,message",
    [
        ({"roboflow": {"max_size": "big"}}, 'roboflow.max_size: expected a positive integer, got "big"'),
        (
            {"roboflow": {"confidence": 2}},
            "roboflow.confidence: expected a fraction (0 < x < 1) such as 0.5, got 2 (the server reads 1 or more",
        ),
        (
            {"roboflow": {"confidence": 1.0}},
            "roboflow.confidence: expected a fraction (0 < x < 1) such as 0.5, got 1.0",
        ),
        ({"roboflow": {"confidence": 0}}, "roboflow.confidence: expected a fraction (0 < x < 1) such as 0.5, got 0"),
        (
            {"roboflow": {"multi_label_threshold": 1.5}},
            "roboflow.multi_label_threshold: expected a fraction (0 < x <= 1)",
        ),
        ({"roboflow": {"active_learning": "yes"}}, "roboflow.active_learning: expected true or false"),
        (
            {"roboflow": {"platform_url": "api.roboflow.com"}},
            "roboflow.platform_url: expected an http:// or https:// URL",
        ),
        ({"review": {"listen": "0.0.0.0:8765"}}, "review.token: required when review.listen is not a loopback address"),
        ({"review": {"listen": "8765"}}, "review.listen: expected host:port such as 127.0.0.1:8765"),
        ({"review": {"upload": {"split": "dev"}}}, "review.upload.split: expected train, valid or test"),
        ({"roboflow": {"model": "x"}}, "roboflow.model: expected 'project/version'"),
        ({"roboflow": {"api_url": "ftp://x"}}, "roboflow.api_url: expected an http:// or https:// URL"),
        ({"roboflow": {"modle": "a/1"}}, "roboflow.modle: unknown key"),
        ({"concurrency": 0}, "concurrency: expected an integer between 1 and 64, got 0"),
        ({"watch": [{"recursive": True}]}, "watch[0].path: expected the folder to watch"),
        ({"watch": [{"path": "x", "settle": -1}]}, "watch[0].settle: expected a number >= 0, got -1"),
        (
            {"rules": [{"when": {"min_confidence": 0.9, "max_confidence": 0.1}, "then": ["x"]}]},
            "rules[0].when: min_confidence 0.9 is above max_confidence 0.1",
        ),
        ({"rules": [{"then": []}]}, "rules[0].then: expected a list of actions"),
        (
            {"roboflow": {"api_key": "${RFWATCH_SURELY_UNSET}"}},
            "roboflow.api_key: environment variable RFWATCH_SURELY_UNSET is not set",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path, doc, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc, tmp_path)
    assert message in str(info.value)


def test_env_expansion_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("INBOX", "drop")
    cfg = config_from_dict(
        {"watch": ["${INBOX}", {"path": "/abs"}], "failed": "${NOPE:-bad}", "roboflow": {"model": "${M:-p/2}"}},
        tmp_path,
    )
    assert [w.path for w in cfg.watch] == [tmp_path / "drop", Path("/abs")]
    assert cfg.failed == tmp_path / "bad" and cfg.roboflow.model == "p/2"


@pytest.mark.parametrize(
    "rules,message",
    [
        (
            [{"then": [{"mvoe": "x"}]}],
            "rules[0].then[0].mvoe: unknown action 'mvoe' (known: annotate, command, copy, log, move",
        ),
        ([{"then": [{"move": "sorted/{klass}/{name}"}]}], "rules[0].then[0].move: to: unknown placeholder {klass}"),
        ([{"then": [{"copy": {"to": "x/{name}", "on_conflict": "clobber"}}]}], "on_conflict: expected one of"),
        ([{"then": [{"move": {"dest": "x"}}]}], "rules[0].then[0].move: unknown option 'dest'"),
    ],
)
def test_rule_errors_at_load_name_the_key(tmp_path, server, rules, message):
    cfg = write_config(tmp_path, server, rules=rules)
    result = run_cli("check", "-c", str(cfg))
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    "hook,message",
    [
        ({"url": "http://127.0.0.1:9/h", "secret": ["whsec_c2VrcmV0LXZhbHVlLTEyMzQ1Njc4OTA="]}, "secret: expected"),
        (
            {
                "url": "http://127.0.0.1:9/h",
                "headers": {"Authorization": ["Bearer whsec_c2VrcmV0LXZhbHVlLTEyMzQ1Njc4OTA="]},
            },
            "headers: expected a mapping of names to strings, got a mapping of Authorization: <list>",
        ),
    ],
)
def test_a_bad_secret_option_is_named_never_shown(tmp_path, server, hook, message):
    cfg = write_config(tmp_path, server, rules=[{"then": [{"webhook": hook}]}])
    result = run_cli("check", "-c", str(cfg))
    assert result.returncode == 2 and "rules[0].then[0].webhook: " in result.stderr and message in result.stderr
    assert "c2VrcmV0" not in result.stdout + result.stderr


@pytest.mark.parametrize("where", ["roboflow.api_key", "review.token"])
def test_a_key_or_token_of_the_wrong_type_is_named_never_shown(tmp_path, server, where):
    """A YAML slip (a list where a string goes) must not print the key or token in the error."""
    import yaml

    cfg = write_config(tmp_path, server)
    doc = yaml.safe_load(cfg.read_text())
    section, key = where.split(".")
    doc.setdefault(section, {})[key] = ["c2VrcmV0LXZhbHVlLTEyMzQ1Njc4OTA"]
    cfg.write_text(yaml.safe_dump(doc))
    result = run_cli("check", "-c", str(cfg))
    assert result.returncode == 2 and f"{where}: expected a non-empty string, got a list" in result.stderr
    assert "c2VrcmV0" not in result.stdout + result.stderr


def test_check_summarises_a_good_config(tmp_path, server):
    cfg = write_config(tmp_path, server)
    result = run_cli("check", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "model: colors/1" in result.stdout and "rule 'sort': always -> move" in result.stdout


def test_example_config_loads_and_checks(monkeypatch):
    repo = Path(__file__).resolve().parents[1]
    result = run_cli("check", "-c", str(repo / "config.example.yaml"), env={"ROBOFLOW_API_KEY": "k"})
    assert result.returncode == 0, result.stderr
    monkeypatch.setenv("ROBOFLOW_API_KEY", "k")
    cfg = load_config(repo / "config.example.yaml")
    assert cfg.watch[0].path == repo / "inbox" and cfg.failed == repo / "failed"


def test_the_example_config_runs_as_it_is_from_a_copy_of_the_repository(tmp_path, server):
    """The README's quick start: set the key and the model, run config.example.yaml, drop images into inbox/."""
    import shutil

    repo = Path(__file__).resolve().parents[1]
    shutil.copyfile(repo / "config.example.yaml", tmp_path / "config.example.yaml")
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg((200, 0, 0), 1))
    (tmp_path / "inbox" / "b.jpg").write_text("not a picture")
    env = {"ROBOFLOW_MODEL": "colors/1", "ROBOFLOW_API_URL": server.url, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    result = run_cli("run", "-c", "config.example.yaml", "--once", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # b.jpg failed
    assert (tmp_path / "sorted" / "red" / "a.jpg").exists()
    assert (tmp_path / "failed" / "b.jpg").exists()
    assert (tmp_path / "xdg" / "rfwatch" / "journal.db").exists()


def test_journal_commands_need_no_key_and_run_says_what_is_missing(tmp_path, server):
    import shutil

    repo = Path(__file__).resolve().parents[1]
    shutil.copyfile(repo / "config.example.yaml", tmp_path / "c.yaml")
    env = {"ROBOFLOW_API_KEY": "", "XDG_STATE_HOME": str(tmp_path / "xdg")}
    (tmp_path / "inbox").mkdir()
    run = run_cli("run", "-c", str(tmp_path / "c.yaml"), "--once", env=env)
    assert run.returncode == 2 and "roboflow.api_key: no Roboflow API key: set ROBOFLOW_API_KEY" in run.stderr
    status = run_cli("status", "-c", str(tmp_path / "c.yaml"), env=env)
    assert "no journal at" in status.stderr  # about the journal, not the key


def test_a_mistyped_command_is_told_every_command():
    """Only a known command gets its parser alone (rfwatch.cli.build_parser): a mistake is answered by the whole
    parser, which names the commands."""
    result = run_cli("statu", "-c", "x.yaml")
    assert result.returncode == 2
    assert "invalid choice: 'statu'" in result.stderr
    assert "'status'" in result.stderr and "'history'" in result.stderr and "'run'" in result.stderr
    # a known command's own usage names its own options only
    assert "usage: rfwatch history [-h] -c CONFIG" in run_cli("history").stderr


@pytest.mark.parametrize("columns", [44, 200])
def test_help_fits_the_terminal_it_is_printed_on(columns, monkeypatch, capsys):
    """Help is wrapped to the terminal's width (what $COLUMNS says, else the terminal), though the width is read
    only when help is printed (rfwatch.cli._HelpFormatter): a narrow terminal gets no line wider than itself, a
    wide one keeps an option's help on the option's line."""
    from rfwatch.cli import main

    monkeypatch.setenv("COLUMNS", str(columns))
    for argv in (["status", "--help"], ["--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
        lines = capsys.readouterr().out.splitlines()
        assert max(len(line) for line in lines) <= columns - 2, lines
        joined = "\n".join(lines)
        if argv[0] == "status":  # the option's help is on its line when the terminal is wide, wrapped when not
            one_line = any("--plugins" in line and "(slower)" in line for line in lines)
            assert one_line == (columns == 200), lines
        if columns == 44 and argv[0] == "--help":
            assert "classify" in joined and "history" in joined  # every command still listed, wrapped
