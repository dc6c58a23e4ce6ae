"""Benchmark rfwatch end to end against the official `roboflow` client on a simulated real link.

    pip install -e . -r bench/requirements.txt
    python bench/run.py                 # full run, writes docs/benchmarks.md
    python bench/run.py --quick         # a smaller run for a sanity check

A local server speaks the Roboflow protocol with a configurable API latency
(default 150 ms +- 50 ms) behind one shared uplink (default 50 Mbit/s: each
request body holds the link for its size / bandwidth, in arrival order) and
records the bytes of every request. rfwatch runs as a real daemon process:
a file is renamed into the inbox (it appears complete) and is timed until it
shows up in its class folder. The official client runs in a loop over the
same files, sorting each with shutil.move, as a user's ten-line script would.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from PIL import Image, ImageDraw, ImageFilter  # noqa: E402
from roboflow_server import VALID_KEY, RoboflowServer  # noqa: E402

SAMPLES = Path(os.environ.get("RFWATCH_SAMPLES", REPO.parent / "shared" / "samples")) / "exif-samples" / "jpg"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- workloads ------------------------------------------------------------------


def camera_like(width: int, height: int, seed: int) -> bytes:
    """A JPEG with a camera's entropy: smooth structure, shapes with soft edges and per-pixel sensor noise.

    Tuned so that the official client's full-size q90 re-encode of a 12 MP file is a ~6 MB base64
    body, as the issue measured on real camera files. EXIF orientation 6 (a phone held upright).
    """
    rnd = random.Random(seed)
    small = Image.merge("RGB", [Image.effect_noise((width // 48, height // 48), 60 + 10 * i) for i in range(3)])
    base = small.resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(80):
        x, y, r = rnd.randrange(width), rnd.randrange(height), rnd.randrange(20, width // 6)
        fill = tuple(rnd.randrange(256) for _ in range(3)) if rnd.random() < 0.3 else None
        draw.ellipse(
            (x - r, y - r, x + r, y + r),
            fill=fill,
            outline=tuple(rnd.randrange(256) for _ in range(3)),
            width=rnd.randrange(1, 6),
        )
    base = base.filter(ImageFilter.GaussianBlur(1.5))
    noise = Image.merge("RGB", [Image.effect_noise((width, height), 30) for _ in range(3)])
    img = Image.blend(base, noise, 0.35)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees, as a phone held upright writes it
    exif[0x010F], exif[0x0110] = "BenchCam", "Model 12"
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, exif=exif)
    return buf.getvalue()


def unique_variant(jpeg: bytes, n: int) -> bytes:
    """Same picture, different bytes (a JPEG comment), so no two files share a content hash."""
    comment = f"bench variant {n}".encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]


def build_workloads(cache: Path, count: int) -> dict[str, list[Path]]:
    cache.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {}
    for label, (w, h) in (("12 MP", (4000, 3000)), ("24 MP", (6000, 4000))):
        folder = cache / label.replace(" ", "")
        folder.mkdir(exist_ok=True)
        bases = []
        for b in range(2):
            base_file = folder / f"base{b}.jpg"
            if not base_file.exists():
                base_file.write_bytes(camera_like(w, h, seed=b))
            bases.append(base_file.read_bytes())
        files = []
        for i in range(count):
            f = folder / f"IMG_{i:04}.jpg"
            if not f.exists():
                f.write_bytes(unique_variant(bases[i % 2], i))
            files.append(f)
        out[label] = files
    camera = sorted(SAMPLES.glob("*.jpg"))
    if camera:
        out[f"camera samples ({len(camera)} files)"] = camera
    return out


# --- measuring a process ------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def write_config(folder: Path, server: RoboflowServer, concurrency: int, settle: float) -> Path:
    cfg = folder / "config.yaml"
    cfg.write_text(
        json.dumps(
            {
                "roboflow": {"model": "colors/1", "api_url": server.url, "timeout": 120},
                "state": "state/journal.db",
                "concurrency": concurrency,
                "watch": [{"path": "inbox", "settle": settle}],
                "rules": [{"name": "sort", "then": [{"move": "sorted/{class}/{name}"}]}],
            }
        )
    )
    (folder / "inbox").mkdir()
    return cfg


def start_rfwatch(cfg: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rfwatch", "run", "-c", str(cfg), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
    )
    deadline = time.monotonic() + 30
    state = cfg.parent / "state" / "journal.db"
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # observers up
    return proc


def run_rfwatch(
    files: list[Path], concurrency: int, server: RoboflowServer, work: Path, settle: float, pace: float = 0.0
) -> dict:
    """Each file is timed from the moment it is complete in the inbox until it is in its class folder.

    Without ``pace`` the files arrive as one burst, renamed in complete (a finished upload). With
    ``pace`` they are written fresh, one every ``pace`` seconds, under a temporary name and renamed
    when closed, so the settle time applies in full.
    """
    folder = Path(tempfile.mkdtemp(dir=work))
    cfg = write_config(folder, server, concurrency, settle)
    staging = folder / "staging"
    staging.mkdir()
    for f in files:
        shutil.copyfile(f, staging / f.name)
    proc = start_rfwatch(cfg, folder / "rfwatch.log")
    cpu0 = cpu_seconds(proc.pid)
    first_request = len(server.requests)
    dropped: dict[str, float] = {}
    moved: dict[str, float] = {}
    sorted_dir = folder / "sorted" / "red"
    started = time.monotonic()
    pending = list(files)
    deadline = started + 60 + 10 * len(files)
    while len(moved) < len(files) and time.monotonic() < deadline:
        if pending and (not pace or time.monotonic() >= started + pace * len(dropped)):
            f = pending.pop(0)
            if pace:
                part = folder / "inbox" / (f.name + ".part")
                part.write_bytes((staging / f.name).read_bytes())
                os.rename(part, folder / "inbox" / f.name)
            else:
                os.rename(staging / f.name, folder / "inbox" / f.name)
            dropped[f.name] = time.monotonic()
            if not pace:
                continue
        if sorted_dir.is_dir():
            now = time.monotonic()
            for entry in os.scandir(sorted_dir):
                moved.setdefault(entry.name, now)
        time.sleep(0.005)
    cpu = cpu_seconds(proc.pid) - cpu0
    rss = peak_rss_mb(proc.pid)
    proc.terminate()
    proc.wait(timeout=60)
    requests = server.requests[first_request:]
    latencies = [moved[n] - dropped[n] for n in moved if n in dropped]
    span = max(moved.values()) - min(dropped.values()) if moved else float("nan")
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "files": len(files),
        "done": len(moved),
        "seconds": span,
        "fps": len(moved) / span if moved else 0.0,
        "p50": pct(latencies, 0.5),
        "p95": pct(latencies, 0.95),
        "bytes": statistics.mean(r.body_bytes for r in requests) if requests else float("nan"),
        "cpu": cpu / max(1, len(moved)),
        "rss": rss,
    }


def run_official(files: list[Path], server: RoboflowServer, work: Path) -> dict:
    folder = Path(tempfile.mkdtemp(dir=work))
    copies = []
    for f in files:
        shutil.copyfile(f, folder / f.name)
        copies.append(str(folder / f.name))
    first_request = len(server.requests)
    env = dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY)
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "official_client.py"), server.url, str(folder / "sorted"), *copies],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"official client run failed: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    requests = server.requests[first_request:]
    shutil.rmtree(folder, ignore_errors=True)
    done = len(result["times"])
    return {
        "files": len(files),
        "done": done,
        "seconds": result["seconds"],
        "fps": done / result["seconds"] if done else 0.0,
        "p50": pct(result["times"], 0.5),
        "p95": pct(result["times"], 0.95),
        "bytes": statistics.mean(r.body_bytes for r in requests) if requests else float("nan"),
        "cpu": result["cpu"] / max(1, done),
        "failures": result["failures"],
    }


def backlog_rss(server: RoboflowServer, work: Path, count: int, seconds: float) -> dict:
    """Peak RSS of the daemon while a backlog of `count` small files is queued."""
    folder = Path(tempfile.mkdtemp(dir=work))
    cfg = write_config(folder, server, 8, 1.0)
    inbox = folder / "inbox"
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 20, 20)).save(buf, "JPEG")
    template = buf.getvalue()
    for i in range(count):
        sub = inbox / f"d{i // 1000:03}"
        if i % 1000 == 0:
            sub.mkdir()
        (sub / f"f{i:06}.jpg").write_bytes(unique_variant(template, i))
    proc = start_rfwatch(cfg, folder / "rfwatch.log")
    time.sleep(seconds)
    rss = peak_rss_mb(proc.pid)
    proc.terminate()
    proc.wait(timeout=120)
    import sqlite3

    db = sqlite3.connect(folder / "state" / "journal.db")
    processed = db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    db.close()
    shutil.rmtree(folder, ignore_errors=True)
    return {"files": count, "seconds": seconds, "rss": rss, "processed": processed}


def cpu_breakdown(path: Path, repeat: int = 5) -> list[tuple[str, float]]:
    """Where one file's CPU goes, stage by stage (best of `repeat`, milliseconds)."""
    import hashlib

    from PIL import ImageOps

    from rfwatch.prepare import _draft_request, _encode, _to_rgb

    def best(fn) -> float:
        times = []
        for _ in range(repeat):
            t = time.process_time()
            fn()
            times.append(time.process_time() - t)
        return min(times) * 1000

    def full_decode():
        with Image.open(path) as img:
            img.load()

    def draft_decode(scale_for: int = 1024):
        with Image.open(path) as img:
            img.draft("RGB", _draft_request(img.size, scale_for))
            img.load()
            return img.copy()

    def half_decode():
        with Image.open(path) as img:
            img.draft("RGB", (img.width // 2, img.height // 2))
            img.load()

    drafted = draft_decode()
    upright = ImageOps.exif_transpose(drafted)
    small = _to_rgb(upright).copy()
    small.thumbnail((1024, 1024), Image.Resampling.LANCZOS)
    return [
        ("sha256 of the file", best(lambda: hashlib.sha256(path.read_bytes()).hexdigest())),
        ("decode at full size (what the official client does)", best(full_decode)),
        ("decode at 1/2 scale", best(half_decode)),
        ("decode at the draft scale rfwatch picks", best(draft_decode)),
        ("rotate upright (EXIF orientation)", best(lambda: ImageOps.exif_transpose(drafted))),
        (
            f"resize the {upright.width}x{upright.height} draft to at most 1024 px (LANCZOS; none needed below 1024)",
            best(lambda: _to_rgb(upright).copy().thumbnail((1024, 1024), Image.Resampling.LANCZOS)),
        ),
        ("encode JPEG q90", best(lambda: _encode(small, 90))),
    ]


def upload_tradeoffs(path: Path) -> list[tuple[str, float]]:
    """Base64 upload size of one file at other max_size / jpeg_quality settings (kB)."""
    from rfwatch.prepare import prepare_image

    out = []
    for max_size, quality in ((1024, 90), (1024, 80), (768, 90), (768, 80)):
        out.append(
            (
                f"max_size {max_size}, jpeg_quality {quality}",
                len(prepare_image(path, max_size, quality).jpeg) * 4 / 3 / 1000,
            )
        )
    return out


# --- report -----------------------------------------------------------------------------


def fmt(v: float, unit: str = "", digits: int = 2) -> str:
    if v != v:  # NaN
        return "-"
    return f"{v:.{digits}f}{unit}"


def kb(v: float) -> str:
    return "-" if v != v else f"{v / 1000:,.0f} kB"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}, {platform.platform()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.150, help="API latency in seconds (default 0.150)")
    ap.add_argument("--jitter", type=float, default=0.050, help="+- jitter on the latency (default 0.050)")
    ap.add_argument("--uplink-mbit", type=float, default=50.0, help="shared uplink in Mbit/s (default 50)")
    ap.add_argument("--files", type=int, default=48, help="files per rfwatch run (default 48)")
    ap.add_argument("--official-files", type=int, default=12, help="files for the official client (default 12)")
    ap.add_argument("--concurrency", default="1,4,8,16")
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--backlog", type=int, default=100_000, help="files in the backlog RSS run (0 skips it)")
    ap.add_argument("--backlog-seconds", type=float, default=45.0)
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    ap.add_argument("--quick", action="store_true", help="8 files, concurrency 1,8, 10,000-file backlog")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    if args.quick:
        args.files, args.official_files, args.concurrency, args.backlog = 8, 4, "1,8", 10_000
        args.backlog_seconds = 15.0
    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="rfwatch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    command = "python bench/run.py " + " ".join(sys.argv[1:])

    print(f"generating workloads in {work} ...", flush=True)
    workloads = build_workloads(work / "cache", max(args.files, args.official_files))
    server = RoboflowServer().start()
    server.latency, server.jitter = args.latency, args.jitter
    server.uplink_bps = args.uplink_mbit * 1e6
    server.decode_images = False
    server.keep_images = False
    # The official client now posts to serverless.roboflow.com, which takes bodies up to 20 MB
    # (the legacy host's 5 MB would reject its 12 MP uploads outright).
    server.max_body = 20 * 1000 * 1000

    rows: list[tuple[str, str, dict]] = []
    try:
        for label, files in workloads.items():
            n = min(len(files), args.files)
            for c in levels:
                print(f"rfwatch, {label}, concurrency {c} ...", flush=True)
                rows.append((label, f"rfwatch c={c}", run_rfwatch(files[:n], c, server, work, args.settle)))
            print(f"official client, {label} ...", flush=True)
            # The slow official client gets fewer of the generated files; the small samples all of them,
            # so both upload the very same pictures there.
            m = n if label.startswith("camera") else min(n, args.official_files)
            rows.append((label, "official client", run_official(files[:m], server, work)))
        print("latency when not saturated (12 MP, one file every 0.5 s, concurrency 8) ...", flush=True)
        paced = run_rfwatch(workloads["12 MP"][: min(40, args.files)], 8, server, work, args.settle, pace=0.5)
        backlog = None
        if args.backlog:
            print(f"peak RSS with a {args.backlog:,}-file backlog ...", flush=True)
            server.latency = 0.0
            server.uplink_bps = 0.0
            backlog = backlog_rss(server, work, args.backlog, args.backlog_seconds)
    finally:
        server.stop()

    twelve = workloads["12 MP"][0]
    report = render(rows, paced, backlog, args, command, cpu_breakdown(twelve), upload_tradeoffs(twelve))
    print("\n" + report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def render(rows, paced, backlog, args, command, breakdown, tradeoffs) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{command}` on {dt.date.today().isoformat()}.",
        f"Machine: {machine()}.",
        f"Simulated API: {args.latency * 1000:.0f} ms +- {args.jitter * 1000:.0f} ms latency behind a shared "
        f"{args.uplink_mbit:g} Mbit/s uplink, 20 MB body limit (serverless v2); watch `settle` {args.settle:g} s.",
        "rfwatch runs as a daemon process (default settings: max_size 1024, JPEG quality 90); each file is timed",
        "from appearing complete in the inbox to being in its class folder. The official client (`roboflow`",
        "package, `ClassificationModel.predict`) runs in a loop over the same files and sorts each with",
        "`shutil.move`. 12 and 24 MP files are generated (see `camera_like` in bench/run.py); the camera",
        "samples are the real, small files from shared/samples.",
        "",
        "| workload | client | files | files/s | p50 latency | p95 latency | upload per file | CPU s per file |",
        "|---|---|---|---|---|---|---|---|",
    ]
    official = {label: r for label, who, r in rows if who == "official client"}
    for label, who, r in rows:
        done = f"{r['done']}/{r['files']}"
        lines.append(
            f"| {label} | {who} | {done} | {fmt(r['fps'])} | {fmt(r['p50'], ' s')} | "
            f"{fmt(r['p95'], ' s')} | {kb(r['bytes'])} | {fmt(r['cpu'], '', 3)} |"
        )
    lines += [
        "",
        "In the burst runs every file arrives at once, so their latency includes queueing; the paced run "
        "below is the latency of a single file. The benchmark's own server and harness share the two "
        "cores with rfwatch, which is where throughput levels off at concurrency 8-16.",
    ]
    lines += [
        "",
        "Ratios against the official client (rfwatch at its best concurrency):",
        "",
        "| workload | throughput | bytes uploaded | CPU per file |",
        "|---|---|---|---|",
    ]
    ratios = {}
    for label, base in official.items():
        ours = [r for lab, who, r in rows if lab == label and who != "official client"]
        best = max(ours, key=lambda r: r["fps"])
        t = best["fps"] / base["fps"] if base["fps"] else float("inf")
        b = base["bytes"] / best["bytes"] if best["bytes"] == best["bytes"] and best["bytes"] else float("nan")
        c = base["cpu"] / best["cpu"] if best["cpu"] else float("nan")
        ratios[label] = (t, b)
        lines.append(f"| {label} | {fmt(t, 'x', 1)} | {fmt(b, 'x fewer', 1)} | {fmt(c, 'x less', 1)} |")
    lines += [
        "",
        f"Not saturated (12 MP, one file every 0.5 s, concurrency 8): p50 {fmt(paced['p50'], ' s')}, "
        f"p95 {fmt(paced['p95'], ' s')} from the file appearing to it being in its class folder "
        f"(target: under settle + 2 x latency = {args.settle + 2 * args.latency:.2f} s).",
    ]
    if backlog:
        lines += [
            "",
            f"Backlog: peak RSS {backlog['rss']:.0f} MB while {backlog['files']:,} small files were "
            f"queued ({backlog['processed']:,} journaled in the first {backlog['seconds']:.0f} s; target "
            "under 200 MB).",
        ]
    for label, base in official.items():
        if base.get("failures"):
            lines += [
                "",
                f"Official client failures on {label}: {len(base['failures'])} of {base['files']}, e.g. "
                f"`{base['failures'][0]}`",
            ]
    lines += ["", "## Where the CPU goes (one 12 MP file, best of 5, CPU ms)", "", "| stage | ms |", "|---|---|"]
    lines += [f"| {stage} | {ms:.0f} |" for stage, ms in breakdown]
    official_12 = official.get("12 MP", {}).get("bytes", float("nan"))
    lines += [
        "",
        "## Upload size against settings (the same 12 MP file, base64)",
        "",
        "| settings | upload | fewer bytes than the official client |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {size:.0f} kB | {official_12 / 1000 / size:.1f}x |" for label, size in tradeoffs]
    lines += ["", "## Targets", ""]
    t12, b12 = ratios.get("12 MP", (float("nan"), float("nan")))
    lines.append(
        f"- Throughput on 12 MP JPEGs at least 20x the official client: {fmt(t12, 'x', 1)} "
        f"({'met' if t12 >= 20 else 'missed'})."
    )
    lines.append(
        f"- At least 50x fewer bytes uploaded on 12 MP: {fmt(b12, 'x', 1)} ({'met' if b12 >= 50 else 'missed'})."
    )
    if b12 < 50:
        lines.append(
            "  With the defaults the issue fixes (longest side 1024 px, JPEG quality 90) the upload is "
            "a 1000x750 picture (the 1/4 draft scale), 1/16 of the pixels, and quality 90 keeps much "
            "of the texture a camera records; the ratio is bounded near 30x on this content. The table "
            "above shows what `jpeg_quality` and `max_size` buy on a slow link; the defaults are kept "
            "because classification accuracy is the model owner's call."
        )
    target = args.settle + 2 * args.latency
    lines.append(
        f"- p95 latency under settle + 2 x latency ({target:.2f} s) when not saturated: "
        f"{fmt(paced['p95'], ' s')} ({'met' if paced['p95'] < target else 'missed'})."
    )
    if backlog:
        lines.append(
            f"- Peak RSS under 200 MB with a {backlog['files']:,}-file backlog: {backlog['rss']:.0f} MB "
            f"({'met' if backlog['rss'] < 200 else 'missed'})."
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
