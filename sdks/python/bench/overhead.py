"""Overhead per metered call: how long meter() (and a @metered call) holds up the caller, p50 and
p99, with batches being delivered in the background; in memory and with the spool.

    python bench/overhead.py [--calls 200000] [--endpoint URL --api-key KEY]

Without --endpoint the events go to a local HTTP sink (another process, so it does not compete
for this one's GIL) that answers 202 at once: the figures are the SDK's own cost, not Aforo's.
Not a test: figures, no thresholds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aforo_sdk import Aforo, context


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(202)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    q = statistics.quantiles(samples_ns, n=1000)
    return {"p50_us": q[499] / 1000, "p99_us": q[989] / 1000, "p999_us": q[998] / 1000,
            "mean_us": statistics.fmean(samples_ns) / 1000}


def measure(aforo: Aforo, calls: int, fn) -> dict[str, float]:
    for i in range(calls // 10):  # warm up
        fn(aforo, i)
    samples = [0] * calls
    clock = time.perf_counter_ns
    started = clock()
    for i in range(calls):
        t = clock()
        fn(aforo, i)
        samples[i] = clock() - t
    elapsed = (clock() - started) / 1e9
    result = percentiles(samples)
    result["calls_per_s"] = calls / elapsed
    return result


def meter(aforo: Aforo, i: int) -> None:
    aforo.meter("api.call", "cust-1", {"route": "/v1/search", "status": 200, "n": i})


def metered_call(aforo: Aforo, i: int, _cache: dict = {}) -> None:  # noqa: B006 - one wrapper per client
    fn = _cache.get(id(aforo))
    if fn is None:
        fn = _cache[id(aforo)] = aforo.metered("report.run")(lambda n: n)
    with context(customer="cust-1"):
        fn(i)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--endpoint")
    parser.add_argument("--api-key", default="afk_bench_bench")
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:  # the child: serve until killed, after saying where
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
        print(server.server_address[1], flush=True)
        server.serve_forever()
    sink = None
    endpoint = args.endpoint
    if endpoint is None:
        sink = subprocess.Popen([sys.executable, __file__, "--sink"], stdout=subprocess.PIPE, text=True)
        endpoint = f"http://127.0.0.1:{sink.stdout.readline().strip()}"
    rows = []
    modes = (("meter, memory", meter), ("meter, spool", meter), ("@metered call, memory", metered_call))
    for mode, fn in modes:
        with tempfile.TemporaryDirectory() as spool:
            aforo = Aforo(endpoint, args.api_key, max_queue=10_000_000,
                          spool_dir=spool if "spool" in mode else None, spool_max_bytes=8 << 30)
            result = measure(aforo, args.calls, fn)
            flushed = aforo.flush(120)
            aforo.close()
        result.update(mode=mode, dropped=aforo.stats.dropped, delivered=aforo.stats.delivered,
                      flushed=flushed)
        rows.append(result)
        print(f"{mode:24} p50 {result['p50_us']:7.2f} us  p99 {result['p99_us']:7.2f} us  "
              f"p99.9 {result['p999_us']:7.2f} us  {result['calls_per_s']:10,.0f} calls/s  "
              f"delivered {result['delivered']:,}  dropped {result['dropped']}", flush=True)
    print(json.dumps({"sdk": "python", "python": sys.version.split()[0], "calls": args.calls,
                      "results": rows}))
    if sink is not None:
        sink.terminate()


if __name__ == "__main__":
    main()
