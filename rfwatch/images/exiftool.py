"""Long-running exiftool processes, so that tagging a file costs one request/response instead of a process start.

Starting exiftool (Perl compiling its modules and the ``-config`` file) costs ~130 ms of CPU per call; the
write itself is a few milliseconds. exiftool's ``-stay_open True -@ -`` mode keeps one process reading
arguments from its standard input, one argument per line, and runs a command whenever it reads
``-execute<N>``, answering ``{ready<N>}`` on stdout. :class:`ExifTool` drives one such process,
:class:`ExifToolPool` hands a few of them to the worker threads.

The protocol has sharp edges, each handled here (exiftool 12.57's ``exiftool`` script, ``ReadStayOpen`` and
``FilterArgfileLine``, and its documentation of ``-@``, ``-stay_open``, ``-execute``, ``-echo4``):

* **stdout and stderr in step.** stdout is read until the line ``{ready<N>}``; every command starts with
  ``-echo4 {rfwatch-done:<token>:<N>:${status}}``, which exiftool prints to stderr after the command,
  with the command's exit status (0, 1 error, 2 every file failed ``-if``). Both pipes are read together
  (one ``selectors`` loop, which also writes the request, so a process that answers with a lot of text
  while it is still being fed cannot deadlock us) until both markers are seen: nothing of one command
  is left to be mistaken for the next one's output.
* **An argfile line is not a command-line argument.** exiftool drops blank lines and lines starting
  with ``#``, strips leading white space and trailing CR/LF, removes white space around ``=`` in
  ``-TAG = value`` (and one space after it), and ``-execute``, ``-stay_open``, ``-@`` inside the
  arguments would steer the protocol. Such an argument (a newline in a keyword or a file name, above
  all) cannot travel unchanged, so that call runs as a one-shot ``exiftool ARGS -- FILE`` process, the
  behaviour before this module. (``#[CSTR]`` lines can carry ``\\n``, but exiftool 12.57 turns ``$``
  and ``@`` in them into ``\\$`` and ``\\@``, so they are not a faithful carrier.)
* **No ``--`` in stay-open mode.** After ``--`` exiftool takes ``-execute<N>`` for a file name and
  waits for more arguments forever. File names are therefore made safe instead: a relative name gets
  ``./`` in front, so it never starts with ``-``, ``#`` or white space.
* **File names are bytes.** On POSIX ``-charset filename=utf8`` recodes nothing (exiftool only
  converts names for Windows' wide-character calls), so a name that is not UTF-8 (``b"caf\\xe9.jpg"``)
  goes through the argfile byte for byte; only line breaks force the one-shot fallback.
* **``-config`` only on the command line**, first, and it stays in effect for the life of the process.
* **No ``-q``**: the summary lines ("1 image files updated") are how a command reports what it wrote;
  warnings (which ``-q -q`` used to hide) are returned and logged at debug level, ``-m`` keeps minor
  errors from failing a write.
* **A process that stops answering** (timeout) is killed and restarted at the next call; a process that
  died is noticed (``poll()`` before a call, EOF on its pipes during one) and restarted; the call in
  flight fails with :class:`ExifToolError`, the caller redoes its step. A killed process can leave
  ``<file>_exiftool_tmp`` behind; it is removed.
* **Working directory.** A process keeps the directory it started in; if ours changed, it is restarted,
  so relative names mean the same in both modes.
* **An orphaned process spins.** exiftool in ``-stay_open`` mode polls its argfile at 100 Hz after EOF and
  never exits by itself (``ReadStayOpen`` in the exiftool script), so processes are closed with
  ``-stay_open False`` (:meth:`ExifToolPool.close`, and at interpreter exit through ``weakref.finalize``).
  A process that dies without either (kill -9, a crash) must take its exiftools with it: on Linux they
  are started through a few lines of Python that set PR_SET_PDEATHSIG (the kernel kills the child when
  the thread that forked it ends) and check the parent is still there, always from one spawner thread
  that lives as long as the process. A one-shot process goes the same way, forked by the thread that waits
  for it: a write it had begun cannot go on after rfwatch died, beside the restarted rfwatch that carries the
  step on. Elsewhere systemd's cgroup kill takes them when the service stops.

POSIX only: elsewhere every call runs one-shot.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import selectors
import shutil
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import field
from pathlib import Path
from typing import TypeAlias

from rfwatch.record import record

log = logging.getLogger(__name__)

PathLike: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"

#: rfwatch's own config (the XMP-rfwatch namespace), the default for :func:`shared_pool`.
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "data" / "exiftool-rfwatch.config"

#: Options in front of every command, as rfwatch has always written: in place, keeping the file's
#: modification time, minor errors as warnings, file names as UTF-8 (what Windows needs; a no-op on POSIX).
WRITE_OPTIONS: tuple[str, ...] = ("-overwrite_original", "-P", "-m", "-charset", "filename=utf8")

_TMP_SUFFIX = b"_exiftool_tmp"
_CLOSE_TIMEOUT = 5.0
_READ_SIZE = 65536

# -execute numbers: unique per call across all processes, starting at a random point so that a file's
# metadata cannot spell the next ``{ready<N>}`` line in advance.
_execute_ids = itertools.count(secrets.randbelow(1 << 30) + 1)
_execute_ids_lock = threading.Lock()

# exiftool's FilterArgfileLine rewrites "-TAG = value" and "-TAG= value" (one space after the operator).
_EQUALS_SPACING = re.compile(rb"(-[-:\w]+#?)\s*([-+<]?=) ?")
_EXECUTE = re.compile(rb"(?:-|\xe2\x88\x92)execute\d*", re.IGNORECASE)
_PROTOCOL_OPTIONS = {b"-stay_open", b"-@", b"-common_args", b"-config"}
_LEADING_SPACE = b" \t\n\r\f\v\x85\xa0"
_SUMMARY = re.compile(
    r"^ *(\d+) ((?:image files|files|directories|output files|hard links|symbolic links) [a-z' ]+)$", re.MULTILINE
)


class ExifToolError(RuntimeError):
    """exiftool did not do what was asked: the file is not (known to be) written. Safe to redo the step."""

    def __init__(self, message: str, *, path: PathLike | None = None, result: ExifResult | None = None):
        super().__init__(message)
        self.path = path
        self.result = result


@record
class ExifResult:
    """What one exiftool command reported, much as its exit status and output would tell a shell."""

    target: str
    #: exiftool's exit status for the command: 0 success, 1 an error, 2 every file failed an ``-if``.
    status: int
    #: summary lines, e.g. ``{"image files updated": 1}``
    summary: dict[str, int] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    #: other stderr lines, e.g. "Nothing to do." or "No file specified"
    notes: tuple[str, ...] = ()
    #: standard output without the summary lines (what a reading command such as ``-j`` printed)
    stdout: str = ""
    #: True when the call ran as a one-shot process (see the module docstring for when)
    oneshot: bool = False
    elapsed: float = 0.0

    @property
    def updated(self) -> int:
        return self.summary.get("image files updated", 0)

    @property
    def created(self) -> int:
        return self.summary.get("image files created", 0)

    @property
    def unchanged(self) -> int:
        return self.summary.get("image files unchanged", 0)

    @property
    def failed(self) -> int:
        """Files not written or read because of an error."""
        return sum(
            self.summary.get(k, 0)
            for k in (
                "files weren't updated due to errors",
                "files weren't created due to errors",
                "files could not be read",
            )
        )

    @property
    def failed_condition(self) -> int:
        return self.summary.get("files failed condition", 0)

    @property
    def ok(self) -> bool:
        return self.status != 1 and not self.errors and not self.failed


# --------------------------------------------------------------------------------------------------------------
# helpers shared by both modes


def exiftool_executable() -> str:
    """The exiftool on PATH, or a clear error saying how to get one."""
    found = shutil.which("exiftool")
    if not found:
        raise ExifToolError(
            "needs exiftool: apt-get install libimage-exiftool-perl (Debian/Ubuntu) "
            "or see https://exiftool.org/install.html"
        )
    return found


def _encode_arg(arg: str | bytes) -> bytes:
    # Tag values are UTF-8 for exiftool (its default -charset); surrogateescape keeps os.fsdecode()d bytes.
    return arg if isinstance(arg, bytes) else arg.encode("utf-8", "surrogateescape")


def _decode(data: bytes) -> str:
    # Messages may quote a file name that is not UTF-8; keep it readable and loggable.
    return data.decode("utf-8", "backslashreplace")


def _display(target: PathLike) -> str:
    return _decode(os.fsencode(target))


def argfile_problem(arg: bytes) -> str | None:
    """Why ``arg`` would not reach exiftool unchanged as one argfile line, or None if it would.

    Mirrors exiftool's ``FilterArgfileLine`` and the words ``ReadStayOpen`` acts on.
    """
    if b"\n" in arg or b"\r" in arg:
        return "contains a line break"
    if not arg:
        return "is empty (blank argfile lines are skipped)"
    if arg[:1] == b"#":
        return "starts with '#' (a comment line)"
    if arg[0] in _LEADING_SPACE:
        return "starts with white space (stripped)"
    m = _EQUALS_SPACING.match(arg)
    if m and m.end() != len(m.group(1)) + len(m.group(2)):
        return "has white space around '=' (removed)"
    if _EXECUTE.fullmatch(arg) or arg.lower() in _PROTOCOL_OPTIONS:
        return "is a -stay_open control option"
    return None


def _argfile_target(target: PathLike) -> bytes:
    name = os.fsencode(target)
    return name if name.startswith(b"/") else b"./" + name


def oneshot_reason(args: Sequence[str | bytes], target: PathLike) -> str | None:
    """Why this call cannot go through a stay-open process (so runs one-shot), or None."""
    if os.name != "posix":
        return "not POSIX"
    problem = argfile_problem(_argfile_target(target))
    if problem:
        return f"the file name {problem}"
    for arg in args:
        problem = argfile_problem(_encode_arg(arg))
        if problem:
            return f"the argument {_decode(_encode_arg(arg))!r} {problem}"
    return None


def _remove_tmp(name: bytes) -> None:
    """Remove ``<file>_exiftool_tmp``, which a killed exiftool leaves half-written."""
    tmp = name + _TMP_SUFFIX
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("could not remove exiftool's temporary file %s: %s", _decode(tmp), exc)
        return
    log.info("removed exiftool's temporary file %s left by an interrupted write", _decode(tmp))


def _parse(target: PathLike, status: int, stdout: bytes, stderr: bytes, *, oneshot: bool, elapsed: float) -> ExifResult:
    out = _decode(stdout)
    err = _decode(stderr)
    summary: dict[str, int] = {}
    for text in (out, err):  # with -j and friends exiftool prints its summary on stderr
        for m in _SUMMARY.finditer(text):
            summary[m.group(2)] = summary.get(m.group(2), 0) + int(m.group(1))
    errors, warnings, notes = [], [], []
    for line in err.splitlines():
        line = line.strip()
        if not line or _SUMMARY.fullmatch(line):
            continue
        if line.startswith("Error"):
            errors.append(line)
        elif line.startswith("Warning"):
            warnings.append(line)
        else:
            notes.append(line)
    return ExifResult(
        target=_display(target),
        status=status,
        summary=summary,
        errors=tuple(errors),
        warnings=tuple(warnings),
        notes=tuple(notes),
        stdout=_SUMMARY.sub("", out).strip("\n") if summary else out,
        oneshot=oneshot,
        elapsed=elapsed,
    )


def _check(result: ExifResult, args: Iterable[bytes], expect_write: bool) -> ExifResult:
    """Raise ExifToolError unless the command did what was asked; log its warnings."""
    for warning in result.warnings:
        log.debug("exiftool on %s: %s", result.target, warning)
    if not result.ok:
        reason = "; ".join(result.errors or (*result.warnings, *result.notes)) or f"exit status {result.status}"
        raise ExifToolError(f"exiftool failed on {result.target}: {reason[-500:]}", path=result.target, result=result)
    quiet = any(a.lower() in (b"-q", b"-quiet") for a in args)  # -q hides the summary we would check
    if expect_write and not quiet and result.status == 0 and not (result.updated or result.created or result.unchanged):
        reason = "; ".join((*result.warnings, *result.notes)) or "no file was updated"
        raise ExifToolError(
            f"exiftool did not write {result.target}: {reason[-500:]}", path=result.target, result=result
        )
    return result


def run_oneshot(
    args: Sequence[str | bytes],
    target: PathLike,
    timeout: float = 60.0,
    *,
    config: PathLike | None = None,
    executable: str | None = None,
    options: Sequence[str] = WRITE_OPTIONS,
    expect_write: bool = True,
) -> ExifResult:
    """One exiftool process for one command: ``exiftool -config CFG OPTIONS ARGS -- FILE``.

    The fallback for what the argfile protocol cannot carry; same options, same result and errors as
    :meth:`ExifTool.run`.
    """
    name = os.fsencode(target)
    cmd = [os.fsencode(executable or exiftool_executable())]
    if config is not None:
        cmd += [b"-config", os.fsencode(config)]
    encoded = [_encode_arg(a) for a in (*options, *args)]
    cmd += [*encoded, b"--", name]
    start = time.monotonic()
    try:
        # Forked by this thread, which waits for it: a kill -9 of rfwatch takes it too, so that it cannot go on
        # writing the file while a restarted rfwatch carries the same step on (two writers of one file).
        proc = subprocess.run(_dying_with_rfwatch(cmd), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        _remove_tmp(name)  # subprocess.run killed it, possibly in the middle of writing
        raise ExifToolError(
            f"exiftool timed out after {timeout:g}s on {_display(target)}", path=_display(target)
        ) from None
    result = _parse(target, proc.returncode, proc.stdout, proc.stderr, oneshot=True, elapsed=time.monotonic() - start)
    if proc.returncode < 0:
        _remove_tmp(name)
    return _check(result, encoded, expect_write)


# --------------------------------------------------------------------------------------------------------------
# one stay-open process


class _Died(Exception):
    pass


class _TimedOut(Exception):
    pass


def _terminate(proc: subprocess.Popen[bytes], timeout: float = _CLOSE_TIMEOUT) -> None:
    """Ask a stay-open exiftool to exit (``-stay_open False``), wait, then kill. Never raises."""
    if proc.poll() is None:
        try:
            assert proc.stdin is not None
            os.set_blocking(proc.stdin.fileno(), True)
            proc.stdin.write(b"-stay_open\nFalse\n")
            proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("exiftool (pid %d) did not exit within %gs; killing it", proc.pid, timeout)
            _kill(proc)
    _close_pipes(proc)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.kill()
    except OSError:
        pass
    try:
        proc.wait(_CLOSE_TIMEOUT)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not wait for anything
        log.error("exiftool (pid %d) survived SIGKILL", proc.pid)
    _close_pipes(proc)


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        try:
            if pipe is not None:
                pipe.close()
        except OSError:
            pass


#: Run before exec'ing exiftool (Linux): the kernel kills it when the thread that forked it ends, kill -9 of
#: rfwatch included (PR_SET_PDEATHSIG); and one that finds rfwatch gone already (it died between the fork and
#: the prctl, which util-linux's ``setpriv --pdeathsig`` cannot tell) exits at once.
_DIE_WITH_PARENT = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)
#: The one thread every stay-open exiftool is forked from: the parent-death signal follows the forking
#: thread, so a worker thread that ends must not take the processes it happened to start.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exiftool-spawner")


def _dying_with_rfwatch(cmd: Sequence[str | bytes]) -> list[str | bytes]:
    """``cmd`` run through :data:`_DIE_WITH_PARENT` where the kernel can do it (Linux): killed with the thread
    that forks it."""
    if sys.platform.startswith("linux"):
        return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]
    return list(cmd)


def _spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    wrapped = _dying_with_rfwatch(cmd)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            wrapped, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
        )

    return _spawner.submit(start).result()


class ExifTool:
    """One ``exiftool -config CFG -stay_open True -@ -`` process, started at the first call.

    Not for concurrent use by several threads (a lock serialises them); :class:`ExifToolPool` gives each
    thread its own.
    """

    def __init__(
        self,
        config: PathLike | None = DEFAULT_CONFIG,
        *,
        executable: str | None = None,
        options: Sequence[str] = WRITE_OPTIONS,
    ):
        self.executable = executable or exiftool_executable()
        # absolute, so that a later chdir changes nothing for either mode
        self.config = os.path.abspath(config) if config and os.path.exists(config) else config
        self.options = tuple(options)
        self._options = [_encode_arg(o) for o in self.options]
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._cwd = ""
        self._token = secrets.token_hex(4)
        self.starts = 0  # processes started so far (restarts included)
        self.calls = 0

    def __repr__(self) -> str:
        return f"<ExifTool pid={self.pid} calls={self.calls} starts={self.starts}>"

    def __enter__(self) -> ExifTool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The current process (None before the first call and after close)."""
        return self._proc

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def run(
        self,
        args: Sequence[str | bytes],
        target: PathLike,
        timeout: float = 60.0,
        *,
        expect_write: bool = True,
        deadline: float | None = None,
    ) -> ExifResult:
        """Run ``exiftool OPTIONS ARGS TARGET``; return what it reported, raise ExifToolError if it failed.

        ``expect_write``: a command that updated nothing (not even "unchanged") is a failure; pass False
        for reading commands such as ``-j``. ``deadline`` (``time.monotonic()``), if given, replaces
        now + ``timeout`` (the pool counts the wait for a free process). Falls back to a one-shot process
        for what the argfile protocol cannot carry (see :func:`oneshot_reason`).
        """
        reason = oneshot_reason(args, target)
        if reason:
            log.debug("exiftool on %s runs one-shot: %s", _display(target), reason)
            return run_oneshot(
                args,
                target,
                timeout,
                config=self.config,
                executable=self.executable,
                options=self.options,
                expect_write=expect_write,
            )
        if deadline is None:
            deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise ExifToolError(
                f"exiftool timed out after {timeout:g}s on {_display(target)}: its process stayed busy with another call",
                path=_display(target),
            )
        try:
            return self._run(args, target, timeout, expect_write, deadline)
        finally:
            self._lock.release()

    def _run(
        self, args: Sequence[str | bytes], target: PathLike, timeout: float, expect_write: bool, deadline: float
    ) -> ExifResult:
        start = time.monotonic()
        name = _argfile_target(target)
        encoded = [_encode_arg(a) for a in args]
        with _execute_ids_lock:
            n = next(_execute_ids)
        marker = f"{{rfwatch-done:{self._token}:{n}:".encode()
        request = b"".join(
            line + b"\n"
            for line in (b"-echo4", marker + b"${status}}", *self._options, *encoded, name, b"-execute%d" % n)
        )
        proc = self._ensure_started()
        self.calls += 1
        try:
            stdout, stderr, status = self._exchange(proc, request, b"{ready%d}\n" % n, marker, deadline)
        except _TimedOut:
            log.warning(
                "exiftool (pid %d) did not answer within %gs on %s; killing it", proc.pid, timeout, _display(target)
            )
            self._discard(proc, name)
            raise ExifToolError(
                f"exiftool timed out after {timeout:g}s on {_display(target)}", path=_display(target)
            ) from None
        except _Died as exc:
            self._discard(proc, name)
            how = f"killed by signal {-proc.returncode}" if (proc.returncode or 0) < 0 else f"status {proc.returncode}"
            log.warning("exiftool (pid %d) died (%s) while working on %s: %s", proc.pid, how, _display(target), exc)
            raise ExifToolError(
                f"exiftool failed on {_display(target)}: the exiftool process exited ({how}, {exc}); "
                "it is restarted for the next call",
                path=_display(target),
            ) from None
        except BaseException:  # KeyboardInterrupt in the middle of an exchange: the stream is out of step
            self._discard(proc, name)
            raise
        result = _parse(target, status, stdout, stderr, oneshot=False, elapsed=time.monotonic() - start)
        log.debug("exiftool (pid %d) on %s: %s in %.3fs", proc.pid, result.target, result.summary, result.elapsed)
        return _check(result, encoded, expect_write)

    def _ensure_started(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        cwd = _cwd()
        if proc is not None and proc.poll() is not None:
            log.warning(
                "exiftool (pid %d) exited with status %s between calls; restarting it", proc.pid, proc.returncode
            )
            self._discard(proc, None)
            proc = None
        elif proc is not None and cwd != self._cwd:
            log.info("working directory changed; restarting exiftool (pid %d) so relative names agree", proc.pid)
            self._discard(proc, None, graceful=True)
            proc = None
        if proc is None:
            cmd = [self.executable]
            if self.config is not None:
                cmd += ["-config", os.fspath(self.config)]  # must come first, and cannot go in the argfile
            cmd += ["-stay_open", "True", "-@", "-"]
            try:
                proc = _spawn(cmd)
            except OSError as exc:
                raise ExifToolError(f"could not start exiftool ({self.executable}): {exc}") from None
            assert proc.stdin is not None
            os.set_blocking(proc.stdin.fileno(), False)  # written from the select loop, never blocking
            self._proc = proc
            self._cwd = cwd
            self._finalizer = weakref.finalize(self, _terminate, proc)
            self.starts += 1
            log.debug("started exiftool (pid %d)", proc.pid)
        return proc

    @staticmethod
    def _exchange(
        proc: subprocess.Popen[bytes], request: bytes, ready: bytes, marker: bytes, deadline: float
    ) -> tuple[bytes, bytes, int]:
        """Write ``request``; read stdout until ``ready`` ends it and stderr until the ``-echo4`` marker line."""
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        fd_in, fd_out, fd_err = proc.stdin.fileno(), proc.stdout.fileno(), proc.stderr.fileno()
        out, err = bytearray(), bytearray()
        pending = memoryview(request)
        status: int | None = None
        status_re = re.compile(rb"^" + re.escape(marker) + rb"(\d+)\}\n", re.MULTILINE)
        with selectors.DefaultSelector() as sel:
            sel.register(fd_in, selectors.EVENT_WRITE)
            sel.register(fd_out, selectors.EVENT_READ)
            sel.register(fd_err, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _TimedOut
                for key, _ in sel.select(remaining):
                    if key.fd == fd_in:
                        try:
                            written = os.write(fd_in, pending[:_READ_SIZE])
                        except BlockingIOError:
                            continue
                        except (BrokenPipeError, ConnectionResetError):
                            raise _Died("its input pipe is closed") from None
                        pending = pending[written:]
                        if not pending:
                            sel.unregister(fd_in)
                        continue
                    chunk = os.read(key.fd, _READ_SIZE)
                    if not chunk:
                        raise _Died("end of its output" if key.fd == fd_out else "end of its error output")
                    if key.fd == fd_out:
                        out += chunk
                    else:
                        err += chunk
                        if status is None:
                            m = status_re.search(err)
                            if m:
                                status = int(m.group(1))
                                del err[m.start() : m.end()]
                if (
                    status is not None
                    and out.endswith(ready)
                    and (len(out) == len(ready) or out[-len(ready) - 1] == 10)
                ):
                    return bytes(out[: -len(ready)]), bytes(err), status

    def _discard(self, proc: subprocess.Popen[bytes], name: bytes | None, *, graceful: bool = False) -> None:
        """Forget ``proc`` (killed unless ``graceful``) and the temporary file it may have left on ``name``."""
        if graceful:
            _terminate(proc)
        else:
            _kill(proc)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._proc is proc:
            self._proc = None
        if name is not None:
            _remove_tmp(name)

    def kill(self) -> None:
        """Kill the process now, from any thread; a call in flight fails with ExifToolError."""
        proc = self._proc
        if proc is not None:
            try:
                proc.kill()
            except OSError:
                pass

    def close(self, timeout: float = _CLOSE_TIMEOUT) -> None:
        """End the process cleanly: ``-stay_open False``, wait up to ``timeout``, then kill."""
        with self._lock:
            proc, self._proc = self._proc, None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
            if proc is not None:
                _terminate(proc, timeout)
                log.debug("exiftool (pid %d) closed with status %s", proc.pid, proc.returncode)


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # deleted: nothing relative can work either way
        return ""


# --------------------------------------------------------------------------------------------------------------
# a pool for the worker threads


class ExifToolPool:
    """Up to ``size`` :class:`ExifTool` processes shared by threads: a thread takes an idle one, runs, returns it.

    Processes start lazily, when a thread finds none idle, so a pool that is used by one thread at a time
    runs one process. Thread-safe.
    """

    def __init__(
        self,
        size: int = 2,
        config: PathLike | None = DEFAULT_CONFIG,
        *,
        executable: str | None = None,
        options: Sequence[str] = WRITE_OPTIONS,
    ):
        if size < 1:
            raise ValueError(f"size: expected at least 1 exiftool process, got {size}")
        self.executable = executable or exiftool_executable()
        self.config = os.path.abspath(config) if config and os.path.exists(config) else config
        self.options = tuple(options)
        self._size = size
        self._cond = threading.Condition()
        self._idle: list[ExifTool] = []  # LIFO: the most recently used (warm) process first
        self._all: list[ExifTool] = []
        self._busy = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"<ExifToolPool size={self._size} started={len(self._all)} busy={self._busy} closed={self._closed}>"

    def __enter__(self) -> ExifToolPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def tools(self) -> list[ExifTool]:
        """The ExifTool objects created so far (a snapshot, for inspection and tests)."""
        with self._cond:
            return list(self._all)

    def resize(self, size: int) -> None:
        """Allow up to ``size`` processes (never fewer than are running)."""
        with self._cond:
            self._size = max(size, len(self._all), 1)
            self._cond.notify_all()

    def run(
        self, args: Sequence[str | bytes], target: PathLike, timeout: float = 60.0, *, expect_write: bool = True
    ) -> ExifResult:
        """:meth:`ExifTool.run` on an idle process; ``timeout`` includes waiting for one to be free."""
        reason = oneshot_reason(args, target)
        if reason:
            if self._closed:
                raise ExifToolError(f"exiftool failed on {_display(target)}: the exiftool pool is closed")
            log.debug("exiftool on %s runs one-shot: %s", _display(target), reason)
            return run_oneshot(
                args,
                target,
                timeout,
                config=self.config,
                executable=self.executable,
                options=self.options,
                expect_write=expect_write,
            )
        deadline = time.monotonic() + timeout
        tool = self._acquire(target, deadline, timeout)
        try:
            return tool.run(args, target, timeout, expect_write=expect_write, deadline=deadline)
        finally:
            self._release(tool)

    def _acquire(self, target: PathLike, deadline: float, timeout: float) -> ExifTool:
        with self._cond:
            while True:
                if self._closed:
                    raise ExifToolError(f"exiftool failed on {_display(target)}: the exiftool pool is closed")
                if self._idle:
                    tool = self._idle.pop()
                    break
                if len(self._all) < self._size:
                    tool = ExifTool(self.config, executable=self.executable, options=self.options)
                    self._all.append(tool)
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ExifToolError(
                        f"exiftool timed out after {timeout:g}s on {_display(target)}: all {self._size} "
                        "exiftool processes stayed busy",
                        path=_display(target),
                    )
                self._cond.wait(remaining)
            self._busy += 1
            return tool

    def _release(self, tool: ExifTool) -> None:
        with self._cond:
            self._busy -= 1
            closed = self._closed
            if not closed:
                self._idle.append(tool)
            self._cond.notify_all()
        if closed:
            tool.close()

    def close(self, timeout: float = _CLOSE_TIMEOUT) -> None:
        """Stop every process cleanly (``-stay_open False``, wait, kill); later calls raise ExifToolError.

        Calls in flight get up to ``timeout`` seconds to finish; then their processes are killed (those
        calls fail with ExifToolError).
        """
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
        for tool in idle:
            tool.close(timeout)
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)
            busy = self._busy
        if busy:
            log.warning("closing the exiftool pool: killing %d process(es) still busy after %gs", busy, timeout)
        for tool in self.tools:
            if busy and tool not in idle:
                tool.kill()
            tool.close(timeout)


# --------------------------------------------------------------------------------------------------------------
# one pool per config for the whole process

_shared: dict[str, ExifToolPool] = {}
_shared_lock = threading.Lock()
_atexit_registered = False


def shared_pool(config_path: PathLike | None = DEFAULT_CONFIG, size: int | None = None) -> ExifToolPool:
    """The process-wide pool for ``config_path`` (created at the first call; grown to ``size`` if asked).

    Pools are closed at interpreter exit (or by :func:`close_shared_pools`); a closed pool is replaced.
    """
    global _atexit_registered
    key = _decode(os.fsencode(config_path)) if config_path is not None else ""
    with _shared_lock:
        pool = _shared.get(key)
        if pool is None or pool.closed:
            pool = _shared[key] = ExifToolPool(size or 2, config_path)
            if not _atexit_registered:
                import atexit

                atexit.register(close_shared_pools)
                _atexit_registered = True
        elif size and size > pool.size:
            pool.resize(size)
        return pool


#: The name plugins know (``rfwatch.plugin.exiftool_pool``): rfwatch's config by default.
exiftool_pool = shared_pool


def close_shared_pools(timeout: float = _CLOSE_TIMEOUT) -> None:
    """Close every pool :func:`shared_pool` made."""
    with _shared_lock:
        pools = list(_shared.values())
        _shared.clear()
    for pool in pools:
        pool.close(timeout)
