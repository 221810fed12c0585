"""untok serve under load: streaming latency and concurrent throughput.

A ``small``-preset byte model trained ``--minutes`` on Tiny Shakespeare (so that its text
runs on rather than ending at once) is served by ``untok serve`` in a subprocess on
127.0.0.1. Measured:

1. batch 1: time to first byte and the per-byte interval, through the server (the
   ``openai`` client, streaming) and in-process (``untok.generate``), side by side;
2. 1, 4 and 16 concurrent streaming clients (threads): aggregate bytes/s and the p50/p90
   interval between a stream's chunks, medians of ``--repeats`` interleaved runs, and
   the decoding engine alone at the same loads.

    python bench/serve.py                  # about 7 minutes
    python bench/serve.py --minutes 0.05 --bytes 32 --clients 1,2   # a smoke run
    python bench/serve.py --set model.kv_heads=2 --result serve_gqa  # 2 key/value heads
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import openai
import torch

from common import SHARED, require, write_result
from untok.generate import generate
from untok.models import load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, port: int, threads: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "untok", "serve", str(checkpoint),
                               "--port", str(port), "--model-name", "bench",
                               "--device", "cpu", "--threads", str(threads)],
                              stderr=subprocess.PIPE, text=True)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                           max_retries=0)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            client.models.list()
            return server
        except openai.APIConnectionError:
            if server.poll() is not None:
                sys.exit(f"untok serve exited: {server.stderr.read()}")
            time.sleep(0.2)
    server.kill()
    sys.exit("untok serve did not start within 2 minutes")


def stream_once(client: openai.OpenAI, prompt: str, max_bytes: int, seed: int) -> dict:
    """One streaming completion: bytes, time to first byte, chunk intervals."""
    began = time.perf_counter()
    times, size = [], 0
    for chunk in client.completions.create(model="bench", prompt=prompt, stream=True,
                                           max_tokens=max_bytes, seed=seed):
        if chunk.choices and chunk.choices[0].text:
            times.append(time.perf_counter())
            size += len(chunk.choices[0].text.encode())
    return {"bytes": size, "first": times[0] - began if times else float("nan"),
            "gaps": np.diff(times).tolist(), "seconds": time.perf_counter() - began}


def in_process(model, prompt: str, max_bytes: int) -> dict:
    began = time.perf_counter()
    times = []
    for _ in generate(model, prompt, max_bytes=max_bytes, seed=0):
        times.append(time.perf_counter())
    return {"bytes": len(times), "first": times[0] - began, "gaps": np.diff(times).tolist(),
            "seconds": time.perf_counter() - began}


def on_thread(threads: int, work):
    """``work()`` on a thread of its own computing with ``threads`` threads, as the engine's
    worker does; the main thread keeps computing with one (see untok.serve.engine)."""
    result = []

    def run() -> None:
        torch.set_num_threads(threads)
        result.append(work())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result[0]


def concurrent(client: openai.OpenAI, clients: int, max_bytes: int) -> dict:
    results: list[dict] = [{}] * clients

    def run(i: int) -> None:
        results[i] = stream_once(client, f"client {i}: ", max_bytes, seed=i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    gaps = [g for r in results for g in r["gaps"]]
    return {"clients": clients, "bytes": sum(r["bytes"] for r in results),
            "bytes_per_s": sum(r["bytes"] for r in results) / wall,
            "gap_p50_ms": 1e3 * float(np.percentile(gaps, 50)),
            "gap_p90_ms": 1e3 * float(np.percentile(gaps, 90)),
            "first_p50_ms": 1e3 * float(np.median([r["first"] for r in results]))}


def engine_only(model, clients: int, max_bytes: int, threads: int) -> dict:
    """The decoding engine alone, in this process (no HTTP, no clients' parsing): the
    aggregate bytes/s its batching gives ``clients`` sequences."""
    from untok.generate import SamplerConfig
    from untok.serve.engine import Engine, Spec
    from untok.units import BOS

    engine = Engine(model, threads=threads)

    async def run() -> float:
        loop, queues = asyncio.get_running_loop(), [asyncio.Queue() for _ in range(clients)]
        began, size = time.perf_counter(), 0
        for i, queue in enumerate(queues):
            prompt = [BOS, *f"client {i}: ".encode()]
            engine.submit(Spec(prompt, max_bytes, SamplerConfig(), seed=i), 0, queue, loop)
        for queue in queues:
            while (event := await queue.get()).kind == "text":
                size += len(event.data)
        return size / (time.perf_counter() - began)

    try:
        return {"clients": clients, "bytes_per_s": asyncio.run(run())}
    finally:
        engine.close()


def repeated(measure, clients: list[int], repeats: int) -> list[dict]:
    """``measure(n)`` for each load ``n`` of ``clients``, ``repeats`` times interleaved
    (1, 4, 16, 1, 4, 16, ...: a slow spell of a shared machine hits every load): per
    load, the median of each figure and the runs' bytes/s."""
    runs = [[measure(n) for n in clients] for _ in range(repeats)]
    rows = []
    for i, n in enumerate(clients):
        mine = [run[i] for run in runs]
        row = {key: float(np.median([r[key] for r in mine])) for key in mine[0]}
        rows.append({**row, "clients": n, "runs_bytes_per_s": [r["bytes_per_s"] for r in mine]})
    return rows


def latency_row(name: str, r: dict) -> dict:
    return {"path": name, "first_ms": 1e3 * r["first"],
            "gap_p50_ms": 1e3 * float(np.percentile(r["gaps"], 50)),
            "gap_p90_ms": 1e3 * float(np.percentile(r["gaps"], 90)),
            "bytes_per_s": r["bytes"] / r["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=int, default=200, help="bytes per stream")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--minutes", type=float, default=3.0,
                        help="training budget (long enough that the model writes text)")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each load, interleaved (medians are reported)")
    parser.add_argument("--checkpoint", type=Path,
                        help="serve this checkpoint instead of training one")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the model it trains (repeatable), e.g. "
                             "model.kv_heads=2")
    parser.add_argument("--threads", type=int,
                        help="the decoding engine's compute threads (default: as untok serve "
                             "chooses, the cores less one)")
    parser.add_argument("--result", default="serve",
                        help="name of the results in bench/results/ (default: serve)")
    args = parser.parse_args()
    clients = [int(n) for n in args.clients.split(",")]
    data = require(SHARED / "tinyshakespeare.txt")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            subprocess.run([sys.executable, "-m", "untok", "train", "--preset", args.preset,
                            "--data", str(data), "--minutes", str(args.minutes), "--out",
                            f"{tmp}/run", "--quiet", "--set", "train.eval_every=100000",
                            *[arg for item in args.set for arg in ("--set", item)]],
                           check=True)
            checkpoint = Path(tmp) / "run" / "last"
        threads = args.threads or max(torch.get_num_threads() - 1, 1)  # (untok serve's)
        torch.set_num_threads(1)  # one computing thread at a time (see untok.serve.engine)
        model = load(checkpoint)
        port = free_port()
        server = start_server(checkpoint, port, threads)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                                   max_retries=0, timeout=600)
            stream_once(client, "warm up", 8, 0)

            def generated() -> dict:
                in_process(model, "warm up", 8)
                return in_process(model, "Once upon a time", args.bytes)

            latency = [latency_row("untok generate (in-process)", on_thread(threads, generated)),
                       latency_row("untok serve (openai client, streaming)",
                                   stream_once(client, "Once upon a time", args.bytes, 0))]
            loads = repeated(lambda n: concurrent(client, n, args.bytes), clients,
                             args.repeats)
        finally:
            server.terminate()
            server.wait(timeout=30)
        engine = repeated(lambda n: engine_only(model, n, args.bytes, threads), clients,
                          args.repeats)
    one = loads[0]["bytes_per_s"]
    for row in loads:
        row["speedup"] = row["bytes_per_s"] / one
        row["gap_p90_ratio"] = row["gap_p90_ms"] / loads[0]["gap_p90_ms"]
    trained = " ".join([args.preset, *args.set])
    figures = {"preset": trained if args.checkpoint is None else str(args.checkpoint),
               "params": sum(p.numel() for p in model.parameters()),
               "kv_heads": model.config.kv_heads or model.config.num_heads,
               "engine_threads": threads,
               "bytes_per_stream": args.bytes, "repeats": args.repeats, "latency": latency,
               "load": loads,
               "engine": engine}
    table = render(figures)
    print(table)
    print("wrote", write_result(args.result, figures, table))


def render(f: dict) -> str:
    lines = [f"## untok serve: `{f['preset']}` byte model ({f['params'] / 1e6:.2f}M "
             f"parameters), {f['bytes_per_stream']} bytes per stream, CPU", "",
             "| path (batch 1) | first byte ms | per-byte p50 ms | p90 ms | bytes/s |",
             "|---|---|---|---|---|"]
    for r in f["latency"]:
        lines.append(f"| {r['path']} | {r['first_ms']:.1f} | {r['gap_p50_ms']:.2f} | "
                     f"{r['gap_p90_ms']:.2f} | {r['bytes_per_s']:.0f} |")
    lines += ["", f"Concurrent streaming clients (medians of {f.get('repeats', 1)} interleaved "
              "runs):", "",
              "| concurrent streams | aggregate bytes/s | x one stream | per-chunk p50 ms "
              "| p90 ms | p90 x one | first byte p50 ms |", "|---|---|---|---|---|---|---|"]
    for r in f["load"]:
        lines.append(f"| {r['clients']} | {r['bytes_per_s']:.0f} | {r['speedup']:.2f} | "
                     f"{r['gap_p50_ms']:.2f} | {r['gap_p90_ms']:.2f} | "
                     f"{r['gap_p90_ratio']:.2f} | {r['first_p50_ms']:.1f} |")
    if f.get("engine"):
        one = f["engine"][0]["bytes_per_s"]
        lines += ["", "The engine alone (in-process, the same threads, no HTTP or client "
                  "parsing): " + ", ".join(f"{r['clients']} sequences {r['bytes_per_s']:.0f} "
                                           f"B/s ({r['bytes_per_s'] / one:.2f}x)"
                                           for r in f["engine"]) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
