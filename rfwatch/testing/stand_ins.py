"""Both Roboflow stand-ins at once: the inference server and the platform API, serving one account.

``StandIns`` starts a :class:`RoboflowServer` (classify.roboflow.com, serverless.roboflow.com or a self-hosted
Roboflow Inference server, by ``profile``) and a :class:`PlatformServer` (api.roboflow.com) on free ports of
127.0.0.1, sharing one :class:`Catalog`, so a key, a project or a version is known to both or to neither, as on
Roboflow's side. Nothing here reaches the network: both bind the loopback address only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from rfwatch.testing.catalog import VALID_KEY, Catalog
from rfwatch.testing.platform_server import PlatformServer
from rfwatch.testing.roboflow_server import RoboflowServer

__all__ = ["StandIns", "is_loopback_url"]


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class StandIns:
    """The inference server and the platform API on 127.0.0.1, started together (a context manager too).

    ``profile`` and ``engine`` choose which deployment the inference server imitates (see
    :mod:`rfwatch.testing.roboflow_server`); ``catalog`` is the account both serve (keys, workspace, projects).
    """

    catalog: Catalog = field(default_factory=Catalog)
    profile: str = "v1"
    engine: str = "new"
    host: str = "127.0.0.1"
    inference_port: int = 0  # 0: a free port
    platform_port: int = 0
    inference: RoboflowServer | None = None
    platform: PlatformServer | None = None

    def start(self) -> StandIns:
        if not is_loopback_url(f"http://{self.host}/"):
            raise ValueError(f"the stand-ins listen on a loopback address only, not {self.host}")
        self.inference = RoboflowServer(
            host=self.host, port=self.inference_port, profile=self.profile, engine=self.engine, catalog=self.catalog
        )
        self.inference.start()
        try:
            self.platform = PlatformServer(catalog=self.catalog, host=self.host, port=self.platform_port).start()
        except BaseException:
            self.inference.stop()
            raise
        # write_config() (rfwatch.testing.daemon) and the project's tests read the platform's URL from here.
        self.inference.platform_url = self.platform.url  # type: ignore[attr-defined]
        return self

    def stop(self) -> None:
        for server in (self.inference, self.platform):
            if server is not None:
                server.stop()

    @property
    def api_key(self) -> str:
        """A key both servers accept (the catalog's first, in sorted order)."""
        return VALID_KEY if VALID_KEY in self.catalog.keys else sorted(self.catalog.keys)[0]

    def roboflow_config(self, model: str) -> dict[str, Any]:
        """The ``roboflow:`` section of an rfwatch config that talks to these two servers."""
        assert self.inference is not None and self.platform is not None, "start() first"
        return {"model": model, "api_url": self.inference.url, "platform_url": self.platform.url}

    def __enter__(self) -> StandIns:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
