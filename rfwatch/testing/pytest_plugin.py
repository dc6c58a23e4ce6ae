"""pytest fixtures for testing rfwatch plugins, registered through the ``pytest11`` entry point.

Installed with rfwatch, so a plugin's own repository needs no conftest.py::

    def test_thumbnail(rfwatch_server, rfwatch_daemon):
        daemon = rfwatch_daemon(rules=[{"then": [{"thumbnail": "thumbs/{class}/{stem}.webp"}]}])
        daemon.drop("a.jpg", red_jpeg_bytes)
        assert daemon.wait_for("a.jpg").state == "done"

Fixtures (each test gets its own, on free ports of 127.0.0.1):

- ``rfwatch_catalog``: the account both stand-ins serve (:class:`rfwatch.testing.Catalog`): key
  ``rfwatch.testing.VALID_KEY``, workspace ``acme``, single-label ``colors/1..3`` and multi-label ``tags/1..2``
  scoring red, green and blue by colour. Change it before the servers are used.
- ``rfwatch_server``: the inference stand-in (:class:`rfwatch.testing.RoboflowServer`). Choose the deployment with
  ``@pytest.mark.rfwatch_server(profile="self-hosted", engine="old")``.
- ``rfwatch_platform``: the platform API stand-in (:class:`rfwatch.testing.PlatformServer`), same account.
- ``rfwatch_daemon``: ``rfwatch_daemon(rules=..., **config_keys)`` writes a config in ``tmp_path`` that talks to
  the two stand-ins, starts rfwatch's daemon and returns a :class:`rfwatch.testing.RunningDaemon`; it is stopped
  after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rfwatch.testing.catalog import Catalog
from rfwatch.testing.daemon import RunningDaemon, write_config
from rfwatch.testing.platform_server import PlatformServer
from rfwatch.testing.roboflow_server import RoboflowServer
from rfwatch.testing.stand_ins import StandIns


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "rfwatch_server(profile='v1', engine='new'): which Roboflow deployment the rfwatch_server fixture imitates "
        "(v1: classify.roboflow.com, serverless: serverless.roboflow.com, self-hosted: a Roboflow Inference server)",
    )


@pytest.fixture
def rfwatch_catalog() -> Catalog:
    return Catalog()


@pytest.fixture
def rfwatch_stand_ins(request: pytest.FixtureRequest, rfwatch_catalog: Catalog) -> Iterator[StandIns]:
    marker = request.node.get_closest_marker("rfwatch_server")
    options = dict(marker.kwargs) if marker else {}
    stand_ins = StandIns(catalog=rfwatch_catalog, **options).start()
    yield stand_ins
    stand_ins.stop()


@pytest.fixture
def rfwatch_server(rfwatch_stand_ins: StandIns) -> RoboflowServer:
    assert rfwatch_stand_ins.inference is not None
    return rfwatch_stand_ins.inference


@pytest.fixture
def rfwatch_platform(rfwatch_stand_ins: StandIns) -> PlatformServer:
    assert rfwatch_stand_ins.platform is not None
    return rfwatch_stand_ins.platform


@pytest.fixture
def rfwatch_daemon(
    rfwatch_stand_ins: StandIns, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., RunningDaemon]]:
    started: list[RunningDaemon] = []

    def start(rules: list[dict[str, Any]] | None = None, *, model: str = "colors/1", **config: Any) -> RunningDaemon:
        root = tmp_path_factory.mktemp("rfwatch")
        path = write_config(
            root, rfwatch_stand_ins.inference, rules, model=model, api_key=rfwatch_stand_ins.api_key, **config
        )
        daemon = RunningDaemon.start(path)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
