#!/usr/bin/env python3
"""A bounded load test of a moe-alexnet server, on the loopback interface only.

N requests (default 2000) post real photos (scikit-image's astronaut, coffee, chelsea,
rocket, as JPEG) to /v1/classify, then it stops by itself (also after --max-seconds).
Closed loop (default): C concurrent clients (default 16), each sending its next request
when its answer arrives. Open loop (`--rate R`): requests arrive at R per second with
exponential gaps (a Poisson process, as Triton's perf_analyzer does with
`--request-distribution poisson`), whether or not earlier ones are answered, and each
latency counts from its scheduled arrival, so a server that falls behind shows it.
`--deadline-ms D` sends that deadline with every request; goodput counts the answers
within it. It reports offered rate, throughput, goodput, p50/p95/p99 latency, errors by
status, the share of answers per precision and k, the mean batch size the server ran
(from its /metrics), and the
server's resident memory (VmRSS) during the first and the last 500 requests, which
shows whether memory grows under load, and the CPU time the client and the server
spent per request (on a machine they share, the client's share is taken from the
server's compute: it keeps its own small with one keep-alive connection per client
and a minimal HTTP/1.1 exchange instead of a general-purpose HTTP library).

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
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
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
class Run:
    total: int
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    done: int = 0
    rss_first: list[int] = field(default_factory=list)
    rss_last: list[int] = field(default_factory=list)
    offered_s: float = 0.0  # open loop: from the start to the last arrival
    sent: int = 0  # open loop: requests sent
    used: dict[str, int] = field(default_factory=dict)  # answers per "precision k"

    def note_answer(self, content: bytes) -> None:
        """Count the precision (and a mixture's k) an answer says it ran with."""
        try:
            doc = json.loads(content)
        except ValueError:
            return
        answers = doc if isinstance(doc, list) else [doc]
        for answer in answers:
            if isinstance(answer, dict):
                key = str(answer.get("precision"))
                if isinstance(answer.get("experts"), list):
                    key += f" k={len(answer['experts'])}"
                self.used[key] = self.used.get(key, 0) + 1


def query_path(args: argparse.Namespace) -> str:
    """/v1/classify with the run's model, precision and deadline."""
    params = {"model": args.model, "precision": args.precision, "deadline_ms": args.deadline_ms}
    query = "&".join(f"{k}={quote(str(v))}" for k, v in params.items() if v is not None)
    return "/v1/classify" + (f"?{query}" if query else "")


async def load(args: argparse.Namespace, url: str, pid: int | None) -> dict:
    images = photos()
    run = Run(args.requests)
    stop_at = time.monotonic() + args.max_seconds
    next_index = iter(range(args.requests))

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

        async def worker() -> None:
            conn = Connection(url, path, "image/jpeg")
            try:
                for i in next_index:
                    if time.monotonic() > stop_at:
                        return
                    await one(conn, images[i % len(images)][1], time.perf_counter())
            finally:
                await conn.close()

        idle: list[Connection] = []  # open loop: keep-alive connections not in use

        async def arrive(i: int, at: float) -> None:
            conn = idle.pop() if idle else Connection(url, path, "image/jpeg")
            await one(conn, images[i % len(images)][1], at)
            idle.append(conn)

        async def open_loop() -> None:
            """Requests at their Poisson arrival times, answered or not."""
            gaps = np.random.default_rng(args.seed).exponential(1 / args.rate, args.requests)
            start, tasks = time.perf_counter(), []
            for i, at in enumerate(start + np.cumsum(gaps)):
                if time.monotonic() > stop_at:
                    break
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                tasks.append(asyncio.create_task(arrive(i, float(at))))
            run.offered_s = time.perf_counter() - start
            run.sent = len(tasks)
            await asyncio.gather(*tasks)
            for conn in idle:
                await conn.close()

        async def one(conn: Connection, data: bytes, start: float) -> None:
            try:
                try:
                    status, content = await asyncio.wait_for(conn.post(data), args.timeout)
                except ConnectionError:
                    # A kept-alive connection the server closed while idle: once more,
                    # on a new one (as HTTP clients do).
                    status, content = await asyncio.wait_for(conn.post(data), args.timeout)
                status = str(status)
            except OSError as exc:  # TimeoutError and ConnectionError among them
                await conn.close()
                status, content = type(exc).__name__, b""
            elapsed = time.perf_counter() - start
            run.done += 1
            if status == "200":
                run.latencies.append(elapsed)
                run.note_answer(content)
            else:
                run.errors[status] = run.errors.get(status, 0) + 1
            if run.done <= WINDOW or run.done >= run.total - WINDOW or run.done % 50 == 0:
                sample_rss()
            if args.progress and run.done % 100 == 0:
                print(f"  {run.done}/{run.total}", file=sys.stderr, flush=True)

        started, client_cpu = time.perf_counter(), time.process_time()
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

    lat = np.array(run.latencies) * 1e3
    batches = after[1] - before[1]
    mib = 2**20
    within = lat if args.deadline_ms is None else lat[lat <= args.deadline_ms]
    offered_s = run.offered_s if args.rate else wall
    return {
        "url": url,
        "model": args.model,
        "mode": f"open loop, Poisson {args.rate:g}/s" if args.rate else "closed loop",
        "requests": run.done,
        "concurrency": None if args.rate else args.concurrency,
        "deadline_ms": args.deadline_ms,
        "ok": len(run.latencies),
        "errors": sum(run.errors.values()),
        "errors_by_status": run.errors,
        "wall_s": round(wall, 3),
        "offered_rps": round((run.sent if args.rate else run.done) / offered_s, 2)
        if offered_s
        else 0.0,
        "throughput_rps": round(len(run.latencies) / wall, 2) if wall else 0.0,
        "goodput_rps": round(len(within) / wall, 2) if wall else 0.0,
        "goodput_share": round(len(within) / run.done, 4) if run.done else 0.0,
        "answers_by_precision": run.used,
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "latency_ms_p95": round(float(np.percentile(lat, 95)), 2) if lat.size else None,
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
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
    p.add_argument("--requests", "-n", type=int, default=2000)
    p.add_argument("--concurrency", "-c", type=int, default=16)
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open loop: Poisson arrivals at this many requests per second (not -c clients)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the open loop's arrivals")
    p.add_argument("--deadline-ms", type=float, default=None, help="each request's deadline")
    p.add_argument("--model", default=None, help="model to ask for (default: the server's)")
    p.add_argument("--precision", default=None, help="precision to ask for (default: the server's)")
    p.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    p.add_argument("--max-seconds", type=float, default=900.0, help="stop after this long")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="with --start")
    p.add_argument("--progress", action="store_true", help="print progress on stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        p.error("--requests and --concurrency must be >= 1")
    if args.rate is not None and not args.rate > 0:
        p.error("--rate must be > 0")
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
