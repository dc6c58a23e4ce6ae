"""What ``rfwatch check`` verifies beyond the config's own shape: everything ``run`` would stop on.

Each :class:`Finding` names the config key, what is wrong and the fix. Findings that ``run`` would fail on are
errors (``check`` exits non-zero); the others are warnings. The platform API's answers are asked for in
``rfwatch.cli`` (the key, the model, the upload project); this module looks at the machine: folders, optional
packages, the review token.

A platform that cannot be reached is a warning, not an error: a self-hosted site may never reach
api.roboflow.com, and ``run`` works without it (it then sizes uploads by ``max_size`` and checks no classes).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from rfwatch.config import Config, ConfigError, check_review
from rfwatch.journal import is_postgres_url
from rfwatch.record import record

__all__ = ["Finding", "machine_findings", "watch_folder_problem"]


@record
class Finding:
    key: str
    problem: str
    fix: str
    error: bool = True

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}: {self.fix}"


def watch_folder_problem(path: Path, key: str) -> Finding | None:
    """Why the daemon cannot watch ``path`` (None: it can)."""
    if not path.exists():
        return Finding(key, f"the folder {path} does not exist", f"create it (mkdir -p {path}) or correct the path")
    if not path.is_dir():
        return Finding(key, f"{path} is not a folder", "name a folder to watch")
    if not os.access(path, os.R_OK | os.X_OK):
        return Finding(key, f"the folder {path} cannot be read by this user", "grant read access or correct the path")
    return None


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_problem(folder: Path, key: str, what: str) -> Finding | None:
    """Can this user create ``folder`` (if missing) and files in it? Tried for real: a read-only mount or a file
    where a folder must be shows up, whatever the permission bits say (root passes os.access everywhere)."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        return Finding(key, f"{what} {folder} cannot be created: {existing} is not a folder", "correct the path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".rfwatch-check-", dir=existing)
    except OSError as exc:
        where = folder if existing == folder else f"{folder} (to be created in {existing})"
        return Finding(
            key,
            f"{what} {where} is not writable by this user ({exc.strerror or exc})",
            "grant write access (e.g. ReadWritePaths= in the unit) or correct the path",
        )
    os.close(fd)
    os.unlink(probe)
    return None


def _destination_roots(config: Config) -> list[tuple[str, Path]]:
    """(key, folder) for each fixed folder files are written into: failed, roots:, move/copy/review targets."""
    from rfwatch.host.templates import Template

    out: list[tuple[str, Path]] = []
    if config.failed is not None:
        out.append(("failed", config.failed))
    out += [(f"roots.{name}", folder) for name, folder in config.roots]
    for rule in config.rules:
        for spec in rule.then:
            to = spec.options if isinstance(spec.options, str) else None
            if isinstance(spec.options, dict) and isinstance(spec.options.get("to"), str):
                to = spec.options["to"]
            if spec.name not in ("move", "copy", "review", "annotate") or not to:
                continue
            root = os.path.expanduser(Template(to).fixed_root) or "."
            out.append((spec.key, config.resolve(root)))
    return out


def machine_findings(config: Config) -> list[Finding]:
    """Everything ``run`` would stop on that this machine decides, in config order."""
    found: list[Finding] = []
    r = config.roboflow
    if not r.api_key:
        if r.api_key_problem:
            key, _, problem = r.api_key_problem.partition(": ")
            found.append(Finding(key, problem, "make the file readable by this user and hold the key"))
        else:
            found.append(
                Finding(
                    "roboflow.api_key",
                    "no Roboflow API key",
                    "set ROBOFLOW_API_KEY, roboflow.api_key or roboflow.api_key_file",
                )
            )
    for i, w in enumerate(config.watch):
        problem = watch_folder_problem(w.path, f"watch[{i}].path")
        if problem is None:
            problem = _writable_problem(w.path, f"watch[{i}].path", "the watched folder")  # moves take files out
        if problem is not None:
            found.append(problem)
    if config.metrics_listen and importlib.util.find_spec("prometheus_client") is None:
        found.append(Finding("metrics.listen", "needs prometheus-client", "pip install 'rfwatch[metrics]'"))
    if is_postgres_url(config.journal_url):
        if importlib.util.find_spec("psycopg") is None:
            found.append(Finding("state", "a PostgreSQL journal needs psycopg", "pip install 'rfwatch[postgresql]'"))
    else:
        problem = _writable_problem(config.state_path.parent, "state", "the journal's folder")
        if problem is not None:
            found.append(problem)
    try:
        check_review(config.review)
    except ConfigError as exc:
        key, _, problem = str(exc).partition(": ")
        found.append(Finding(key, problem, "set review.token or review.token_file, or listen on 127.0.0.1"))
    seen: set[Path] = set()
    for key, folder in _destination_roots(config):
        if folder in seen:
            continue
        seen.add(folder)
        problem = _writable_problem(folder, key, "the destination")
        if problem is not None:
            found.append(problem)
    return found
