// The SDK's tests run against a real Aforo (`aforo serve` + the metering flow), a fault proxy in
// front of it and an LLM stand-in, started by Aforo's own suite (tests/test_sdks.py, `make test`),
// which passes their addresses in AFORO_TEST_*.
import { randomUUID } from 'node:crypto';

function env(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run these tests through Aforo's suite `
      + '(`make test`, or `pytest tests/test_sdks.py -k node` from the repository root)');
  }
  return value;
}

export const endpoint = env('AFORO_TEST_ENDPOINT');
export const key = env('AFORO_TEST_API_KEY'); // tenant acme
export const aiKey = env('AFORO_TEST_AI_API_KEY'); // tenant nimbus: per-unit and per-token prices
export const proxy = env('AFORO_TEST_PROXY');
export const llm = env('AFORO_TEST_LLM');

/** An exact decimal string without trailing zeros ("0.0060000" -> "0.006"), null as is. */
export const money = (s) => (s == null ? s : s.replace(/(\.\d*?)0+$/, '$1').replace(/\.$/, ''));

export const quiet = { warn() {}, error() {} };
export const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/** Each test its own event source, so the proxy log and the ledger tell its events apart. */
export const newSource = () => `sdk/node-test/${randomUUID().slice(0, 10)}`;

export async function faults(list, retryAfter = '1') {
  await fetch(`${proxy}/_faults`, { method: 'POST', body: JSON.stringify({ faults: list, retry_after: retryAfter }) });
}

/** Every attempt that reached the proxy carrying `source`'s events. */
export async function requests(source) {
  const log = await (await fetch(`${proxy}/_log`)).json();
  return log.filter((r) => r.events.some((e) => e.source === source));
}

/** `source`'s events as the proxy saw them, first copy of each id, in order. */
export async function sent(source) {
  const seen = new Map();
  for (const r of await requests(source)) {
    for (const e of r.events) if (e.source === source && !seen.has(e.id)) seen.set(e.id, e);
  }
  return [...seen.values()];
}

export async function waitSent(source, n, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  let events = await sent(source);
  while (events.length < n && Date.now() < deadline) {
    await sleep(50);
    events = await sent(source);
  }
  return events;
}

/** The event's status and records from Aforo's ledger (GET /v1/events/...), once it has at
 * least `records` of them (a retry's duplicate is processed after the original). */
export async function ledger(source, id, { apiKey = key, records = 1, timeoutMs = 90_000 } = {}) {
  const url = `${endpoint}/v1/events/${source.split('/').map(encodeURIComponent).join('/')}/${encodeURIComponent(id)}`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await fetch(url, { headers: { Authorization: `Bearer ${apiKey}` } });
    const text = await r.text();
    if (r.status === 200 && JSON.parse(text).records.length >= records) return JSON.parse(text);
    if (![200, 404].includes(r.status) || Date.now() > deadline) throw new Error(`${url}: ${r.status} ${text}`);
    await sleep(200);
  }
}
