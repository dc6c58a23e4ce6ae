"""Metrics an operator can alert on from the first scrape (issue 20, item 10): the review backlog, and pending and
failed deliveries per plugin (uploads are the review plugin's deliveries), every series present at 0."""

from __future__ import annotations

import urllib.request

import pytest
from helpers import DaemonThread, unique_jpeg, wait_for, write_config
from ports import free_port

GRAY = (128, 128, 128)
RULES = [
    {"name": "unsure", "when": {"max_confidence": 0.6}, "then": [{"review": "review/{name}"}]},
    {"name": "sorted", "then": [{"move": "sorted/{class}/{name}"}, {"webhook": "http://127.0.0.1:9/hook"}]},
]
REVIEW = "rfwatch.default_plugins.review"
WEBHOOK = "rfwatch.default_plugins.webhook"


def test_review_backlog_and_deliveries_per_plugin_have_series_from_the_start(tmp_path, server, api_key):
    pytest.importorskip("prometheus_client")
    server.classifier = lambda image: {"red": 0.4, "green": 0.35, "blue": 0.25}  # unsure: the file goes to review
    port = free_port()
    cfg = write_config(tmp_path, server, rules=RULES, review={"upload": {}}, metrics={"listen": f"127.0.0.1:{port}"})

    def scrape() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    with DaemonThread(cfg):
        first = scrape()
        assert "rfwatch_review_backlog 0.0" in first
        for plugin in (REVIEW, WEBHOOK):
            assert f'rfwatch_deliveries_pending{{plugin="{plugin}"}} 0.0' in first, first
            assert f'rfwatch_deliveries_failed{{plugin="{plugin}"}} 0.0' in first, first
        (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(GRAY, 1))
        wait_for(lambda: (tmp_path / "review" / "a.jpg").exists(), what="set aside for review")
        wait_for(lambda: "rfwatch_review_backlog 1.0" in scrape(), what="the backlog counted")
        server.classifier = None
        (tmp_path / "inbox" / "b.jpg").write_bytes(unique_jpeg((230, 10, 10), 2))
        wait_for(lambda: (tmp_path / "sorted" / "red" / "b.jpg").exists(), what="sorted")
        # The webhook's receiver refuses connections (port 9): its event waits, counted for the webhook plugin.
        wait_for(lambda: f'rfwatch_deliveries_pending{{plugin="{WEBHOOK}"}} 1.0' in scrape(), what="a pending delivery")
        assert f'rfwatch_deliveries_pending{{plugin="{REVIEW}"}} 0.0' in scrape()


def test_open_sequences_and_waiting_frames_are_gauges_from_zero(tmp_path, server, api_key):
    """A burst's frames wait for their sequence: the metrics show one open sequence and its frames, then none."""
    pytest.importorskip("prometheus_client")
    import datetime as dt

    from test_sequences import DEER, EMPTY_UNSURE, FOX_UNSURE, burst, classify

    server.classifier = classify
    port = free_port()
    cfg = write_config(
        tmp_path,
        server,
        metrics={"listen": f"127.0.0.1:{port}"},
        sequence={"gap": 8},
        settle=0.1,
    )

    def scrape() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    with DaemonThread(cfg):
        first = scrape()
        assert "rfwatch_sequences_open 0.0" in first and "rfwatch_frames_waiting 0.0" in first, first
        now = dt.datetime.now(dt.timezone.utc).astimezone()
        burst(tmp_path / "inbox", "M", [FOX_UNSURE, DEER, EMPTY_UNSURE], now, 3)
        wait_for(lambda: "rfwatch_frames_waiting 3.0" in scrape(), what="three frames waiting")
        assert "rfwatch_sequences_open 1.0" in scrape()
        # no new frame for `gap` seconds of wall time: the sequence closes and its frames are sorted
        wait_for(lambda: len(list((tmp_path / "sorted").rglob("*.jpg"))) == 3, timeout=40, what="the burst sorted")
        wait_for(lambda: "rfwatch_sequences_open 0.0" in scrape(), what="no sequence open")
        assert "rfwatch_frames_waiting 0.0" in scrape()
