#!/usr/bin/env python3
"""A bounded load test of a moe-alexnet server, on the loopback interface only.

N requests (default 2000) post real photos (scikit-image's astronaut, coffee, chelsea,
rocket, as JPEG) to /v1/classify, then it stops by itself (also after --max-seconds);
`--images fashion-mnist` posts Fashion-MNIST test images (28 x 28 PNG) instead, what a
model of that domain is sent.
Closed loop (default): C concurrent clients (default 16), each sending its next request
when its answer arrives. Open loop (`--rate R`): requests arrive at R per second with
exponential gaps (a Poisson process, as Triton's perf_analyzer does with
`--request-distribution poisson`), whether or not earlier ones are answered, and each
latency counts from its scheduled arrival, so a server that falls behind shows it.
At most `--connections` requests (default 256) are in flight; later arrivals wait for a
free connection, their latency counted from their arrival all the same, and with a
deadline each sends what is left of it (one whose deadline passed unsent counts as
expired).
`--rate R1,R2 --duration S1,S2` runs phases one after another (say an overload, then
light load) and reports each (with, per precision and k, the arrival of the last request
answered at it: when the server went back to full precision). `--deadline-ms D` sends
that deadline with every request; goodput counts the answers within it. It reports
offered rate, throughput, goodput, p50/p95/p99 latency, errors by status, the share of
answers per precision and k, the mean batch size the server ran (from its /metrics), the
server's resident memory (VmRSS) during the first and the last 500 requests, which shows
whether memory grows under load, and the CPU time the client and the server spent per
request (on a machine they share, the client's share is taken from the server's
compute: it keeps its own small with one keep-alive connection per client and a
minimal HTTP/1.1 exchange instead of a general-purpose HTTP library).

Either point it at a running server and give its pid (for the memory figures):

    python scripts/loadtest.py --url http://127.0.0.1:8000 --server-pid 1234

or let it start one (on a free port) and stop it afterwards:

    python scripts/loadtest.py --start -- --models alexnet --random-weights
"""

from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
EXPIRED = "expired waiting for a connection"  # open loop: its deadline passed unsent
FASHION_IMAGES = 64  # test images sent in turn with --images fashion-mnist
WINDOW = 500  # requests in the "first" and "last" memory windows


def loopback_url(url: str) -> str:
    """Refuse any target but this machine's loopback interface."""
    host = urlsplit(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise SystemExit(f"loadtest: {url}: only loopback targets (127.0.0.0/8, ::1, localhost)")
    return url.rstrip("/")


def request_images(kind: str) -> tuple[str, list[tuple[str, bytes]]]:
    """(content type, named encoded images) of `--images`."""
    if kind == "photos":
        return "image/jpeg", photos()
    from PIL import Image

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from experts.data.fashion_mnist import DatasetError, load_fashion_mnist

    try:
        images = load_fashion_mnist("test")[0][:FASHION_IMAGES]
    except DatasetError as exc:
        raise SystemExit(f"loadtest: {exc}") from exc
    out = []
    for i, pixels in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG")
        out.append((f"fashion-{i}", buf.getvalue()))
    return "image/png", out


def photos() -> list[tuple[str, bytes]]:
    try:
        from skimage import data
    except ImportError as exc:
        raise SystemExit(
            "loadtest: scikit-image is needed for the photos (pip install scikit-image)"
        ) from exc
    from PIL import Image

    out = []
    for name in PHOTOS:
        buf = io.BytesIO()
        Image.fromarray(getattr(data, name)()).convert("RGB").save(buf, "JPEG", quality=90)
        out.append((name, buf.getvalue()))
    return out


def rss_bytes(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else None


def batch_totals(metrics_text: str, model: str | None) -> tuple[float, float]:
    """(sum, count) of moe_batch_size over the model's series (all models if None)."""
    totals = {"sum": 0.0, "count": 0.0}
    for kind in totals:
        for labels, value in re.findall(
            rf"^moe_batch_size_{kind}\{{([^}}]*)\}} (\S+)$", metrics_text, re.M
        ):
            if model is None or f'model="{model}"' in labels:
                totals[kind] += float(value)
    return totals["sum"], totals["count"]


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs a body and reads the answer.

    Only what this server sends is understood (a status line, headers with
    Content-Length, the body); the connection is reopened when the server closes it.
    """

    def __init__(self, url: str, path: str, content_type: str) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "127.0.0.1", parts.port or 80, path
        self.headers = f"Host: {parts.netloc}\r\nContent-Type: {content_type}\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes, path: str | None = None) -> tuple[int, bytes]:
        """POST `body` to `path` (default: the connection's)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        line = f"POST {path or self.path} HTTP/1.1\r\n".encode()
        length = f"Content-Length: {len(body)}\r\n\r\n".encode()
        self.writer.write(line + self.headers + length + body)
        try:
            header = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.close()
            raise ConnectionError("the server closed the connection") from None
        lines = header.decode("latin-1").split("\r\n")
        fields = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        try:
            status, length = int(lines[0].split(" ", 2)[1]), int(fields["content-length"])
        except (IndexError, KeyError, ValueError):
            await self.close()
            raise ConnectionError(f"an answer this client cannot read: {lines[0]!r}") from None
        content = await self.reader.readexactly(length)
        if fields.get("connection") == "close":
            await self.close()
        return status, content

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except ConnectionError:
                pass
        self.reader = self.writer = None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (from /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Answer:
    """One request's outcome: its phase, when it arrived (seconds from the phase's
    start; closed loop: from the run's), its status, latency and what it ran with."""

    phase: int
    at_s: float
    status: str
    latency_s: float
    used: tuple[str, ...] = ()  # "precision" or "precision k=K" per image answered


def used_by(content: bytes) -> tuple[str, ...]:
    """The precision (and a mixture's k) each answer in a 200's body says it ran with."""
    try:
        doc = json.loads(content)
    except ValueError:
        return ()
    keys = []
    for answer in doc if isinstance(doc, list) else [doc]:
        if isinstance(answer, dict):
            key = str(answer.get("precision"))
            if isinstance(answer.get("experts"), list):
                key += f" k={len(answer['experts'])}"
            keys.append(key)
    return tuple(keys)


@dataclass
class Run:
    total: int
    answers: list[Answer] = field(default_factory=list)
    rss_first: list[int] = field(default_factory=list)
    rss_last: list[int] = field(default_factory=list)
    offered_s: float = 0.0  # open loop: from the start to the last arrival
    sent: int = 0  # open loop: requests sent

    @property
    def done(self) -> int:
        return len(self.answers)


def summary(answers: list[Answer], deadline_ms: float | None) -> dict:
    """Counts, goodput share, latency percentiles and the answers per precision and k."""
    ok = [a for a in answers if a.status == "200"]
    lat = np.array([a.latency_s for a in ok]) * 1e3
    within = lat if deadline_ms is None else lat[lat <= deadline_ms]
    errors: dict[str, int] = {}
    used: dict[str, int] = {}
    last: dict[str, float] = {}
    for a in answers:
        if a.status != "200":
            errors[a.status] = errors.get(a.status, 0) + 1
        for key in a.used:
            used[key] = used.get(key, 0) + 1
            last[key] = max(last.get(key, 0.0), a.at_s)

    def percentile(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 2) if lat.size else None

    return {
        "requests": len(answers),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "errors_by_status": errors,
        "within_deadline": int(within.size),
        "goodput_share": round(within.size / len(answers), 4) if answers else 0.0,
        "answers_by_precision": used,
        # The arrival (s from the phase's start) of the last request answered at each:
        # after a drop in load, when the lower precisions stopped.
        "last_arrival_s_by_precision": {k: round(v, 2) for k, v in last.items()},
        "latency_ms_p50": percentile(50),
        "latency_ms_p95": percentile(95),
        "latency_ms_p99": percentile(99),
    }


def query_path(args: argparse.Namespace, deadline_ms: float | None = None) -> str:
    """/v1/classify with the run's model, precision, k and deadline (`deadline_ms`: what
    is left of it)."""
    params = {
        "model": args.model,
        "precision": args.precision,
        "k": args.k,
        "deadline_ms": args.deadline_ms if deadline_ms is None else round(deadline_ms, 1),
    }
    query = "&".join(f"{k}={quote(str(v))}" for k, v in params.items() if v is not None)
    return "/v1/classify" + (f"?{query}" if query else "")


def arrivals(args: argparse.Namespace) -> list[tuple[int, float, float]]:
    """Open loop: (phase, seconds from the phase's start, seconds from the run's start)
    of every request. Each phase is a Poisson process at its --rate for its --duration;
    without --duration one phase of --requests arrivals; --requests caps the total."""
    rng = np.random.default_rng(args.seed)
    if args.duration is None:
        times = np.cumsum(rng.exponential(1 / args.rate[0], args.requests))
        return [(0, float(t), float(t)) for t in times]
    out: list[tuple[int, float, float]] = []
    phase_start = 0.0
    for phase, (rate, duration) in enumerate(zip(args.rate, args.duration, strict=True)):
        t = rng.exponential(1 / rate)
        while t < duration:
            out.append((phase, t, phase_start + t))
            t += rng.exponential(1 / rate)
        phase_start += duration
    return out[: args.requests] if args.requests is not None else out


async def load(args: argparse.Namespace, url: str, pid: int | None) -> dict:
    content_type, images = request_images(args.images)
    schedule = arrivals(args) if args.rate else []
    run = Run(len(schedule) if args.rate else args.requests)
    stop_at = time.monotonic() + args.max_seconds
    next_index = iter(range(run.total))

    def sample_rss() -> None:
        if pid is None:
            return
        rss = rss_bytes(pid)
        if rss is None:
            return
        if run.done <= WINDOW:
            run.rss_first.append(rss)
        if run.done >= run.total - WINDOW:
            run.rss_last.append(rss)

    async with httpx.AsyncClient(timeout=args.timeout) as client:
        before = batch_totals((await client.get(f"{url}/metrics")).text, args.model)

        path = query_path(args)
        started = time.perf_counter()

        async def worker() -> None:
            conn = Connection(url, path, content_type)
            try:
                for i in next_index:
                    if time.monotonic() > stop_at:
                        return
                    now = time.perf_counter()
                    await one(conn, images[i % len(images)][1], now, 0, now - started)
            finally:
                await conn.close()

        idle: list[Connection] = []  # open loop: keep-alive connections not in use
        # At most this many requests in flight: past it, arrivals wait for a connection
        # (their latency still counts from their arrival), so that an overloaded server
        # does not make the client open connections without end on the cores they share.
        # As a client with a deadline would, a request sends what is left of it, and one
        # whose deadline passed while it waited is never sent.
        slots = asyncio.Semaphore(args.connections)

        async def arrive(i: int, at: float, phase: int, at_s: float) -> None:
            async with slots:
                waited_ms = (time.perf_counter() - at) * 1e3
                left = None if args.deadline_ms is None else args.deadline_ms - waited_ms
                if left is not None and round(left, 1) <= 0:  # nothing left to send
                    record(Answer(phase, at_s, EXPIRED, waited_ms / 1e3))
                    return
                conn = idle.pop() if idle else Connection(url, path, content_type)
                # A wait of a millisecond or more: the deadline it sends is what is left.
                shorter = left is not None and waited_ms >= 1.0
                path_left = query_path(args, left) if shorter else None
                await one(conn, images[i % len(images)][1], at, phase, at_s, path_left)
                idle.append(conn)

        async def open_loop() -> None:
            """Requests at their Poisson arrival times, answered or not."""
            tasks = []
            for i, (phase, at_s, offset) in enumerate(schedule):
                if time.monotonic() > stop_at:
                    break
                at = started + offset
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                tasks.append(asyncio.create_task(arrive(i, at, phase, at_s)))
            run.offered_s = time.perf_counter() - started
            run.sent = len(tasks)
            await asyncio.gather(*tasks)
            for conn in idle:
                await conn.close()

        async def one(
            conn: Connection,
            data: bytes,
            start: float,
            phase: int,
            at_s: float,
            path: str | None = None,
        ) -> None:
            try:
                try:
                    status, content = await asyncio.wait_for(conn.post(data, path), args.timeout)
                except ConnectionError:
                    # A kept-alive connection the server closed while idle: once more,
                    # on a new one (as HTTP clients do).
                    status, content = await asyncio.wait_for(conn.post(data, path), args.timeout)
                status = str(status)
            except OSError as exc:  # TimeoutError and ConnectionError among them
                await conn.close()
                status, content = type(exc).__name__, b""
            used = used_by(content) if status == "200" else ()
            record(Answer(phase, at_s, status, time.perf_counter() - start, used))

        def record(answer: Answer) -> None:
            run.answers.append(answer)
            if run.done <= WINDOW or run.done >= run.total - WINDOW or run.done % 50 == 0:
                sample_rss()
            if args.progress and run.done % 100 == 0:
                print(f"  {run.done}/{run.total}", file=sys.stderr, flush=True)

        client_cpu = time.process_time()
        server_cpu = cpu_seconds(pid) if pid is not None else None
        sample_rss()
        if args.rate:
            await open_loop()
        else:
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        now = cpu_seconds(pid) if pid is not None else None
        server_cpu = None if now is None or server_cpu is None else now - server_cpu
        sample_rss()
        after = batch_totals((await client.get(f"{url}/metrics")).text, args.model)

    total = summary(run.answers, args.deadline_ms)
    batches = after[1] - before[1]
    mib = 2**20
    offered_s = run.offered_s if args.rate else wall
    rates = "/".join(f"{r:g}" for r in args.rate or ())
    report = {
        "url": url,
        "model": args.model,
        "mode": f"open loop, Poisson {rates}/s" if args.rate else "closed loop",
        "concurrency": None if args.rate else args.concurrency,
        "deadline_ms": args.deadline_ms,
        **total,
        "wall_s": round(wall, 3),
        "offered_rps": round((run.sent if args.rate else run.done) / offered_s, 2)
        if offered_s
        else 0.0,
        "throughput_rps": round(total["ok"] / wall, 2) if wall else 0.0,
        "goodput_rps": round(total["within_deadline"] / wall, 2) if wall else 0.0,
        "mean_batch_size": round((after[0] - before[0]) / batches, 3) if batches else None,
        "server_pid": pid,
        "client_cpu_ms_per_request": round(1e3 * client_cpu / run.done, 2) if run.done else None,
        "server_cpu_ms_per_request": (
            round(1e3 * server_cpu / run.done, 2) if run.done and server_cpu is not None else None
        ),
        "rss_mib_first_500": round(max(run.rss_first) / mib, 1) if run.rss_first else None,
        "rss_mib_last_500": round(max(run.rss_last) / mib, 1) if run.rss_last else None,
        "stopped_early": run.done < run.total,
    }
    if args.duration is not None:
        report["phases"] = [
            {
                "rate": rate,
                "duration_s": duration,
                **summary([a for a in run.answers if a.phase == i], args.deadline_ms),
            }
            for i, (rate, duration) in enumerate(zip(args.rate, args.duration, strict=True))
        ]
    return report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(serve_args: list[str], timeout: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "service.commands.main",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *serve_args,
    ]
    log = open(os.devnull, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.PIPE)
    tail: list[bytes] = []
    threading.Thread(target=lambda: tail.extend(proc.stderr), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = b"".join(tail[-5:]).decode(errors="replace")
            raise SystemExit(f"loadtest: the server exited ({proc.returncode}):\n{msg}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"loadtest: the server was not ready after {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def rates(text: str) -> list[float]:
    """A comma list of positive numbers (--rate, --duration)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of numbers: {text!r}") from None
    if not all(v > 0 and math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"every value must be > 0: {text!r}")
    return values


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The load test's options, and the serve arguments after `--` (with --start)."""
    serve_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, serve_args = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="a loopback server URL")
    p.add_argument("--server-pid", type=int, default=None, help="its pid, for VmRSS")
    p.add_argument(
        "--start",
        action="store_true",
        help="start `moe-alexnet serve` (args after --) on a free port, stop it afterwards",
    )
    p.add_argument(
        "--requests", "-n", type=int, default=None, help="default 2000; with --duration: no cap"
    )
    p.add_argument("--concurrency", "-c", type=int, default=16)
    p.add_argument(
        "--rate",
        type=rates,
        default=None,
        help="open loop: Poisson arrivals at this many requests per second (not -c clients); "
        "R1,R2,... with --duration: phases one after another",
    )
    p.add_argument(
        "--duration",
        type=rates,
        default=None,
        help="open loop: seconds of each --rate phase (S1,S2,...); the report has one "
        "summary per phase",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the open loop's arrivals")
    p.add_argument(
        "--connections",
        type=int,
        default=256,
        help="open loop: requests in flight at most (later arrivals wait for a connection)",
    )
    p.add_argument("--deadline-ms", type=float, default=None, help="each request's deadline")
    p.add_argument(
        "--images",
        choices=("photos", "fashion-mnist"),
        default="photos",
        help="what to post: four photos (JPEG), or Fashion-MNIST test images (PNG)",
    )
    p.add_argument("--model", default=None, help="model to ask for (default: the server's)")
    p.add_argument("--precision", default=None, help="precision to ask for (default: the server's)")
    p.add_argument("--k", default=None, help="a mixture's k to ask for, or auto")
    p.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    p.add_argument("--max-seconds", type=float, default=900.0, help="stop after this long")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="with --start")
    p.add_argument("--progress", action="store_true", help="print progress on stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.requests is None and args.duration is None:
        args.requests = 2000
    if (args.requests is not None and args.requests < 1) or min(
        args.concurrency, args.connections
    ) < 1:
        p.error("--requests, --concurrency and --connections must be >= 1")
    if args.duration is not None and (args.rate is None or len(args.duration) != len(args.rate)):
        p.error("--duration needs --rate, one duration per rate")
    if args.rate is not None and len(args.rate) > 1 and args.duration is None:
        p.error("several --rate phases need their --duration")
    if args.deadline_ms is not None and not args.deadline_ms > 0:
        p.error("--deadline-ms must be > 0")
    return args, serve_args


def run_report(args: argparse.Namespace, serve_args: list[str]) -> dict:
    """Run the load test (starting a server first with --start); returns the report."""
    proc = None
    if args.start:
        proc, url = start_server(serve_args, args.ready_timeout)
        pid = proc.pid
    else:
        url, pid = loopback_url(args.url), args.server_pid
    try:
        report = asyncio.run(load(args, url, pid))
    finally:
        if proc is not None:
            stop_server(proc)
    return report


def main(argv: list[str] | None = None) -> int:
    args, serve_args = parse_args(list(sys.argv[1:] if argv is None else argv))
    report = run_report(args, serve_args)
    pid = report["server_pid"]
    if args.json:
        print(json.dumps(report))
        return 0
    clients = f"{args.concurrency} clients" if not args.rate else report["mode"]
    print(
        f"{report['requests']} requests, {clients}, {report['wall_s']} s: offered "
        f"{report['offered_rps']} req/s, answered {report['throughput_rps']} req/s, p50 "
        f"{report['latency_ms_p50']} ms, p95 {report['latency_ms_p95']} ms, p99 "
        f"{report['latency_ms_p99']} ms"
    )
    if args.deadline_ms is not None:
        print(
            f"goodput (answered within {args.deadline_ms:g} ms): {report['goodput_rps']} req/s, "
            f"{100 * report['goodput_share']:.1f}% of requests"
        )
    print(f"errors: {report['errors']} {report['errors_by_status'] or ''}".rstrip())
    print(f"answers by precision: {report['answers_by_precision']}")
    for i, phase in enumerate(report.get("phases", [])):
        print(
            f"phase {i + 1} ({phase['rate']:g}/s for {phase['duration_s']:g} s): "
            f"{phase['requests']} requests, {100 * phase['goodput_share']:.1f}% within the "
            f"deadline, p99 {phase['latency_ms_p99']} ms, errors {phase['errors_by_status']}, "
            f"answers {phase['answers_by_precision']}, last arrival answered at each (s): "
            f"{phase['last_arrival_s_by_precision']}"
        )
    print(f"mean batch size: {report['mean_batch_size']}")
    cpu = f"CPU per request: client {report['client_cpu_ms_per_request']} ms"
    if report["server_cpu_ms_per_request"] is not None:
        cpu += f", server {report['server_cpu_ms_per_request']} ms"
    print(cpu)
    if pid is not None:
        print(
            f"server RSS (pid {pid}): first {WINDOW} requests {report['rss_mib_first_500']} "
            f"MiB, last {WINDOW} {report['rss_mib_last_500']} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
