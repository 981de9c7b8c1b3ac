#!/usr/bin/env python
"""Benchmark of ``hpctrain serve``: the micro-batching server against the in-process limit
and against the same server with batching off, in one run.

Load generator: Debian's ``wrk`` (C, epoll; ``apt-get install wrk``, which scripts/setup.sh
does), in its own process, over loopback; every request is one sample
(``{"instances": [[...64 values...]]}`` for the demo CNN). For each concurrency (1, 16, 64
connections; ``--seconds`` each, 20 for the recorded run) it measures:

1. **server**: ``hpctrain serve --max-batch 64 --max-wait-ms 2``: requests/s and latency
   percentiles from wrk, and the batch sizes the server formed (its /metrics histogram,
   read before and after the row);
2. **limit**: the model called in-process (``TrainedRun.predict_proba``, imputation included)
   at the mean batch size the server formed in that row: samples/s with no HTTP at all;
3. **peer**: the same server with batching off (``--max-batch 1 --max-wait-ms 0``: one forward
   pass per request, what a plain FastAPI/Flask endpoint does);
4. **HTTP floor**: ``GET /health`` on the batching server at the same concurrency (half the
   seconds): no body, no JSON, no model, so the most requests/s this HTTP stack answers on this
   machine. When it is below half the limit, no server on this stack can reach the 0.5x target.

The machine's load average is printed before and after: on a shared machine the absolute
figures move with it, the side-by-side ratios much less. Usage:

    .venv/bin/python scripts/bench_serve.py MODEL_DIR --data SHARDS   # 20 s per row, ~3 min
    .venv/bin/python scripts/bench_serve.py MODEL_DIR --seconds 5 --json out.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def start_server(model: str, port: int, args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "hpctrain", "serve", model, "--port", str(port), *args], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        if p.poll() is not None:
            sys.exit(f"bench_serve: the server exited with {p.returncode}; run 'hpctrain serve {model}' to see why")
        try:
            if get(port, "/ready")[0] == 200:
                return p
        except OSError:
            pass
        time.sleep(0.1)
    p.kill()
    sys.exit("bench_serve: the server was not ready within 60 s")


def stop_server(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()


def batch_hist(port: int) -> tuple[float, float]:
    """(forward passes, rows) so far, from the server's batch-size histogram."""
    text = get(port, "/metrics")[1]
    vals = {}
    for name in ("hpctrain_batch_size_count", "hpctrain_batch_size_sum"):
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        vals[name] = float(m.group(1)) if m else 0.0
    return vals["hpctrain_batch_size_count"], vals["hpctrain_batch_size_sum"]


def run_wrk(port: int, conns: int, seconds: float, script: str | None, path: str = "/predict") -> dict:
    threads = min(conns, 2)
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds:g}s", "--timeout", "10s", "--latency",
           *(["-s", script] if script else []), f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = {}
    for q, v, u in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
        pct[int(q)] = float(v) * UNITS[u] * 1e3
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors += sum(int(v) for v in m.groups()) if m else 0
    return {"rps": rps, "p50_ms": pct.get(50), "p90_ms": pct.get(90), "p99_ms": pct.get(99), "errors": errors}


def limit(trained, x, batch: int, seconds: float) -> tuple[float, float]:
    """Samples/s of the model called in-process at ``batch`` rows per call, and the p99 time
    of one call in ms (what the machine's scheduling alone does to a tail)."""
    xb = x[:batch]
    for _ in range(20):
        trained.predict_proba(xb)
    times, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        trained.predict_proba(xb)
        times.append(time.perf_counter() - t)
    return len(times) * batch / (time.perf_counter() - t0), float(np.percentile(times, 99)) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="run dir or model artifact (e.g. runs/demo/model)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per row (default 20)")
    ap.add_argument("--concurrency", default="1,16,64", help="comma-separated connection counts")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--data", help="shard directory whose validation rows are the request samples (default: "
                                   "uniform random values in [0, 1))")
    ap.add_argument("--json", help="write the results here too")
    a = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench_serve: wrk not found; apt-get install wrk (scripts/setup.sh installs it)")
    import torch

    from hpctrain.predict import load_run

    torch.set_num_threads(1)
    trained = load_run(a.model)
    per = int(np.prod(trained.sample_shape))
    n = max(a.max_batch, 256)
    if a.data:
        from hpctrain.data.shards import iter_arrays

        x = np.concatenate([v.reshape(len(v), -1) for _, v, _ in iter_arrays(a.data, "val")])
        x = np.resize(x, (n, per)).astype(np.float32)  # repeated when the split is smaller than n
    else:
        x = np.random.default_rng(0).random((n, per), dtype=np.float32)
    conc = [int(c) for c in a.concurrency.split(",")]
    load_before = os.getloadavg()
    print(f"bench_serve: {a.model}, {per} features per sample, one sample per request; {os.cpu_count()} CPUs, "
          f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; {a.seconds:g} s per row",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "post.lua")
        body = json.dumps({"instances": [[None if np.isnan(v) else round(float(v), 4) for v in x[0]]]})
        with open(script, "w") as f:
            f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                    f"wrk.body = {json.dumps(body)}\n")
        results = {}
        for mode, args in (("server", ["--max-batch", str(a.max_batch), "--max-wait-ms", f"{a.max_wait_ms:g}"]),
                           ("peer", ["--max-batch", "1", "--max-wait-ms", "0"])):
            port = free_port()
            p = start_server(a.model, port, args)
            try:
                run_wrk(port, 1, min(2.0, a.seconds), script)  # warm-up
                for c in conc:
                    n0, r0 = batch_hist(port)
                    res = run_wrk(port, c, a.seconds, script)
                    n1, r1 = batch_hist(port)
                    res["mean_batch"] = (r1 - r0) / max(n1 - n0, 1)
                    results[(mode, c)] = res
                    if mode == "server":
                        # GET /health through the same stack: no body, no JSON, no model; what the
                        # HTTP side alone can answer here, the ceiling of any model behind it
                        results[("floor", c)] = run_wrk(port, c, a.seconds / 2, None, "/health")
                    print(f"  {mode:6s} c={c:3d}: {res['rps']:8.0f} req/s  p50 {res['p50_ms']:.2f} ms  "
                          f"p99 {res['p99_ms']:.2f} ms  mean batch {res['mean_batch']:.1f}  errors {res['errors']}",
                          flush=True)
            finally:
                stop_server(p)
        for c in conc:
            s, peer = results[("server", c)], results[("peer", c)]
            b = max(1, int(round(s["mean_batch"])))
            lim, lim_p99 = limit(trained, x, b, min(a.seconds, 5.0))
            rows.append({"concurrency": c, "server_rps": s["rps"], "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
                         "mean_batch": s["mean_batch"], "limit_sps": lim, "limit_p99_ms": lim_p99,
                         "peer_rps": peer["rps"], "http_floor_rps": results[("floor", c)]["rps"],
                         "peer_p99_ms": peer["p99_ms"], "vs_limit": s["rps"] / lim, "vs_peer": s["rps"] / peer["rps"],
                         "errors": s["errors"] + peer["errors"]})
    load_after = os.getloadavg()
    print("\n| concurrency | server req/s | p50 ms | p99 ms | mean batch | in-process limit samples/s (same batch) "
          "| limit p99 ms per call | server / limit | unbatched peer req/s | peer p99 ms | server / peer "
          "| HTTP floor req/s (GET /health) | floor / limit | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['server_rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['mean_batch']:.1f} | {r['limit_sps']:.0f} | {r['limit_p99_ms']:.2f} | {r['vs_limit']:.2f} | "
              f"{r['peer_rps']:.0f} | "
              f"{r['peer_p99_ms']:.2f} | {r['vs_peer']:.2f} | {r['http_floor_rps']:.0f} | "
              f"{r['http_floor_rps'] / r['limit_sps']:.2f} | {r['errors']} |")
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min); {os.cpu_count()} CPUs")
    by_c = {r["concurrency"]: r for r in rows}
    if 16 in by_c and 64 in by_c:
        print(f"targets: p99 at c=16 {by_c[16]['p99_ms']:.2f} ms (< 20: {by_c[16]['p99_ms'] < 20}); c=64 "
              f"{by_c[64]['vs_limit']:.2f}x limit (>= 0.5: {by_c[64]['vs_limit'] >= 0.5}), "
              f"{by_c[64]['vs_peer']:.2f}x peer (>= 2: {by_c[64]['vs_peer'] >= 2})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "load_before": load_before, "load_after": load_after, "seconds": a.seconds,
                       "cpus": os.cpu_count()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
