// The client against a real Aforo: delivery, tier, revenue, batching, retries, refusals,
// overflow, the spool across a killed process, flush on close, and wrap().
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { Aforo, SpoolLocked, VERSION, withContext } from '../src/index.js';
import { backoffMs, retryAfterMs } from '../src/delivery.js';
import {
  aiKey, faults, key, ledger, money, newSource, proxy, quiet, requests, sent, sleep, waitSent,
} from './harness.js';

async function closedPort() {
  const server = net.createServer();
  await new Promise((resolve) => { server.listen(0, '127.0.0.1', resolve); });
  const { port } = server.address();
  await new Promise((resolve) => { server.close(resolve); });
  return `http://127.0.0.1:${port}`;
}

test('meter lands in the ledger as tier sdk with its revenue', async () => {
  const source = newSource();
  const aforo = new Aforo({ endpoint: proxy, apiKey: aiKey, source });
  const ids = [1, 2, 3].map(() => aforo.meter('api.call', 'ai-cust-1', { route: '/v1/search' }));
  assert.equal(await aforo.flush(), true);
  await aforo.close();
  const reqs = await requests(source);
  assert.deepEqual(reqs.map((r) => r.events.length), [3]); // one batch
  assert.equal(reqs[0].sdk, `node/${VERSION}`);
  for (const id of ids) {
    const event = await ledger(source, id, { apiKey: aiKey });
    assert.equal(event.status, 'accepted');
    const [record] = event.records;
    // nimbus's plan: api_calls per unit 0.001, cost 0.0002
    assert.deepEqual([record.tier, money(record.revenue), money(record.cost)], ['sdk', '0.001', '0.0002']);
  }
});

test('batches close on size and on linger', async () => {
  const source = newSource();
  const aforo = new Aforo({ endpoint: proxy, apiKey: key, source, batchSize: 10, lingerMs: 3_600_000 });
  for (let i = 0; i < 25; i += 1) aforo.meter('api.call', 'cust-1', { i });
  await waitSent(source, 20);
  assert.deepEqual((await requests(source)).map((r) => r.events.length), [10, 10]); // 5 linger
  await aforo.close();
  assert.deepEqual((await requests(source)).map((r) => r.events.length), [10, 10, 5]);

  const lingering = new Aforo({ endpoint: proxy, apiKey: key, source, lingerMs: 200 });
  lingering.meter('api.call', 'cust-1');
  assert.equal((await waitSent(source, 26)).length, 26); // sent by the linger alone
  await lingering.close();
});

test('retries honour Retry-After, and a retry is a duplicate, never a second charge', async () => {
  const source = newSource();
  await faults(['503', '429', 'drop', 'ack_lost'], '1');
  const aforo = new Aforo({ endpoint: proxy, apiKey: aiKey, source, backoffBaseMs: 10, logger: quiet });
  const id = aforo.meter('api.call', 'ai-cust-2');
  assert.equal(await aforo.flush(30_000), true);
  assert.deepEqual([aforo.stats.retries, aforo.stats.delivered], [4, 1]);
  await aforo.close();
  const attempts = await requests(source);
  assert.deepEqual(attempts.map((a) => a.fault), ['503', '429', 'drop', 'ack_lost', 'pass']);
  assert.deepEqual([...new Set(attempts.flatMap((a) => a.events.map((e) => e.id)))], [id]);
  assert.ok(attempts[1].t - attempts[0].t >= 0.95 && attempts[2].t - attempts[1].t >= 0.95); // Retry-After: 1
  const event = await ledger(source, id, { apiKey: aiKey, records: 2 });
  assert.equal(event.status, 'accepted');
  assert.deepEqual(event.records.map((r) => [r.status, r.tier, money(r.revenue)]),
    [['accepted', 'sdk', '0.001'], ['duplicate', 'sdk', null]]);
});

test('a refused event is not retried; a refused batch is split', async () => {
  const source = newSource();
  const errors = [];
  const aforo = new Aforo({ endpoint: proxy, apiKey: key, source, onError: (e) => errors.push(e), logger: quiet });
  await faults(['400']);
  aforo.meter('api.call', 'cust-1');
  await aforo.flush();
  assert.equal((await requests(source)).length, 1);
  assert.deepEqual(errors.map((e) => [e.reason, e.status, e.lines.length]), [['rejected', 400, 1]]);
  await faults(['400']);
  const ids = [0, 1, 2, 3].map((n) => aforo.meter('api.call', 'cust-1', { n }));
  await aforo.flush();
  await aforo.close();
  assert.deepEqual((await requests(source)).slice(1).map((r) => r.events.length), [4, 2, 2]);
  for (const id of ids) assert.equal((await ledger(source, id)).status, 'accepted');
});

test('queue overflow drops the newest and says so', async () => {
  const source = newSource();
  const errors = [];
  const aforo = new Aforo({ endpoint: proxy, apiKey: key, source, maxQueue: 2, lingerMs: 3_600_000,
    onError: (e) => errors.push(e), logger: quiet });
  for (let n = 0; n < 3; n += 1) aforo.meter('api.call', 'cust-1', { n });
  assert.deepEqual(errors.map((e) => [e.reason, e.lines.length]), [['overflow', 1]]);
  assert.equal(aforo.stats.dropped, 1);
  await aforo.close();
  assert.deepEqual((await sent(source)).map((e) => e.data.n), [0, 1]);
});

test('retries exhausted without a spool are reported as dropped', async () => {
  const errors = [];
  const aforo = new Aforo({ endpoint: await closedPort(), apiKey: 'afk_x_y', maxRetries: 2, backoffBaseMs: 10,
    onError: (e) => errors.push(e), logger: quiet });
  aforo.meter('api.call', 'cust-1');
  await aforo.flush(5000);
  await aforo.close(1000);
  assert.deepEqual(errors.map((e) => [e.reason, e.lines.length]), [['dropped', 1]]);
  assert.deepEqual([aforo.stats.retries, aforo.stats.requests], [2, 3]);
});

test('spooled events survive a killed process and are sent by the next', async () => {
  const source = newSource();
  const spool = fs.mkdtempSync(path.join(os.tmpdir(), 'aforo-node-spool-'));
  const script = `
    import { Aforo } from ${JSON.stringify(new URL('../src/index.js', import.meta.url).href)};
    const aforo = new Aforo({ endpoint: ${JSON.stringify(await closedPort())}, apiKey: 'afk_x_y',
      source: ${JSON.stringify(source)}, spoolDir: ${JSON.stringify(spool)}, batchSize: 2,
      logger: { warn() {}, error() {} } });
    for (let n = 0; n < 5; n += 1) console.log(aforo.meter('api.call', 'cust-1', { n }));
    process.kill(process.pid, 'SIGKILL');`;
  const done = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(done.signal, 'SIGKILL', done.stderr);
  const ids = done.stdout.trim().split('\n');
  assert.equal(ids.length, 5);

  const aforo = new Aforo({ endpoint: proxy, apiKey: key, source, spoolDir: spool });
  assert.throws(() => new Aforo({ endpoint: proxy, apiKey: key, spoolDir: spool }), SpoolLocked);
  assert.equal(await aforo.flush(), true);
  await aforo.close();
  assert.deepEqual((await sent(source)).map((e) => e.id), ids); // in order
  assert.deepEqual(fs.readdirSync(spool).filter((f) => f.startsWith('seg-')), []);
  for (const id of ids) assert.equal((await ledger(source, id)).status, 'accepted');
});

test('close flushes what is queued', async () => {
  const source = newSource();
  const aforo = new Aforo({ endpoint: proxy, apiKey: key, source, lingerMs: 3_600_000 });
  const id = aforo.meter('api.call', 'cust-1');
  await aforo.close();
  assert.deepEqual((await sent(source)).map((e) => e.id), [id]);
  assert.throws(() => aforo.meter('api.call', 'cust-1'), /closed/);
});

test('a process that forgets close() still delivers before it exits', async () => {
  const source = newSource();
  const script = `
    import { Aforo } from ${JSON.stringify(new URL('../src/index.js', import.meta.url).href)};
    const aforo = new Aforo({ endpoint: ${JSON.stringify(proxy)}, apiKey: ${JSON.stringify(key)},
      source: ${JSON.stringify(source)}, lingerMs: 3600000 });
    console.log(aforo.meter('api.call', 'cust-1'));`;
  const id = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' }).trim();
  assert.deepEqual((await sent(source)).map((e) => e.id), [id]);
});

test('events are checked when created', async () => {
  const aforo = new Aforo({ endpoint: proxy, apiKey: key });
  assert.throws(() => aforo.meter('api.call'), /subject/);
  assert.throws(() => aforo.meter('api.call', 'cust-1', { x: Number.NaN }), /not a number/);
  assert.throws(() => aforo.meter('api.call', 'cust-1', [1, 2]), /plain object/);
  assert.throws(() => aforo.meter('api.call', 'cust-1', { pad: 'x'.repeat(1 << 20) }), /bytes/);
  await aforo.close();
});

test('backoff is jittered exponential and honours Retry-After', () => {
  assert.equal(backoffMs(0, 200, 30_000, null, () => 1), 200);
  assert.equal(backoffMs(3, 200, 30_000, null, () => 0.5), 800);
  assert.equal(backoffMs(20, 200, 30_000, null, () => 1), 30_000);
  assert.equal(backoffMs(0, 200, 30_000, 7000, () => 1), 7000);
  assert.equal(retryAfterMs('3'), 3000);
  assert.equal(retryAfterMs('soon'), null);
  assert.equal(retryAfterMs('Wed, 21 Oct 2015 07:28:00 GMT'), 0);
});

test('wrap meters sync and async functions', async () => {
  const source = newSource();
  const aforo = new Aforo({ endpoint: proxy, apiKey: key, source, logger: quiet });
  const report = aforo.wrap('report.generate', (rows) => Array.from({ length: rows }, (_, i) => i),
    { quantity: (result) => result.length });
  const failing = aforo.wrap('report.async', async (who) => { await sleep(1); throw new RangeError(who); },
    { customer: (who) => who });
  withContext({ customer: 'cust-2', agent: 'nightly' }, () => report(3));
  await assert.rejects(failing('cust-3'), RangeError);
  report(1); // no customer anywhere: not metered, counted
  assert.equal(aforo.stats.unattributed, 1);
  await aforo.close();
  const events = Object.fromEntries((await sent(source)).map((e) => [e.type, e]));
  const gen = events['report.generate'];
  const failed = events['report.async'];
  assert.deepEqual([gen.subject, gen.data.outcome, gen.data.quantity], ['cust-2', 'ok', 3]);
  assert.deepEqual([failed.subject, failed.data.outcome, failed.data.error], ['cust-3', 'error', 'RangeError']);
  assert.equal(Object.keys(events).length, 2);
});
