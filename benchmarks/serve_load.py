"""Load test of `masterocr serve`: concurrent clients against the in-process Recognizer.read throughput.

1. In-process baseline: `Recognizer.read(list_of_png_bytes, batch_size=B)` over the same images, for the batch
   size each client count can reach (B = min(clients, --max-batch)): images/s.
2. Starts `masterocr serve` on 127.0.0.1 (a free port) and, for each client count (1, 16, 64), runs that many
   clients for --duration seconds, each sending one real word image per request (multipart) and waiting for
   the answer before the next. Prints requests/s, images/s, p50/p95/p99 latency, errors (non-200, a per-image
   error, or a text that differs from the in-process reading), the server's mean batch, its memory (RSS)
   before and after, and the ratio to the in-process throughput. On a shared machine wall-clock rates move
   with the other load, so it also prints images per CPU-second of the server process against the same for
   the in-process read: the server's own overhead (HTTP, multipart, JSON, threads), whatever else runs.
3. Bad-request phase: 16 good clients run while one more client cycles through bad requests (oversize body,
   too many files, garbage bytes, a decompression bomb, malformed JSON, bad base64, wrong content type);
   every bad request must get its expected answer and every good one must succeed.

The load generator is one process with an async client (httpx2), but on a 2-core machine it still competes
with the server for the CPU: its own CPU time is printed next to the server's. Traffic stays on 127.0.0.1;
every loop is bounded in time and count.

    python benchmarks/serve_load.py                               # master-small, 1/16/64 clients, 20 s each
    python benchmarks/serve_load.py --clients 1 64 --duration 10 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does: idle OpenMP threads sleep

ROOT = Path(__file__).resolve().parents[1]
REAL_WORDS = ROOT.parent / "shared" / "data" / "IIIT5K" / "train"
MAX_REQUESTS_PER_PHASE = 100_000  # a second bound on every loop, besides its duration


def word_images(count: int) -> tuple[list[tuple[str, bytes]], str]:
    """(name, PNG/JPEG bytes) of real word crops (IIIT5K train), or rendered words when the data is absent."""
    labels = REAL_WORDS / "labels.tsv"
    if labels.is_file():
        lines = [line.split("\t")[0] for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]
        step = max(1, len(lines) // count)
        chosen = lines[::step][:count]
        return [(Path(p).name, (REAL_WORDS / p).read_bytes()) for p in chosen], f"{len(chosen)} IIIT5K/train crops"
    from masterocr.data.synth import SyntheticDataset

    ds = SyntheticDataset("94", length=count, seed=0, height=32)
    images = []
    for i in range(count):
        img, _ = ds.render(i)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        images.append((f"synth_{i}.png", buf.getvalue()))
    return images, f"{count} rendered words (../shared/data is absent)"


def in_process(model: str | None, images: list[bytes], batch_sizes: list[int],
               min_seconds: float) -> tuple[dict, dict, list]:
    """{batch size: images/s}, {batch size: images per CPU-second} of Recognizer.read on the image bytes
    (decoding included, as in the server), and the texts it reads (the server must read the same)."""
    import masterocr

    rec = masterocr.load(model)
    texts = [r.text for r in rec.read(images, batch_size=max(batch_sizes))]
    rates, cpu_rates = {}, {}
    for b in batch_sizes:
        rec.read(images[:b], batch_size=b)  # warm-up
        done, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < min_seconds or done < 2 * b:
            chunk = images[done % len(images):][:b]
            if len(chunk) < b:
                chunk = (chunk + images)[:b]
            rec.read(chunk, batch_size=b)
            done += b
        rates[b] = done / (time.perf_counter() - start)
        cpu_rates[b] = done / (time.process_time() - cpu)
    return rates, cpu_rates, texts


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def bomb_png(width: int = 9000, height: int = 9000) -> bytes:
    """A 1x1 PNG whose header claims width x height pixels."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


class Phase:
    def __init__(self):
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.requests = 0


async def good_client(http, url: str, images, texts, phase: Phase, stop_at: float, offset: int) -> None:
    i = offset
    while time.perf_counter() < stop_at and phase.requests < MAX_REQUESTS_PER_PHASE:
        name, data = images[i % len(images)]
        expected = texts[i % len(texts)]
        i += 1
        start = time.perf_counter()
        try:
            r = await http.post(f"{url}/v1/read", files=[("files", (name, data, "image/png"))])
            phase.requests += 1
            if r.status_code != 200:
                phase.errors.append(f"{name}: HTTP {r.status_code} {r.text[:100]}")
                continue
            result = r.json()["results"][0]
            if result["error"] or result["text"] != expected:
                phase.errors.append(f"{name}: {result['error'] or repr(result['text'])} (in-process {expected!r})")
                continue
        except Exception as e:  # noqa: BLE001 - every failure is counted
            phase.requests += 1
            phase.errors.append(f"{name}: {type(e).__name__}: {e}")
            continue
        phase.latencies.append(time.perf_counter() - start)


def bad_requests(max_bytes: int, max_files: int, sample: bytes) -> list[tuple[str, dict, int, str | None]]:
    """(kind, httpx2 request kwargs, expected status, expected per-image error substring)."""
    b64 = base64.b64encode(sample).decode()
    return [
        ("oversize body", {"files": [("files", ("big.png", b"\0" * (max_bytes + 1), "image/png"))]}, 413, None),
        ("too many files", {"files": [("files", (f"{i}.png", sample, "image/png")) for i in range(max_files + 1)]},
         413, None),
        ("garbage image", {"files": [("files", ("junk.png", os.urandom(2000), "image/png"))]}, 200,
         "not an image file"),
        ("decompression bomb", {"files": [("files", ("bomb.png", bomb_png(), "image/png"))]}, 200, "too large"),
        ("malformed JSON", {"content": b'{"images": [', "headers": {"content-type": "application/json"}}, 422, None),
        ("bad base64", {"json": {"images": [{"data": b64[:-3] + "!!!"}]}}, 422, None),
        ("wrong content type", {"content": sample, "headers": {"content-type": "image/png"}}, 415, None),
    ]


async def bad_client(http, url: str, cases, outcome: dict, stop_at: float) -> None:
    n = 0
    while time.perf_counter() < stop_at and n < MAX_REQUESTS_PER_PHASE:
        kind, kwargs, status, error = cases[n % len(cases)]
        n += 1
        sent, ok = outcome.setdefault(kind, [0, 0])
        try:
            r = await http.post(f"{url}/v1/read", **kwargs)
            good = r.status_code == status and (error is None or error in (r.json()["results"][0]["error"] or ""))
        except Exception:  # noqa: BLE001 - a dropped connection is a failure of the expectation
            good = False
        outcome[kind] = [sent + 1, ok + int(good)]
        await asyncio.sleep(0.05)


async def run_phase(url: str, clients: int, seconds: float, images, texts, server_pid: int,
                    bad_cases=None) -> dict:
    import httpx2

    phase = Phase()
    outcome: dict = {}
    limits = httpx2.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx2.AsyncClient(limits=limits, timeout=120) as http:
        await good_client(http, url, images, texts, Phase(), time.perf_counter() + 1.0, 0)  # warm-up
        stats_before = (await http.get(f"{url}/v1/models")).json()["models"][0]["batching"]
        rss_before, server_cpu, own_cpu = rss_mb(server_pid), cpu_seconds(server_pid), time.process_time()
        start = time.perf_counter()
        stop_at = start + seconds
        tasks = [good_client(http, url, images, texts, phase, stop_at, k * 7) for k in range(clients)]
        if bad_cases:
            tasks.append(bad_client(http, url, bad_cases, outcome, stop_at))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
        stats = (await http.get(f"{url}/v1/models")).json()["models"][0]["batching"]
    batches = stats["batches"] - stats_before["batches"]
    lat = sorted(phase.latencies)

    def pct(p: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    server_cpu = cpu_seconds(server_pid) - server_cpu
    return {"clients": clients, "requests": phase.requests, "wall": wall, "rps": phase.requests / wall,
            "ips": len(lat) / wall, "p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99),
            "errors": phase.errors, "mean_batch": (stats["images"] - stats_before["images"]) / max(1, batches),
            "rss_before": rss_before, "rss_after": rss_mb(server_pid),
            "server_cpu": server_cpu / wall, "images_per_cpu_s": len(lat) / max(server_cpu, 1e-9),
            "client_cpu": (time.process_time() - own_cpu) / wall, "bad": outcome}


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx2

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"masterocr serve exited with {proc.returncode}")
        try:
            if httpx2.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"masterocr serve not ready after {timeout:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="bundled name or path (default: the bundled model)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per phase (default 20)")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, in-process and in the server")
    ap.add_argument("--images", type=int, default=256, help="distinct word images sent (default 256)")
    ap.add_argument("--bad-clients", type=int, default=16, help="good clients during the bad-request phase")
    ap.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import torch

    torch.set_num_threads(args.threads)
    named, source = word_images(args.images)
    data = [d for _, d in named]
    batch_sizes = sorted({min(c, args.max_batch) for c in args.clients})
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f} at the start; torch threads {args.threads}; images: {source}")
    rates, cpu_rates, texts = in_process(args.model, data, batch_sizes, min_seconds=max(5.0, args.duration / 2))
    print("# in-process Recognizer.read images/s (per CPU-second): "
          + ", ".join(f"batch {b}: {r:.1f} ({cpu_rates[b]:.1f})" for b, r in rates.items()))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "masterocr.cli.main", "serve", "--port", str(port), "--log-level", "warning",
           "--max-batch", str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms)]
    if args.model:
        cmd += ["--model", args.model]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    results = []
    try:
        wait_ready(url, proc)
        max_bytes, max_files = None, None
        for clients in args.clients:
            res = asyncio.run(run_phase(url, clients, args.duration, named, texts, proc.pid))
            res["in_process"] = rates[min(clients, args.max_batch)]
            res["in_process_cpu"] = cpu_rates[min(clients, args.max_batch)]
            results.append(res)
        import httpx2

        info = httpx2.get(f"{url}/v1/models").json()["models"][0]
        max_bytes, max_files = info["max_upload_bytes"], info["max_files"]
        cases = bad_requests(max_bytes, max_files, data[0])
        bad = asyncio.run(run_phase(url, args.bad_clients, args.duration, named, texts, proc.pid, cases))
        alive = httpx2.get(f"{url}/healthz").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    print(f"# load average {os.getloadavg()[0]:.2f} at the end; batch wait {args.batch_wait_ms} ms, "
          f"max batch {args.max_batch}; {args.duration:.0f} s per phase")
    print("| clients | requests | req/s | img/s | in-process img/s (batch) | server/in-process | p50 ms | p95 ms "
          "| p99 ms | p99/p50 | errors | mean batch | server RSS MB (start -> end) | server CPU | client CPU "
          "| img per CPU-s: server / in-process |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in results:
        b = min(r["clients"], args.max_batch)
        print(f"| {r['clients']} | {r['requests']} | {r['rps']:.1f} | {r['ips']:.1f} | {r['in_process']:.1f} ({b}) "
              f"| {r['ips'] / r['in_process']:.0%} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} "
              f"| {r['p99'] / r['p50']:.2f} | {len(r['errors'])} | {r['mean_batch']:.1f} "
              f"| {r['rss_before']:.0f} -> {r['rss_after']:.0f} | {r['server_cpu']:.0%} | {r['client_cpu']:.0%} "
              f"| {r['images_per_cpu_s']:.1f} / {r['in_process_cpu']:.1f} ({r['images_per_cpu_s'] / r['in_process_cpu']:.0%}) |")
        for e in r["errors"][:3]:
            print(f"#   error: {e}")
    print(f"\nBad-request phase: {args.bad_clients} good clients + 1 bad client, {args.duration:.0f} s")
    print(f"  good: {bad['requests']} requests, {len(bad['errors'])} errors, p50 {bad['p50']:.0f} ms, "
          f"p99 {bad['p99']:.0f} ms; server alive afterwards: {alive}; RSS {bad['rss_before']:.0f} -> "
          f"{bad['rss_after']:.0f} MB")
    for e in bad["errors"][:3]:
        print(f"#   error: {e}")
    for (kind, _, status, error), (sent, ok) in zip(cases, (bad["bad"].get(c[0], [0, 0]) for c in cases)):
        expect = f"{status}" + (f" + per-image error '{error}'" if error else "")
        print(f"  {kind:<20} expected {expect:<40} {ok}/{sent} as expected")
    if args.json:
        Path(args.json).write_text(json.dumps({"in_process": rates, "in_process_cpu": cpu_rates,
                                               "phases": results, "bad": bad,
                                               "alive": alive}, indent=1, default=str))


if __name__ == "__main__":
    main()
