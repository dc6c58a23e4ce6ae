"""The public plugin surface (issue 20, item 9): every hook reaches a plugin that implements it, a misspelt hook name
fails loudly, a plugin reads its own settings through ``plugin_config``, actions are typed by Protocols, names that
left the module still work with a warning, and a plugin's crash points are its own."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from helpers import run_cli, unique_jpeg, write_config

import rfwatch
import rfwatch.plugin
from rfwatch.config import config_from_dict
from rfwatch.host.manager import PluginHost

RECORDER = """
import json
from pathlib import Path

from rfwatch.plugin import hookimpl, plugin_config

LOG = Path(__file__).with_name("calls.jsonl")


def note(*what):
    with open(LOG, "a") as fh:
        fh.write(json.dumps(what) + "\\n")


@hookimpl
def startup(config):
    mine = plugin_config(config, "recorder")
    note("startup", [use.options for use in mine.uses("move")], mine.state_dir.is_dir())


@hookimpl
def file_processed(ctx):
    note("processed", ctx.source.name)


@hookimpl
def file_failed(path, error):
    note("failed", str(path), error)


@hookimpl
def shutdown():
    note("shutdown")
"""


def test_startup_file_failed_and_shutdown_reach_a_plugin(tmp_path, server, api_key):
    """A run calls startup (with the config: the plugin reads its own settings) before any file, file_failed for
    a file that is not an image (at the path it was moved to), and shutdown last."""
    (tmp_path / "recorder.py").write_text(RECORDER)
    cfg = write_config(tmp_path, server, plugins=["recorder.py"], failed="failed")
    (tmp_path / "inbox" / "good.jpg").write_bytes(unique_jpeg((230, 10, 10), 1))
    (tmp_path / "inbox" / "broken.jpg").write_bytes(b"not an image at all")
    result = run_cli("run", "--once", "-c", str(cfg))
    assert result.returncode == 1, result.stderr  # one input failed
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert calls[0] == ["startup", ["sorted/{class}/{name}"], True]
    assert calls[-1] == ["shutdown"]
    assert ["processed", "good.jpg"] in calls
    failed = [c for c in calls if c[0] == "failed"]
    assert len(failed) == 1
    assert failed[0][1] == str(tmp_path / "failed" / "broken.jpg")
    assert (tmp_path / "failed" / "broken.jpg").exists()
    assert "image" in failed[0][2].lower(), failed[0][2]  # why: not an image
    assert [c[0] for c in calls].count("startup") == 1 and [c[0] for c in calls].count("shutdown") == 1


class _RaisingWrapper:
    @rfwatch.hookimpl(wrapper=True)
    def file_processed(self, ctx):
        yield
        raise RuntimeError("the wrapper broke")


def test_a_misspelt_hook_name_fails_loudly_and_a_failing_wrapper_is_still_contained(caplog):
    host = PluginHost.load(entry_points=False)
    with pytest.raises(AttributeError, match="no hook 'file_proccessed'"):
        host.hook.file_proccessed(ctx=None)
    with pytest.raises(AttributeError, match="no hook 'statup'"):
        host.call("statup", config=None)
    host.pm.register(_RaisingWrapper(), name="raising-wrapper")
    with caplog.at_level(logging.ERROR):
        assert host.hook.file_processed(ctx=None) is None
    assert "a hook wrapper failed in file_processed" in caplog.text


def test_plugin_config_gives_a_plugin_the_uses_of_its_actions_and_a_folder(tmp_path):
    config = config_from_dict(
        {
            "state": "state/journal.db",
            "rules": [
                {"name": "a", "then": [{"move": "x"}, {"webhook": "http://127.0.0.1:9/one"}]},
                {"name": "b", "then": [{"webhook": {"url": "http://127.0.0.1:9/two", "timeout": 5}}]},
            ],
        },
        tmp_path,
    )
    mine = rfwatch.plugin.plugin_config(config, "webhook")
    uses = mine.uses("webhook")
    assert [(u.rule, u.options, u.key) for u in uses] == [
        ("a", "http://127.0.0.1:9/one", "rules[0].then[1].webhook"),
        ("b", {"url": "http://127.0.0.1:9/two", "timeout": 5}, "rules[1].then[0].webhook"),
    ]
    assert mine.uses("annotate") == []
    assert mine.resolve("thumbs") == tmp_path / "thumbs"
    assert mine.state_dir == tmp_path / "state" / "plugins" / "webhook" and mine.state_dir.is_dir()
    assert rfwatch.plugin.state_dir(config, "webhook") == mine.state_dir


def test_actions_are_typed_by_protocols():
    from rfwatch.default_plugins.webhook import WebhookAction

    webhook = WebhookAction("http://127.0.0.1:9/hook")
    assert isinstance(webhook, rfwatch.plugin.Action)
    assert isinstance(webhook, rfwatch.plugin.Undoable)
    assert isinstance(webhook, rfwatch.plugin.Describable)

    def plain(ctx):
        return {"done": True}

    assert isinstance(plain, rfwatch.plugin.Action)
    assert not isinstance(plain, rfwatch.plugin.Undoable)


def test_names_that_left_the_public_module_still_work_with_a_warning():
    from rfwatch.config import Config
    from rfwatch.roboflow import platform

    with pytest.warns(DeprecationWarning, match="plugin_config"):
        assert rfwatch.plugin.Config is Config
    with pytest.warns(DeprecationWarning, match="PlatformClient"):
        assert rfwatch.plugin.platform is platform
    assert "Config" not in rfwatch.plugin.__all__ and "platform" not in rfwatch.plugin.__all__
    assert rfwatch.plugin.PlatformClient is platform.PlatformClient
    with pytest.raises(AttributeError):
        rfwatch.plugin.no_such_name  # noqa: B018


def test_a_crash_point_nobody_declared_is_refused_once_the_plugins_loaded(tmp_path, server, api_key):
    """The built-ins declare their crash points (core lists none of theirs); a typo still fails loudly."""
    import rfwatch.default_plugins.tag  # noqa: F401 - declares its crash points as it loads
    from rfwatch.crashpoints import POINTS

    assert "tag.before_embed" in POINTS
    cfg = write_config(tmp_path, server)
    result = run_cli("run", "--once", "-c", str(cfg), env={"RFWATCH_CRASH_AT": "tag.before_embedd"})
    assert result.returncode != 0
    assert "unknown crash point 'tag.before_embedd'" in result.stderr
    assert Path(tmp_path / "inbox").is_dir()
