"""Break the code on purpose, one hand-written breakage at a time, and see whether the tests notice.

Each breakage in ``breakage/breakages.yaml`` names a file, an exact snippet of its source, the snippet's
replacement (a realistic mistake: an off-by-one, a dropped check, a wrong state, a missing fsync, a swallowed
error), the promise it breaks, and the tests that should catch it. For each one this runner:

1. copies the repository (the files git knows, committed or not) into a temporary folder, once per worker:
   the working tree is never modified;
2. checks that the breakage's tests pass on the unbroken copy (once per distinct selection);
3. replaces the snippet (it must occur exactly once: zero is "does not apply", more is "ambiguous"), runs the
   tests with ``pytest -x -q`` under a time limit, and puts the file back.

A breakage is *caught* when its tests fail (or hang past the limit), *not caught* when they pass. The copy's
``rfwatch`` is the one imported, by the tests and by every ``rfwatch`` process they start (``PYTHONPATH``).

    python breakage/run.py                      # every breakage
    python breakage/run.py --only retry-default-states
    python breakage/run.py --module processing/undo -j 2
    python breakage/run.py --list

See docs/breakage.md. Not run in CI: it takes tens of minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LIST = REPO / "breakage" / "breakages.yaml"

CAUGHT, TIMEOUT, NOT_CAUGHT, NO_APPLY, AMBIGUOUS, BASELINE = (
    "caught",
    "caught (timeout)",
    "NOT CAUGHT",
    "does not apply",
    "ambiguous",
    "baseline fails",
)


@dataclass(frozen=True)
class Breakage:
    id: str
    file: str
    find: str
    replace: str
    promise: str
    tests: tuple[str, ...]
    k: str | None = None

    @property
    def selection(self) -> tuple[str, ...]:
        return (*self.tests, *(("-k", self.k) if self.k else ()))

    @property
    def module(self) -> str:
        """The module it breaks, as the report groups them: rfwatch/processing/undo.py -> processing/undo."""
        return self.file.removeprefix("rfwatch/").removesuffix(".py").removesuffix("/__init__")


@dataclass
class Outcome:
    breakage: Breakage
    result: str
    seconds: float = 0.0
    detail: str = ""


@dataclass
class Workspace:
    """One copy of the repository, used by one worker at a time."""

    root: Path
    lock: threading.Lock = field(default_factory=threading.Lock)


def load(path: Path = LIST) -> list[Breakage]:
    docs = yaml.safe_load(path.read_text())
    out, seen = [], set()
    for doc in docs:
        tests = doc["tests"]
        b = Breakage(
            id=doc["id"],
            file=doc["file"],
            find=doc["find"],
            replace=doc["replace"],
            promise=doc["promise"],
            tests=tuple([tests] if isinstance(tests, str) else tests),
            k=doc.get("k"),
        )
        if b.id in seen:
            raise SystemExit(f"{path}: breakage id {b.id!r} appears twice")
        seen.add(b.id)
        out.append(b)
    return out


def copy_repository(dest: Path) -> None:
    """The files git knows (tracked, and untracked ones not ignored): the tree as it is, without .venv or caches."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        rel = os.fsdecode(raw)
        src = REPO / rel
        if not src.is_file():  # deleted in the working tree, not yet committed
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def pytest_cmd(selection: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *selection]


def run_tests(ws: Workspace, selection: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """(passed | failed | timeout, seconds, the output's tail)."""
    env = dict(os.environ, PYTHONPATH=str(ws.root), PYTHONDONTWRITEBYTECODE="1")
    env.pop("RFWATCH_CRASH_AT", None)
    started = time.monotonic()
    proc = subprocess.Popen(
        pytest_cmd(selection),
        cwd=ws.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a hung run is killed with every process it started
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        return "timeout", time.monotonic() - started, (out or "")[-1500:]
    took = time.monotonic() - started
    if proc.returncode == 0:
        return "passed", took, out[-1500:]
    return "failed", took, out[-1500:]


def failure_line(output: str) -> str:
    """The first line of pytest's short summary that names a failure (for the report)."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line[:200]
    return output.strip().splitlines()[-1][:200] if output.strip() else ""


class Runner:
    def __init__(self, breakages: list[Breakage], jobs: int, timeout: float, verbose: bool):
        self.breakages, self.timeout, self.verbose = breakages, timeout, verbose
        self.tmp = Path(tempfile.mkdtemp(prefix="rfwatch-breakage-"))
        self.workspaces: list[Workspace] = []
        for n in range(max(1, jobs)):
            root = self.tmp / f"copy{n}"
            copy_repository(root)
            self.workspaces.append(Workspace(root))
        self._free = list(self.workspaces)
        self._free_lock = threading.Condition()
        self._baselines: dict[tuple[str, ...], tuple[str, str]] = {}
        self._baseline_lock = threading.Lock()
        self._print_lock = threading.Lock()

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _take(self) -> Workspace:
        with self._free_lock:
            while not self._free:
                self._free_lock.wait()
            return self._free.pop()

    def _give(self, ws: Workspace) -> None:
        with self._free_lock:
            self._free.append(ws)
            self._free_lock.notify()

    def baseline(self, ws: Workspace, selection: tuple[str, ...]) -> tuple[str, str]:
        with self._baseline_lock:
            known = self._baselines.get(selection)
        if known is not None:
            return known
        state, _, out = run_tests(ws, selection, self.timeout * 2)
        with self._baseline_lock:
            self._baselines[selection] = (state, out)
        return state, out

    def one(self, b: Breakage) -> Outcome:
        ws = self._take()
        try:
            path = ws.root / b.file
            if not path.is_file():
                return Outcome(b, NO_APPLY, detail=f"{b.file} does not exist")
            original = path.read_text()
            count = original.count(b.find)
            if count == 0:
                return Outcome(b, NO_APPLY, detail="snippet not found")
            if count > 1:
                return Outcome(b, AMBIGUOUS, detail=f"snippet found {count} times")
            state, out = self.baseline(ws, b.selection)
            if state != "passed":
                return Outcome(b, BASELINE, detail=failure_line(out))
            path.write_text(original.replace(b.find, b.replace))
            try:
                state, took, out = run_tests(ws, b.selection, self.timeout)
            finally:
                path.write_text(original)
            if state == "timeout":
                return Outcome(b, TIMEOUT, took, f"no result within {self.timeout:g}s")
            if state == "failed":
                return Outcome(b, CAUGHT, took, failure_line(out))
            return Outcome(b, NOT_CAUGHT, took, out.strip().splitlines()[-1] if out.strip() else "")
        finally:
            self._give(ws)

    def report_one(self, o: Outcome) -> None:
        with self._print_lock:
            print(f"{o.result:<17} {o.breakage.id:<44} {o.seconds:6.1f}s  {o.detail if self.verbose else ''}".rstrip())
            sys.stdout.flush()

    def run(self) -> list[Outcome]:
        outcomes: list[Outcome] = []

        def job(b: Breakage) -> Outcome:
            o = self.one(b)
            self.report_one(o)
            return o

        with ThreadPoolExecutor(max_workers=len(self.workspaces)) as pool:
            outcomes = list(pool.map(job, self.breakages))
        return outcomes


def summarise(outcomes: list[Outcome]) -> str:
    per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for o in outcomes:
        kind = "caught" if o.result in (CAUGHT, TIMEOUT) else o.result
        per[o.breakage.module][kind] += 1
        per["total"][kind] += 1
    lines = [f"{'module':<28} {'caught':>7} {'not caught':>11} {'does not apply':>15} {'other':>6}  caught %"]
    for module in sorted(per, key=lambda m: (m == "total", m)):
        c = per[module]
        applied = c["caught"] + c[NOT_CAUGHT]
        other = c[AMBIGUOUS] + c[BASELINE]
        share = f"{100 * c['caught'] / applied:5.1f}" if applied else "  -"
        lines.append(
            f"{module:<28} {c['caught']:>7} {c[NOT_CAUGHT]:>11} {c[NO_APPLY]:>15} {other:>6}  {share}"
            if module != "total"
            else "-" * 78
            + "\n"
            + f"{'total':<28} {c['caught']:>7} {c[NOT_CAUGHT]:>11} {c[NO_APPLY]:>15} {other:>6}  {share}"
        )
    missed = [o for o in outcomes if o.result == NOT_CAUGHT]
    if missed:
        lines.append("\nnot caught:")
        lines += [f"  {o.breakage.id}: {o.breakage.promise}" for o in missed]
    odd = [o for o in outcomes if o.result in (NO_APPLY, AMBIGUOUS, BASELINE)]
    if odd:
        lines.append("\nnot run:")
        lines += [f"  {o.breakage.id}: {o.result} ({o.detail})" for o in odd]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="ID", help="this breakage only (repeatable)")
    parser.add_argument("--module", metavar="PATTERN", help="breakages whose file path contains PATTERN")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="breakages tried at once (one copy each)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per breakage's test run (240)")
    parser.add_argument("--list", action="store_true", help="list the breakages and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the failing test of each caught one")
    parser.add_argument("--file", type=Path, default=LIST, help="the list of breakages (breakage/breakages.yaml)")
    args = parser.parse_args(argv)

    breakages = load(args.file)
    if args.only:
        unknown = set(args.only) - {b.id for b in breakages}
        if unknown:
            parser.error(f"no such breakage: {', '.join(sorted(unknown))}")
        breakages = [b for b in breakages if b.id in args.only]
    if args.module:
        breakages = [b for b in breakages if args.module in b.file]
    if args.list:
        for b in breakages:
            print(f"{b.id:<44} {b.file:<36} {b.promise}")
        return 0
    if not breakages:
        print("no breakage selected", file=sys.stderr)
        return 2
    print(f"{len(breakages)} breakage(s), {args.jobs} at a time, {args.timeout:g}s each at most")
    runner = Runner(breakages, args.jobs, args.timeout, args.verbose)
    try:
        outcomes = runner.run()
    finally:
        runner.close()
    print()
    print(summarise(outcomes))
    return 0 if all(o.result in (CAUGHT, TIMEOUT) for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
