"""``rfwatch demo``: rfwatch at work on this machine alone, with no Roboflow account and no network.

It starts the stand-ins of :mod:`rfwatch.testing` on 127.0.0.1 (Roboflow's inference server and platform API,
serving a toy colour model: an image is called red, green or blue by its colours), writes a demo folder with a
config that talks only to them, and runs rfwatch's own daemon on it with the review page, until Ctrl-C or SIGTERM.
Everything the daemon does is what ``rfwatch run`` does with a real model: the journal, moves, the review page, the
upload of reviewed labels (to the stand-in's project).
"""

from __future__ import annotations

import io
import os
import socket
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml
from PIL import Image, ImageDraw

from rfwatch.config import ConfigError
from rfwatch.files.whole import replaced
from rfwatch.service.notify import Notifier
from rfwatch.testing import AUTO_ORIENT, Catalog, Project, StandIns, is_loopback_url, resize

__all__ = ["DEMO_KEY", "DEMO_MODEL", "run_demo"]

#: Not a Roboflow key: only the demo's stand-ins accept it.
DEMO_KEY = "rfwatch-demo-not-a-roboflow-key"
DEMO_MODEL = "toy-colors/1"
#: The first line of a config the demo wrote: a folder holding one is the demo's, to reuse.
MARKER = "# Written by `rfwatch demo`"
#: Confident predictions are sorted; the rest wait on the review page.
CONFIDENT = 0.6
DEFAULT_REVIEW_PORT = 8765

TOY_NOTICE = (
    "DEMO: the model is a toy stand-in, not Roboflow: it calls an image red, green or blue by its colours.\n"
    "Roboflow's inference server and platform API are imitated on 127.0.0.1; nothing leaves this machine."
)


def demo_catalog() -> Catalog:
    """The account the stand-ins serve: one project of three colours, input 224x224 like a small classifier."""
    project = Project(
        name=DEMO_MODEL.split("/")[0],
        classes=["red", "green", "blue"],
        versions={1: {"resize": resize(224, 224), "auto-orient": dict(AUTO_ORIENT)}},
    )
    return Catalog(workspace="rfwatch-demo", keys={DEMO_KEY}, projects=[project])


def review_port(wanted: int | None) -> int:
    """``wanted`` (0: any free port; None: 8765, the same address each time, unless it is taken)."""
    for port in [DEFAULT_REVIEW_PORT, 0] if wanted is None else [wanted]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise ConfigError(f"--review-port: 127.0.0.1:{wanted} is taken (0 picks a free port)")


def demo_config(stand_ins: StandIns, port: int) -> dict[str, Any]:
    """The demo's config: loopback URLs only, folders inside the demo folder."""
    assert stand_ins.inference is not None and stand_ins.platform is not None
    return {
        "roboflow": {
            "model": DEMO_MODEL,
            "api_url": stand_ins.inference.url,
            "platform_url": stand_ins.platform.url,
            "api_key": DEMO_KEY,
        },
        "state": "state/journal.db",
        "concurrency": 2,
        "watch": [{"path": "inbox", "settle": 0.5}],
        "failed": "failed",
        "review": {"listen": f"127.0.0.1:{port}", "upload": {"project": DEMO_MODEL.split("/")[0]}},
        "rules": [
            {"name": "confident", "when": {"min_confidence": CONFIDENT}, "then": [{"move": "sorted/{class}/{name}"}]},
            {"name": "unsure", "then": [{"review": "review/{name}"}]},
        ],
    }


def prepare_folder(folder: Path) -> None:
    """Make the demo folder, or reuse one an earlier demo made; refuse any other folder with something in it."""
    config = folder / "config.yaml"
    if folder.exists():
        if not folder.is_dir():
            raise ConfigError(f"--dir: {folder} exists and is not a folder")
        ours = config.is_file() and config.read_text(errors="replace").startswith(MARKER)
        if any(folder.iterdir()) and not ours:
            raise ConfigError(f"--dir: {folder} is not empty and not a demo folder: give another with --dir")
    for name in ("inbox", "samples"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    for name, data in sample_images().items():
        sample = folder / "samples" / name
        if not sample.exists():  # written whole: a sample cut short would be kept for good
            with replaced(sample, binary=True) as f:
                f.write(data)


def sample_images() -> dict[str, bytes]:
    """Four small pictures to try: three plain colours the toy is sure of, and one it is not."""
    out = {}
    for name, colour in (("red.jpg", (210, 40, 30)), ("green.jpg", (40, 180, 60)), ("blue.jpg", (30, 60, 200))):
        out[name] = _jpeg(Image.new("RGB", (320, 240), colour))
    mixed = Image.new("RGB", (320, 240), (200, 40, 40))
    draw = ImageDraw.Draw(mixed)
    draw.rectangle((107, 0, 213, 240), fill=(40, 190, 40))
    draw.rectangle((214, 0, 320, 240), fill=(40, 40, 200))
    out["stripes.jpg"] = _jpeg(mixed)
    return out


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _shown(path: Path) -> str:
    """A path as the user would type it from here."""
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


class _DemoNotifier(Notifier):
    """systemd's notifier as usual, and at READY=1 the instructions: the daemon watches and the page is up."""

    def __init__(self, say: Any) -> None:
        super().__init__()
        self._say = say

    def ready(self, status: str = "") -> None:
        super().ready(status)
        self._say()


def run_demo(folder: Path, port: int | None = None, out: TextIO | None = None) -> int:
    """Run the demo in ``folder`` until SIGINT or SIGTERM; returns the daemon's exit status."""
    from rfwatch.service.daemon import Daemon

    out = out or sys.stdout
    folder = folder.absolute()
    prepare_folder(folder)
    print(TOY_NOTICE, file=out, flush=True)
    with StandIns(catalog=demo_catalog(), profile="self-hosted") as stand_ins:
        doc = demo_config(stand_ins, review_port(port))
        urls = (doc["roboflow"]["api_url"], doc["roboflow"]["platform_url"], "http://" + doc["review"]["listen"])
        if not all(is_loopback_url(url) for url in urls):  # the promise above, kept by construction and checked
            raise ConfigError(f"the demo would reach beyond this machine: {urls}")
        config_path = folder / "config.yaml"
        header = (
            f"{MARKER} each time it starts (the stand-ins' ports change).\n"
            "# The model is a toy stand-in on 127.0.0.1, not Roboflow. For a real model, see README.md.\n"
        )
        config_path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
        daemon: Daemon | None = None

        def say_ready() -> None:
            review = daemon.review.url if daemon is not None and daemon.review is not None else "(not served)"
            print(
                "\nrfwatch is watching. Drop images into "
                f"{_shown(folder / 'inbox')} (try: cp {_shown(folder / 'samples')}/* {_shown(folder / 'inbox')}/)\n"
                f"  confident ones (>= {CONFIDENT:g}) are sorted into {_shown(folder / 'sorted')}/<class>/,\n"
                f"  the rest wait for you on the review page: {review}\n"
                f"  config: {_shown(config_path)}; in another terminal: rfwatch status -c {_shown(config_path)}\n"
                "  Ctrl-C stops the demo.",
                file=out,
                flush=True,
            )

        daemon = Daemon(config_path, notifier=_DemoNotifier(say_ready))
        code = daemon.run()
    print(f"demo stopped; {_shown(folder)} stays (run `rfwatch demo` again to carry on).", file=out, flush=True)
    return code
