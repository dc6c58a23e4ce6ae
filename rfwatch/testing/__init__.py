"""Local stand-ins for Roboflow, and a real rfwatch daemon to test with: for rfwatch's tests, plugins and the demo.

Everything listens on 127.0.0.1 only and talks to nothing else. The two servers answer like Roboflow's: each
behaviour is taken from Roboflow's own source (roboflow/inference, roboflow/roboflow-python), cited in the
docstrings of :mod:`rfwatch.testing.roboflow_server` and :mod:`rfwatch.testing.platform_server`; where no source
says, the code says "chosen". The model is a toy: it scores an image red, green or blue by its colours.

Servers::

    from rfwatch.testing import Catalog, Project, RoboflowServer, PlatformServer, StandIns, VALID_KEY

    with StandIns(profile="self-hosted") as rf:        # both, one account, free ports
        rf.inference.url, rf.platform.url                # http://127.0.0.1:NNNNN
    server = RoboflowServer(profile="serverless", engine="old").start()   # or one at a time; .stop()

- Deployment profile: ``profile="v1"`` (classify.roboflow.com), ``"serverless"`` (serverless.roboflow.com) or
  ``"self-hosted"`` (a Roboflow Inference server); ``engine="new"`` or ``"old"`` (which model code answers).
- Model catalogue: a :class:`Catalog` (keys, workspace, :class:`Project` s with classes, multi-label or not, and
  versions with their preprocessing) shared by both servers. ``Catalog()`` holds ``colors/1..3`` and ``tags/1..2``
  with the key :data:`VALID_KEY`; ``server.classifier = fn(image) -> {class: confidence}`` replaces the scores.
- Faults and latency: ``server.fail_next(503, count=2, retry_after="1")``, ``server.transport_fault_next("reset")``
  (or ``"hang"``), ``server.fault_rate`` with ``server.fault_mix`` (a list of :class:`Fault`), ``server.delay``,
  ``server.latency`` and ``server.jitter`` (seconds), ``server.uplink_bps``; ``server.stop()`` and ``start()`` take it
  down and back. The platform: ``platform.fail_next(status, path="/dataset")``, ``platform.delay``,
  ``platform.annotate_lag``, ``platform.already_annotated``, ``platform.down()`` / ``up()``.
- What was received: ``server.requests`` / ``server.inference_requests()`` (:class:`Recorded`: method, path, query,
  lowercased headers, body size, the decoded image, the answer sent), ``server.connections``;
  ``platform.requests``, ``platform.uploads[project]``, ``platform.annotations[project]``; ``reset()`` clears them.

A daemon: :func:`write_config` writes a config that talks to a stand-in, :class:`RunningDaemon` runs rfwatch's own
daemon on a thread (``drop(name, data)``, ``wait_for(name) -> Processed``, ``stop()``).

pytest fixtures (``rfwatch_server``, ``rfwatch_platform``, ``rfwatch_catalog``, ``rfwatch_daemon``) come with rfwatch
through the ``pytest11`` entry point: see :mod:`rfwatch.testing.pytest_plugin`.

By hand: ``python -m rfwatch.testing 9001 9002`` serves both (``--profile``, ``--engine``);
``rfwatch demo`` starts both with a toy model and a daemon.
"""

from __future__ import annotations

from rfwatch.testing.catalog import AUTO_ORIENT, VALID_KEY, Catalog, Project, resize, static_crop
from rfwatch.testing.daemon import Processed, RunningDaemon, write_config
from rfwatch.testing.platform_server import PlatformServer
from rfwatch.testing.roboflow_server import (
    ENGINES,
    PROFILES,
    Fault,
    Recorded,
    RoboflowServer,
    color_scores,
    sigmoid_color_scores,
)
from rfwatch.testing.stand_ins import StandIns, is_loopback_url

__all__ = [
    "AUTO_ORIENT",
    "ENGINES",
    "PROFILES",
    "VALID_KEY",
    "Catalog",
    "Fault",
    "PlatformServer",
    "Processed",
    "Project",
    "Recorded",
    "RoboflowServer",
    "RunningDaemon",
    "StandIns",
    "color_scores",
    "is_loopback_url",
    "resize",
    "sigmoid_color_scores",
    "static_crop",
    "write_config",
]
