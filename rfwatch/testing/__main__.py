"""``python -m rfwatch.testing [PORT [PLATFORM_PORT]] [--profile P] [--engine E]``: both stand-ins, until Ctrl-C."""

from __future__ import annotations

import argparse
import threading

from rfwatch.testing.roboflow_server import ENGINES, PROFILES
from rfwatch.testing.stand_ins import StandIns


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rfwatch.testing",
        description="Roboflow's inference server and platform API, stood in on 127.0.0.1",
    )
    parser.add_argument("port", nargs="?", type=int, default=0, help="the inference server's port (0: a free one)")
    parser.add_argument("platform_port", nargs="?", type=int, default=0, help="the platform API's port")
    parser.add_argument("--profile", choices=PROFILES, default="v1")
    parser.add_argument("--engine", choices=ENGINES, default="new")
    args = parser.parse_args(argv)
    with StandIns(
        profile=args.profile, engine=args.engine, inference_port=args.port, platform_port=args.platform_port
    ) as rf:
        assert rf.inference is not None and rf.platform is not None
        print(f"inference server (profile {rf.profile}, engine {rf.engine}): {rf.inference.url}")
        print(f"platform API (workspace {rf.catalog.workspace}): {rf.platform.url}")
        print(
            f"API key {rf.api_key}; models: "
            + ", ".join(
                f"{p.name}/{v}"
                for p in rf.catalog.projects.values()
                for v in sorted(p.versions)  # type: ignore[union-attr]
            ),
            flush=True,
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
