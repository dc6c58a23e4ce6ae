"""Start-up cost of the light commands: CPU time of ``rfwatch --help`` and ``rfwatch status -c FILE`` against the
interpreter's own start (``python -c pass``), on a journal of 10,000 finished files (issue 23, item 1).

    python bench/startup.py [--files 10000] [--repeat 21] [--old TREE] [--no-write]

Each command runs ``--repeat`` times, one after the other, as the console script a user runs (the ``rfwatch`` next
to this interpreter, its bytecode compiled beforehand as pip does on install); its CPU time (user + system, from ``wait4``) is the child's alone. The median of each is
printed with its ratio to ``python -c pass`` (the target is at most 3x). ``--old TREE`` (a checkout of an older
commit, e.g. ``git archive REV | tar -x -C TREE``) runs the same commands from that tree beside these, by the same
interpreter (``PYTHONPATH=TREE``), for a before/after in one run. The figures go into docs/benchmarks.md
between the ``<!-- kept by bench/run.py: startup -->`` markers, which bench/run.py carries over when it rewrites the
rest of the file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- kept by bench/run.py: startup -->", "<!-- end startup -->"
TARGET = 3.0
#: Where the rest goes, from `python -X importtime` of each command (read when this benchmark was written).
WHERE = (
    "None of these commands loads requests, Pillow, the review server or the plugins (tests/test_imports.py; "
    "`status --plugins` and `plugins` load the plugins). What they cost above the interpreter (from "
    "`python -X importtime` and cProfile of `status`, before the records below): argparse, logging, json and "
    "datetime, about 8 ms; dataclasses, 5 ms, and then 0.2 to 0.5 ms for each of the 27 dataclasses the config "
    "and the journal's rows define; PyYAML, 8 ms, most of it a regular expression PyYAML compiles at import; the "
    "config's and the journal's own modules; SQLite. Since this change only the chosen command's parser is built, the journal "
    "loads neither uuid nor socket, status reads the outbox without the delivery machinery and counts files "
    "from a few folded rows (schema 5), and the console script ends `status`, `history`, `--help` and "
    "`--version` with os._exit once their output is flushed (the interpreter's teardown was about 15 ms). "
    "Later (2026-12-07, second pass): argparse's formatter asks the terminal for its width only when it prints "
    "help (it imported shutil, with bz2, lzma and zlib, and asked once per option: about 2 ms), and opening a "
    "journal of the current layout only reads it (it was a write transaction, which on SQLite also waited for "
    "the daemon's writes). Third pass (2026-12-07, fifth session): the 27 value classes status defines are "
    "records (rfwatch/record.py), dataclasses whose methods are shared functions: `@dataclass(frozen=True)` "
    "compiled six methods a class with exec, 159 compiles and about 19 ms of status's CPU (cProfile of its "
    "imports); status went from about 70 to 57 ms. What is left is mostly the standard library and PyYAML: "
    "`python -c` importing argparse, json, datetime, logging, typing, threading, sqlite3, dataclasses (with "
    "inspect) and yaml costs about 52 ms against 20 ms for `pass` (PyYAML alone about 10 ms, a third of it a "
    "regular expression its pure-Python reader compiles at import, unused with libyaml). Two more runs of this "
    "bench right after the one above (`--repeat 21`): `status` 2.79x and 2.55x, `history` 2.64x and 2.90x, "
    "`--help` 1.97x and 1.99x. Before the records, runs of 2026-12-07 gave `status` 2.90x to 3.89x (most near "
    "3.45x) and `history` 2.89x to 3.58x; before issue 23's work `status` 7.50x, `history` 4.99x and `--help` "
    "2.73x (an older tree cannot be run beside this one: it refuses schema 5)."
)


def build_journal(folder: Path, files: int) -> Path:
    """A config and its SQLite journal holding ``files`` finished files (each sorted by one move, as the daemon does)."""
    from journal import sort_by_one_move  # bench/journal.py: the same journal writes as its workers

    from rfwatch.config import load_config
    from rfwatch.journal import open_journal
    from rfwatch.states import FileState

    inbox, archive = folder / "inbox", folder / "archive"
    inbox.mkdir()
    cfg = folder / "config.yaml"
    cfg.write_text(
        "roboflow:\n  model: colors/1\n"
        f"state: {folder / 'journal.db'}\n"
        f"watch:\n  - path: {inbox}\n"
        "rules:\n  - name: sort\n    then:\n      - move: archive/{class}\n"
    )
    config = load_config(cfg)
    journal = open_journal(config, synchronous="OFF")  # building it fast; the commands open it as usual
    try:
        for n in range(files):
            path = inbox / f"cam{n % 50:02}" / f"IMG_{n:07}.jpg"
            sha = f"{n:064x}"
            fid = journal.files.take(path, 1000 + n, 1, sha, "colors/1")
            cls = ("red", "green", "blue")[n % 3]
            journal.files.classified(fid, _prediction(cls), sha, "colors/1", f"{cls} 0.90", {})
            sort_by_one_move(journal, fid, archive / cls / path.name)
        journal.files.fold_counts()  # as a daemon does every minute: status sums a row per state
        counts = journal.files.counts()
    finally:
        journal.close()
    assert counts.get(FileState.DONE) == files, counts
    return cfg


def _prediction(cls: str) -> dict:
    """A prediction as the journal keeps it (Prediction.json() of a single-label answer)."""
    others = [c for c in ("red", "green", "blue") if c != cls]
    scores = [(cls, 0.9), (others[0], 0.07), (others[1], 0.03)]
    return {
        "time": 0.01,
        "image": {"width": 224, "height": 224},
        "predictions": [{"class": c, "class_id": i, "confidence": p} for i, (c, p) in enumerate(scores)],
        "top": cls,
        "confidence": 0.9,
        "image_path": "",
        "prediction_type": "ClassificationModel",
    }


def cpu_of(command: list[str], env: dict[str, str]) -> float:
    """CPU seconds (user + system) of one run of ``command``; it must exit 0."""
    # From a neutral folder: `python -c` puts the working folder first on sys.path, before PYTHONPATH.
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd="/")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)}: exit {proc.returncode}: {err.strip()}")
    return usage.ru_utime + usage.ru_stime


#: What the ``rfwatch`` console script runs.
LAUNCHER = "import sys; from rfwatch.cli import main; sys.exit(main())"


def measure(commands: dict[str, tuple[list[str], dict[str, str]]], repeat: int) -> dict[str, list[float]]:
    """Interleaved (one of each in turn), so that a busy moment on the machine hits every command alike."""
    for command, env in commands.values():  # warm the page cache and the .pyc files
        cpu_of(command, env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, (command, env) in commands.items():
            times[name].append(cpu_of(command, env))
    return times


def render(times: dict[str, list[float]], command: str, files: int, repeat: int, old: str | None, load: str) -> str:
    base = statistics.median(times["python -c pass"])
    lines = [
        BEGIN,
        "## Start-up of the light commands",
        "",
        f"Produced by `{command}` on {dt.date.today().isoformat()} (Python {sys.version.split()[0]}; load average "
        f"{load} while it ran, on {os.cpu_count()} cores). CPU time (user + system) of each command as the console script, median "
        f"of {repeat} runs interleaved with the others, on a journal of {files:,} finished files; the ratio is to "
        "`python -c pass` run by the same interpreter (target: at most 3x, issue 23)."
        + (f" Rows starting with *old* run the same commands from {old}, beside these." if old else ""),
        "",
        "| command | CPU ms (median) | min | max | ratio to `python -c pass` |",
        "|---|---|---|---|---|",
    ]
    for name, values in times.items():
        med = statistics.median(values)
        ratio = med / base if base else float("nan")
        lines.append(
            f"| `{name}` | {med * 1000:.1f} | {min(values) * 1000:.1f} | {max(values) * 1000:.1f} | {ratio:.2f}x |"
        )
    verdicts = []
    for name in times:
        if name == "python -c pass" or name.startswith("old"):
            continue
        ratio = statistics.median(times[name]) / base
        verdicts.append(f"`{name}` {ratio:.2f}x ({'met' if ratio <= TARGET else 'missed'})")
    lines += ["", "Target at most 3x: " + "; ".join(verdicts) + ".", "", WHERE, END]
    return "\n".join(lines) + "\n"


def write_section(section: str) -> None:
    """Put the section in docs/benchmarks.md: in place of the old one, else at the end."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--old", metavar="TREE", help="also run the commands from this older checkout")
    ap.add_argument("--old-label", metavar="TEXT", help="what the older tree is, for the text (default: its path)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    rfwatch = Path(sys.executable).parent / "rfwatch"
    if not rfwatch.exists():
        raise SystemExit(f"{rfwatch}: no rfwatch console script next to this interpreter (pip install -e .)")
    # As installed from a wheel: bytecode compiled once (pip does it), not on every start.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RFWATCH_", "ROBOFLOW_", "PYTHONDONTWRITE"))}
    trees = [("", REPO)] + ([("old ", Path(args.old).resolve())] if args.old else [])
    for _, tree in trees:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "rfwatch")], check=True, env=env)
    with tempfile.TemporaryDirectory(prefix="rfwatch-startup-") as tmp:
        cfg = build_journal(Path(tmp), args.files)
        sorted_file = str(Path(tmp) / "archive" / "red" / "IMG_0000000.jpg")
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "python -c pass": ([sys.executable, "-c", "pass"], env)
        }
        for label, tree in trees:
            if label:  # the older tree, by the same interpreter: its own package first on the path
                run, tree_env = [sys.executable, "-c", LAUNCHER], dict(env, PYTHONPATH=str(tree))
            else:
                run, tree_env = [str(rfwatch)], env
            commands[f"{label}rfwatch --help"] = ([*run, "--help"], tree_env)
            commands[f"{label}rfwatch status -c FILE"] = ([*run, "status", "-c", str(cfg)], tree_env)
            commands[f"{label}rfwatch history -c FILE PATH"] = (
                [*run, "history", "-c", str(cfg), sorted_file],
                tree_env,
            )
        times = measure(commands, args.repeat)
    load = f"{os.getloadavg()[0]:.1f}"
    command = "python bench/startup.py " + " ".join(shlex.quote(a) for a in sys.argv[1:] if a != "--no-write")
    section = render(
        times, command.strip(), args.files, args.repeat, args.old and (args.old_label or f"`{args.old}`"), load
    )
    print(section)
    if not args.no_write:
        write_section(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
