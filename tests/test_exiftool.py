"""rfwatch.images.exiftool: stay-open exiftool processes, their pool, the one-shot fallback, failures and cleanup.

Real exiftool on real JPEGs; keywords are read back with a separate ``exiftool -j`` process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import wait_for
from PIL import Image

from rfwatch.images.exiftool import (
    DEFAULT_CONFIG,
    ExifTool,
    ExifToolError,
    ExifToolPool,
    argfile_problem,
    close_shared_pools,
    oneshot_reason,
    run_oneshot,
    shared_pool,
)

pytestmark = pytest.mark.skipif(
    shutil.which("exiftool") is None, reason="exiftool not installed (apt-get install libimage-exiftool-perl)"
)

#: one-shot calls in the timing comparison; each costs a process start (~0.3 s here), so the default keeps the
#: file fast. RFWATCH_EXIFTOOL_ONESHOTS=100 compares 100 with 100.
ONESHOTS = int(os.environ.get("RFWATCH_EXIFTOOL_ONESHOTS", "15"))


def make_jpeg(path: Path | bytes, color=(200, 10, 10)) -> Path | bytes:
    Image.new("RGB", (64, 48), color).save(os.fsdecode(path), "JPEG")
    return path


def subjects(*paths: Path | bytes) -> dict[bytes, list[str]]:
    """dc:subject of each file, read by one separate exiftool process."""
    names = [os.fsencode(p) for p in paths]
    proc = subprocess.run(
        ["exiftool", "-j", "-XMP-dc:Subject", "-charset", "filename=utf8", "--", *names],
        capture_output=True,
    )
    docs = json.loads(proc.stdout.decode("utf-8", "surrogateescape"))
    out = {}
    for name, doc in zip(names, docs, strict=True):
        value = doc.get("Subject", [])
        out[name] = [str(v) for v in (value if isinstance(value, list) else [value])]
    return out


def subject(path: Path | bytes) -> list[str]:
    return next(iter(subjects(path).values()))


def add(kw: str) -> list[str]:
    return [f"-XMP-dc:Subject-={kw}", f"-XMP-dc:Subject+={kw}"]


@pytest.fixture
def pool():
    p = ExifToolPool(2)
    yield p
    p.close()


@pytest.fixture
def jpeg(tmp_path) -> Path:
    return make_jpeg(tmp_path / "a.jpg")


def the_process(pool: ExifToolPool) -> subprocess.Popen[bytes]:
    (tool,) = pool.tools
    assert tool.process is not None
    return tool.process


# ------------------------------------------------------------------------------------------------------------
# the protocol


def test_writes_keywords_and_reports_the_summary(jpeg):
    with ExifTool() as et:
        result = et.run([*add("iguana"), *add("lizard"), "-XMP-rfwatch:Class=iguana"], jpeg, 10)
        assert (result.status, result.updated, result.failed, result.oneshot) == (0, 1, 0, False)
        again = et.run(add("iguana"), jpeg, 10)  # merged, never duplicated
        assert again.updated == 1
        read = et.run(["-j", "-XMP-rfwatch:Class"], jpeg, 10, expect_write=False)
        assert json.loads(read.stdout)[0]["Class"] == "iguana"
        assert et.starts == 1
    assert subject(jpeg) == ["iguana", "lizard"]
    assert not list(jpeg.parent.glob("*_original")) and not list(jpeg.parent.glob("*_exiftool_tmp"))


def test_many_sequential_calls_share_one_process_and_are_faster(tmp_path, pool, capsys):
    files = [make_jpeg(tmp_path / f"seq{i}.jpg") for i in range(10)]
    pool.run(add("warmup"), files[0], 10)  # the process start is not part of the comparison
    start = time.perf_counter()
    for i in range(100):
        pool.run(add(f"kw{i}"), files[i % 10], 10)
    pooled = time.perf_counter() - start
    assert len(pool.tools) == 1 and pool.tools[0].starts == 1 and pool.tools[0].calls == 101

    start = time.perf_counter()
    for i in range(ONESHOTS):
        run_oneshot(add(f"one{i}"), files[i % 10], 10, config=DEFAULT_CONFIG)
    oneshot = time.perf_counter() - start
    with capsys.disabled():
        print(
            f"\nexiftool: 100 calls through the pool {pooled:.2f}s ({pooled * 10:.1f} ms/call); "
            f"{ONESHOTS} one-shot calls {oneshot:.2f}s ({oneshot / ONESHOTS * 1000:.1f} ms/call)"
        )
    found = subjects(*files)
    for i in range(100):
        assert f"kw{i}" in found[os.fsencode(files[i % 10])]


def test_threads_share_the_pool(tmp_path, pool):
    files = [[make_jpeg(tmp_path / f"t{t}-{i}.jpg") for i in range(6)] for t in range(4)]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for f in files[t]:
                pool.run([*add(f"thread{t}"), *add(f.stem)], f, 20)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert 1 <= len(pool.tools) <= 2 and sum(t.calls for t in pool.tools) == 24
    found = subjects(*[f for row in files for f in row])
    for t, row in enumerate(files):
        for f in row:
            assert found[os.fsencode(f)] == [f"thread{t}", f.stem]


# ------------------------------------------------------------------------------------------------------------
# processes that die or hang


def test_killed_idle_process_is_restarted(jpeg, pool):
    """An exiftool that died between two calls is noticed before the next call, which succeeds on a new one."""
    pool.run(add("before"), jpeg, 10)
    proc = the_process(pool)
    os.kill(proc.pid, signal.SIGKILL)
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # dead (not reaped: that is the pool's to do)
    result = pool.run(add("after"), jpeg, 10)
    assert result.updated == 1
    assert proc.returncode == -signal.SIGKILL
    assert the_process(pool).pid != proc.pid and pool.tools[0].starts == 2
    assert subject(jpeg) == ["before", "after"]


def test_process_killed_during_a_call_fails_that_call(jpeg, pool):
    pool.run(add("before"), jpeg, 10)
    proc = the_process(pool)
    _stop(proc.pid)  # the request waits in the pipe
    outcome: list[BaseException | object] = []
    th = threading.Thread(target=lambda: outcome.append(_call(pool, add("lost"), jpeg, 30)))
    th.start()
    # The request written (it waits in the pipe), whatever the time that takes on a loaded machine: killed before
    # that, the process would be found dead and replaced, and the call would succeed.
    wait_for(lambda: _in_pipe(proc.stdin.fileno()) > 0, what="the request in exiftool's pipe")
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    th.join(10)
    assert time.monotonic() - started < 5  # EOF noticed at once, not at the 30 s timeout
    (exc,) = outcome
    assert isinstance(exc, ExifToolError) and "exited" in str(exc) and "a.jpg" in str(exc)
    assert pool.run(add("after"), jpeg, 10).updated == 1
    assert subject(jpeg) == ["before", "after"]


def _stop(pid: int) -> None:
    """SIGSTOP, and wait until the kernel has stopped it: the signal is delivered asynchronously, and a process
    still running for a moment could read the next request itself, leaving nothing in its pipe."""
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T", what="it stopped")


def _in_pipe(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD answers for either end on Linux)."""
    import fcntl
    import struct
    import termios

    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _call(pool: ExifToolPool, args: list[str], target: Path, timeout: float) -> BaseException | object:
    try:
        return pool.run(args, target, timeout)
    except BaseException as exc:  # noqa: BLE001 - returned to the test
        return exc


def test_timeout_on_a_stopped_process_kills_it_and_the_next_call_works(jpeg, pool):
    pool.run(add("before"), jpeg, 10)
    proc = the_process(pool)
    _stop(proc.pid)
    started = time.monotonic()
    with pytest.raises(ExifToolError, match=r"timed out after 0.5s on .*a\.jpg"):
        pool.run(add("late"), jpeg, 0.5)
    assert time.monotonic() - started < 3
    assert proc.returncode == -signal.SIGKILL
    assert pool.run(add("after"), jpeg, 10).updated == 1
    assert subject(jpeg) == ["before", "after"]  # the timed-out request never ran


def test_timeout_on_a_long_command(jpeg, pool):
    pool.run(add("before"), jpeg, 10)
    many = [f"-XMP-dc:Subject+=k{i}" for i in range(20000)]  # ~0.3 MB of request, seconds of work
    with pytest.raises(ExifToolError, match="timed out"):
        pool.run(many, jpeg, 0.05)
    assert pool.run(add("after"), jpeg, 10).updated == 1
    assert not list(jpeg.parent.glob("*_exiftool_tmp"))
    assert subject(jpeg) == ["before", "after"]


FAKE_EXIFTOOL = """\
import os, sys, time
args = []
for line in sys.stdin.buffer:
    line = line.rstrip(b"\\n")
    if line.startswith(b"-execute"):
        with open(args[-1] + b"_exiftool_tmp", "wb") as f:  # what exiftool writes before its rename
            f.write(b"half a file")
        if os.environ.get("FAKE_EXIFTOOL") == "die":
            os._exit(3)
        time.sleep(60)
    args.append(line)
"""


@pytest.mark.parametrize("mode", ["die", "hang"])
def test_no_temporary_file_is_left_when_a_process_is_lost_mid_write(tmp_path, jpeg, monkeypatch, mode):
    fake = tmp_path / "fake-exiftool"
    fake.write_text(f"#!{sys.executable}\n{FAKE_EXIFTOOL}")
    fake.chmod(0o755)
    monkeypatch.setenv("FAKE_EXIFTOOL", mode)
    with ExifTool(executable=str(fake)) as et:
        with pytest.raises(ExifToolError, match="exited" if mode == "die" else "timed out"):
            et.run(add("x"), jpeg, 10 if mode == "die" else 0.5)
    assert not (tmp_path / "a.jpg_exiftool_tmp").exists()


def _running(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


CRASHING_USER = """
import os, sys, threading
from rfwatch.images.exiftool import ExifToolPool
pool = ExifToolPool(1)
worker = threading.Thread(target=pool.run, args=(["-XMP-dc:Subject+=x"], sys.argv[1], 20))
worker.start(); worker.join()  # started from a thread that has ended: the process must live on
print(pool.tools[0].process.pid, flush=True)
sys.stdin.readline()  # the test checks it is still running, then:
os._exit(9)  # a crash: no close, no finalizer
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_crashed_process_takes_its_exiftools_with_it(jpeg):
    """exiftool -stay_open polls its argfile forever after EOF: an rfwatch killed by kill -9 or a crash must not
    leave it spinning (it did: 43 of them after one run of this suite)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_USER, str(jpeg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    pid = int(proc.stdout.readline())
    assert _running(pid), "the exiftool died with the thread that started it"
    proc.communicate("\n", timeout=30)
    assert proc.returncode == 9
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid), f"exiftool {pid} outlived the process that started it"


CRASHING_ONESHOT_USER = """
import sys
from rfwatch.images.exiftool import run_oneshot
run_oneshot(["-XMP-dc:Subject+=x"], sys.argv[1], 60, executable=sys.argv[2])  # killed with us, mid-write
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_one_shot_exiftool_dies_with_the_process_that_ran_it(tmp_path):
    """A one-shot exiftool (a file name the argfile cannot carry) still running when rfwatch is killed must not go
    on writing the file while a restarted rfwatch carries the same step on. Here "exiftool" is a stand-in that
    says its pid and then takes its time, as a write of a large file does."""
    target = tmp_path / "two\nlines.jpg"
    make_jpeg(target)
    pidfile = tmp_path / "exiftool.pid"
    slow = tmp_path / "slow-exiftool"
    slow.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 60\n")
    slow.chmod(0o755)
    user = subprocess.Popen([sys.executable, "-c", CRASHING_ONESHOT_USER, str(target), str(slow)])
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=30, what="the one-shot started")
        pid = int(pidfile.read_text())
        assert _running(pid)
    finally:
        user.kill()  # kill -9
        user.wait()
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid), f"the one-shot exiftool {pid} outlived the rfwatch that ran it"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_an_exiftool_whose_rfwatch_died_before_it_started_exits_at_once():
    """The parent-death signal is set after the fork: if rfwatch died in between, nobody would send it."""
    from rfwatch.images import exiftool

    not_our_parent = "1"  # what getppid() says once the parent has died and init adopted the child
    cmd = [sys.executable, "-I", "-S", "-c", exiftool._DIE_WITH_PARENT, not_our_parent, "exiftool", "-ver"]
    done = subprocess.run(cmd, capture_output=True, timeout=30)
    assert done.returncode == 1 and done.stdout == b"", "exiftool ran although rfwatch was gone"


def test_close_ends_every_process(tmp_path, jpeg):
    pool = ExifToolPool(2)
    files = [make_jpeg(tmp_path / f"c{i}.jpg") for i in range(8)]
    threads = [threading.Thread(target=lambda f=f: pool.run(add("c"), f, 20)) for f in files]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    procs = [t.process for t in pool.tools]
    assert procs and all(p is not None and p.poll() is None for p in procs)
    pool.close()
    assert all(p.returncode is not None and p.returncode >= 0 for p in procs)  # exited, not killed
    assert all(t.process is None for t in pool.tools)
    with pytest.raises(ExifToolError, match="closed"):
        pool.run(add("late"), jpeg, 10)


def test_close_kills_a_process_that_does_not_exit(jpeg):
    pool = ExifToolPool(1)
    pool.run(add("x"), jpeg, 10)
    proc = the_process(pool)
    _stop(proc.pid)
    pool.close(timeout=0.5)
    assert proc.returncode == -signal.SIGKILL


# ------------------------------------------------------------------------------------------------------------
# what the argfile cannot carry, and file names


@pytest.mark.parametrize(
    "arg, carried",
    [
        (b"-XMP-dc:Subject+=kw", True),
        (b"-XMP-dc:Subject+=#hashtag", True),
        (b"-XMP-dc:Subject+=trailing ", True),
        (b"-XMP-dc:Subject+=caf\xc3\xa9", True),
        (b"-P", True),
        (b"-XMP-dc:Subject+=two\nlines", False),
        (b"-XMP-dc:Subject+=cr\r", False),
        (b"", False),
        (b"#comment", False),
        (b" -P", False),
        (b"-XMP-dc:Subject+= leading", False),
        (b"-XMP-dc:Subject = x", False),
        (b"-execute", False),
        (b"-EXECUTE7", False),
        (b"-stay_open", False),
        (b"-@", False),
    ],
)
def test_argfile_problem(arg, carried):
    assert (argfile_problem(arg) is None) is carried


def test_newline_in_a_file_name_falls_back_to_one_shot(tmp_path, pool):
    path = make_jpeg(tmp_path / "two\nlines.jpg")
    assert "line break" in oneshot_reason(add("kw"), path)
    result = pool.run(add("newline"), path, 10)
    assert result.oneshot and result.updated == 1
    assert not pool.tools  # no process was started for it
    assert subject(path) == ["newline"]


def test_arguments_the_argfile_would_change_keep_every_character(jpeg, pool):
    result = pool.run([*add(" leading space"), *add("two\nlines")], jpeg, 10)
    assert result.oneshot
    assert subject(jpeg) == [" leading space", "two\nlines"]


def test_non_utf8_file_name(tmp_path, pool):
    path = make_jpeg(os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg"))
    assert oneshot_reason(add("kw"), path) is None  # bytes pass through the argfile unchanged
    result = pool.run(add("latin1"), path, 10)
    assert not result.oneshot and result.updated == 1
    assert pool.run(add("as-str"), os.fsdecode(path), 10).updated == 1  # surrogate-escaped str, same file
    both = make_jpeg(os.path.join(os.fsencode(tmp_path), b"caf\xe9\n.jpg"))  # and the one-shot path
    assert pool.run(add("oneshot"), both, 10).oneshot
    assert subject(path) == ["latin1", "as-str"]
    assert subject(both) == ["oneshot"]


def test_relative_names_and_working_directory(tmp_path, pool, monkeypatch):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    make_jpeg(tmp_path / "one" / "-dash.jpg")
    make_jpeg(tmp_path / "two" / "-dash.jpg")
    monkeypatch.chdir(tmp_path / "one")
    assert not pool.run(add("one"), "-dash.jpg", 10).oneshot  # sent as ./-dash.jpg, not an option
    monkeypatch.chdir(tmp_path / "two")
    pool.run(add("two"), Path("-dash.jpg"), 10)
    assert pool.tools[0].starts == 2  # restarted in the new directory
    assert subject(tmp_path / "one" / "-dash.jpg") == ["one"]
    assert subject(tmp_path / "two" / "-dash.jpg") == ["two"]


# ------------------------------------------------------------------------------------------------------------
# errors


def test_not_an_image_raises_with_exiftools_message_and_leaves_the_file(tmp_path, pool):
    bad = tmp_path / "text.jpg"
    bad.write_text("not a jpeg\n")
    for name in (bad, tmp_path / "text\n.jpg"):  # stay-open and one-shot say the same
        if name != bad:
            shutil.copy(bad, name)
        with pytest.raises(
            ExifToolError, match=r"(?s)exiftool failed on .*text.*\.jpg: Error: Not a valid JPG"
        ) as info:
            pool.run(add("kw"), name, 10)
        assert info.value.result is not None and info.value.result.failed == 1
        assert name.read_text() == "not a jpeg\n"
    assert {p.name for p in tmp_path.iterdir()} == {"text.jpg", "text\n.jpg"}  # no _exiftool_tmp, no _original


def test_missing_file_and_nothing_written_raise(tmp_path, jpeg, pool):
    with pytest.raises(ExifToolError, match="File not found"):
        pool.run(add("kw"), tmp_path / "missing.jpg", 10)
    with pytest.raises(ExifToolError, match="not defined"):
        pool.run(["-XMP-nosuch:Tag=1"], jpeg, 10)
    with pytest.raises(ExifToolError, match="did not write"):
        pool.run(["-XMP-dc:Subject"], jpeg, 10)  # a read where a write was expected
    assert pool.run(add("fine"), jpeg, 10).updated == 1  # the process is still in step
    assert pool.tools[0].starts == 1


def test_shared_pool_is_one_per_config_and_replaced_when_closed():
    try:
        first = shared_pool()
        assert shared_pool(DEFAULT_CONFIG) is first
        assert shared_pool(size=3) is first and first.size == 3
        close_shared_pools()
        assert first.closed and shared_pool() is not first
    finally:
        close_shared_pools()
