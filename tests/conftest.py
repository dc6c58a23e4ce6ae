from __future__ import annotations

import io
import os
import random
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from ports import free_port
from webhook_receiver import Receiver  # noqa: E402

from rfwatch.testing import VALID_KEY, PlatformServer, RoboflowServer, catalog, platform_server, roboflow_server  # noqa: E402

# The stand-ins moved into the package (rfwatch.testing); tests that still say `from roboflow_server import ...`
# get the same module objects, not copies.
for _module in (catalog, roboflow_server, platform_server):
    sys.modules.setdefault(_module.__name__.rpartition(".")[2], _module)

REPO = Path(__file__).resolve().parents[1]
# The repository's own small set (tests/data/README.md); RFWATCH_SAMPLES may name a folder holding a larger
# exif-samples/ of the same layout.
SAMPLES = Path(os.environ.get("RFWATCH_SAMPLES") or REPO / "tests" / "data") / "exif-samples"


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "long: a drill of 10 s or more; run first (see pytest_collection_modifyitems)")


def pytest_collection_modifyitems(config, items) -> None:
    """The long drills first, the rest in their usual order. Under ``pytest -n 2`` each worker is handed tests in
    collection order: a 40 s drill handed out last keeps one worker busy while the other has nothing left to do."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # a stable sort


@pytest.fixture(scope="session")
def samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.fail(f"sample images not found at {SAMPLES} (RFWATCH_SAMPLES names a folder holding exif-samples/)")
    return SAMPLES


@pytest.fixture(scope="session")
def heic_file(samples) -> Path:
    """A HEIC/HEIF file from the samples (the repository has one; a larger set may have several)."""
    return sorted(p for p in (samples / "heic").iterdir() if p.suffix.lower() in (".heic", ".heif"))[0]


@pytest.fixture(autouse=True)
def _no_systemd_journal(monkeypatch):
    """Under systemd the log format follows JOURNAL_STREAM: a test run from a unit must see plain logs too."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("RFWATCH_CRASH_AT", raising=False)


@pytest.fixture
def server():
    """The inference stand-in, as classify.roboflow.com (v1) answers."""
    srv = RoboflowServer(port=free_port()).start()  # (its port is kept when a test takes it down and up)
    yield srv
    srv.stop()


@pytest.fixture
def receiver():
    """A webhook receiver on 127.0.0.1 that records every request (webhook_receiver.py)."""
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def platform(server):
    """The platform API stand-in (api.roboflow.com), serving the same account as ``server``."""
    srv = PlatformServer(catalog=server.catalog, port=free_port()).start()
    server.platform_url = srv.url  # write_config points roboflow.platform_url here
    yield srv
    srv.stop()


@pytest.fixture
def api_key(monkeypatch) -> str:
    monkeypatch.setenv("ROBOFLOW_API_KEY", VALID_KEY)
    return VALID_KEY


def solid_jpeg(color: tuple[int, int, int], size=(64, 48), noise: int = 0, seed: int = 0) -> bytes:
    img = Image.new("RGB", size, color)
    if noise:
        rnd = random.Random(seed)
        px = img.load()
        for _ in range(noise):
            x, y = rnd.randrange(size[0]), rnd.randrange(size[1])
            px[x, y] = (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def make_jpeg():
    return solid_jpeg


# --- journals on both backends -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_cluster():
    """A PostgreSQL cluster of this test process's own (tests/pg.py), started at first use, removed at the end."""
    import pg

    bindir = pg.find_bin()
    if bindir is None:
        pytest.skip(pg.SKIP_REASON)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'rfwatch[postgresql]')")
    cluster = pg.Cluster(bindir, preload=("pg_stat_statements",)).start()
    yield cluster
    cluster.destroy()


BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def journal_url(request, backend, tmp_path) -> str:
    """Where a test's journal is: an SQLite file in tmp_path, or a fresh PostgreSQL database."""
    if backend == "sqlite":
        return str(tmp_path / "state" / "journal.db")
    return request.getfixturevalue("pg_cluster").new_database()
