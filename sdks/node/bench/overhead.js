// Overhead per metered call: how long meter() (and a wrap()ped call) holds up the caller, p50 and
// p99, with batches being delivered in the background; in memory and with the spool.
//
//   node bench/overhead.js [calls] [endpoint apiKey]
//
// Without an endpoint the events go to a local HTTP sink (a child process, so it does not share
// this event loop) that answers 202 at once: the figures are the SDK's own cost, not Aforo's.
// Not a test: figures, no thresholds.
import { fork } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { Aforo, withContext } from '../src/index.js';

if (process.argv[2] === '--sink') {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => { res.writeHead(202, { 'Content-Length': 2 }); res.end('{}'); });
  });
  server.listen(0, '127.0.0.1', () => process.send(server.address().port));
} else {
  const calls = Number(process.argv[2] ?? 200_000);
  let [endpoint, apiKey = 'afk_bench_bench'] = process.argv.slice(3);
  let sink = null;
  if (!endpoint) {
    sink = fork(new URL(import.meta.url).pathname, ['--sink']);
    endpoint = `http://127.0.0.1:${await new Promise((resolve) => { sink.once('message', resolve); })}`;
  }

  const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];

  async function measure(aforo, fn) {
    for (let i = 0; i < calls / 10; i += 1) fn(aforo, i); // warm up
    const samples = new Float64Array(calls);
    const started = process.hrtime.bigint();
    for (let i = 0; i < calls; i += 1) {
      const t = process.hrtime.bigint();
      fn(aforo, i);
      samples[i] = Number(process.hrtime.bigint() - t);
      // Let the sender run now and then, as an application's event loop would.
      if (i % 1000 === 999) await new Promise(setImmediate);
    }
    const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
    const sorted = samples.sort();
    return { p50_us: quantile(sorted, 0.5) / 1000, p99_us: quantile(sorted, 0.99) / 1000,
      p999_us: quantile(sorted, 0.999) / 1000, calls_per_s: calls / elapsed };
  }

  const meter = (aforo, i) => aforo.meter('api.call', 'cust-1', { route: '/v1/search', status: 200, n: i });
  const wrapped = new WeakMap();
  const wrappedCall = (aforo, i) => {
    if (!wrapped.has(aforo)) wrapped.set(aforo, aforo.wrap('report.run', (n) => n));
    withContext({ customer: 'cust-1' }, () => wrapped.get(aforo)(i));
  };

  const rows = [];
  for (const [mode, fn] of [['meter, memory', meter], ['meter, spool', meter], ['wrap()ped call, memory', wrappedCall]]) {
    const spoolDir = mode.includes('spool') ? fs.mkdtempSync(path.join(os.tmpdir(), 'aforo-bench-')) : null;
    const aforo = new Aforo({ endpoint, apiKey, maxQueue: 10_000_000, spoolDir, spoolMaxBytes: 8 * 2 ** 30 });
    const result = await measure(aforo, fn);
    const flushed = await aforo.flush(120_000);
    await aforo.close();
    if (spoolDir) fs.rmSync(spoolDir, { recursive: true, force: true });
    Object.assign(result, { mode, delivered: aforo.stats.delivered, dropped: aforo.stats.dropped, flushed });
    rows.push(result);
    console.log(`${mode.padEnd(24)} p50 ${result.p50_us.toFixed(2).padStart(7)} us  p99 ${result.p99_us.toFixed(2).padStart(7)} us  `
      + `p99.9 ${result.p999_us.toFixed(2).padStart(7)} us  ${Math.round(result.calls_per_s).toLocaleString().padStart(10)} calls/s  `
      + `delivered ${result.delivered.toLocaleString()}  dropped ${result.dropped}`);
  }
  console.log(JSON.stringify({ sdk: 'node', node: process.version, calls, results: rows }));
  sink?.kill();
}
