"""What a user would write instead of rfwatch: the official client in a loop, then shutil.move.

Run by bench/run.py in its own process so its CPU time is measured alone:
    python bench/official_client.py [--model PROJECT/VERSION] API_URL OUT_DIR FILE...
Prints one JSON object with per-file times and failures.
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

from roboflow.models.classification import ClassificationModel


def main() -> None:
    args = sys.argv[1:]
    model_id = "colors/1"
    if args[:1] == ["--model"]:
        model_id, args = args[1], args[2:]
    api_url, out_dir, *files = args
    project, version = model_id.split("/")
    # As project.version(N).model builds it: id "workspace/project/version".
    model = ClassificationModel(
        os.environ["ROBOFLOW_API_KEY"],
        f"workspace/{project}/{version}",
        name=project,
        version=version,
        local=api_url.rstrip("/") + "/",
    )
    times, failures = [], []
    started = time.monotonic()
    cpu0 = time.process_time()
    for f in files:
        t = time.monotonic()
        try:
            top = model.predict(f).json()["predictions"][0]["top"]
        except Exception as exc:  # what the official client raises for any non-200: a bare Exception
            failures.append(f"{Path(f).name}: {str(exc)[:120]}")
            continue
        dest = Path(out_dir) / top
        dest.mkdir(parents=True, exist_ok=True)
        shutil.move(f, dest / Path(f).name)
        times.append(time.monotonic() - t)
    print(
        json.dumps(
            {
                "seconds": time.monotonic() - started,
                "cpu": time.process_time() - cpu0,
                "times": times,
                "failures": failures,
            }
        )
    )


if __name__ == "__main__":
    main()
