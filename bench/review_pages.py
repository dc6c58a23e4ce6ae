"""How long the review page's JSON API takes for a page of items with many files waiting.

    python bench/review_pages.py [--counts 1000,5000,20000] [--state postgresql://...]

Each count: that many files waiting (journaled in one transaction, as tests/test_review_many.py makes them), a
review server (rfwatch.review.server.ReviewServer, as ``rfwatch review`` serves it), then ``GET /api/items`` for
the first page of 60: cold (the first request, every prediction read), warm (the next), a class filter, and the
last page reached by cursor. Figures go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def timed(url: str) -> tuple[float, dict]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        doc = json.loads(response.read())
    return time.perf_counter() - started, doc


def one(count: int, state: str | None) -> dict[str, float]:
    from test_review import free_port, review_config
    from test_review_many import make_waiting

    from rfwatch.config import load_config
    from rfwatch.review.server import ReviewServer

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        port = free_port()
        fake = SimpleNamespace(url="http://127.0.0.1:9", platform_url="http://127.0.0.1:9")
        cfg = review_config(base, fake, port, **({"state": state} if state else {}))
        make_waiting(base, cfg, count)
        api = f"http://127.0.0.1:{port}/api/items"
        with ReviewServer(load_config(cfg), lambda model: ("red", "green", "blue")):
            cold, _ = timed(f"{api}?limit=60")
            warm, _ = timed(f"{api}?limit=60")
            filtered, _ = timed(f"{api}?limit=60&class=green&min=0.45&sort=confidence")
            cursor, pages, last = None, 0, 0.0
            while True:
                last, doc = timed(f"{api}?limit=500" + (f"&cursor={cursor}" if cursor else ""))
                pages += 1
                cursor = doc["next"]
                if cursor is None:
                    break
    return {"cold": cold, "warm": warm, "filtered": filtered, "page of 500": last, "pages": pages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,5000,20000")
    parser.add_argument("--state", help="a PostgreSQL URL (a fresh, empty database); default SQLite")
    args = parser.parse_args()
    print("| waiting | first page, cold | first page, warm | class + confidence filter | a page of 500 |")
    print("|---|---|---|---|---|")
    for count in (int(c) for c in args.counts.split(",")):
        r = one(count, args.state)
        ms = {k: f"{v * 1000:.0f} ms" for k, v in r.items() if k != "pages"}
        print(f"| {count:,} | {ms['cold']} | {ms['warm']} | {ms['filtered']} | {ms['page of 500']} |", flush=True)


if __name__ == "__main__":
    main()
