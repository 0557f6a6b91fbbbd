// The client: meter() queues and returns at once; an async loop batches and delivers with fetch.
import { readFileSync } from 'node:fs';
import { current } from './context.js';
import { MAX_BATCH_EVENTS, Outbound, body } from './delivery.js';
import { encode, newEvent } from './events.js';

export const SDK_NAME = 'node';
export const VERSION = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version;

const DEFAULTS = {
  source: 'sdk/node',
  batchSize: 100,
  lingerMs: 1000,
  maxQueue: 10_000,
  maxRetries: 10,
  backoffBaseMs: 200,
  backoffMaxMs: 30_000,
  timeoutMs: 10_000,
  spoolDir: null,
  spoolMaxBytes: 256 * 1024 * 1024,
  onError: null,
  logger: console,
};

function options(given) {
  const o = { ...DEFAULTS, ...given };
  o.endpoint = o.endpoint ?? process.env.AFORO_ENDPOINT;
  o.apiKey = o.apiKey ?? process.env.AFORO_API_KEY;
  if (!o.endpoint) throw new TypeError('endpoint is required (or set AFORO_ENDPOINT), e.g. http://127.0.0.1:8080');
  if (!o.apiKey) throw new TypeError('apiKey is required (or set AFORO_API_KEY): `aforo keys create --tenant T`');
  if (!(o.batchSize >= 1 && o.batchSize <= MAX_BATCH_EVENTS)) {
    throw new RangeError(`batchSize must be between 1 and ${MAX_BATCH_EVENTS}`);
  }
  if (o.maxQueue < 1 || o.maxRetries < 0 || o.lingerMs < 0) {
    throw new RangeError('maxQueue must be positive, maxRetries and lingerMs not negative');
  }
  const base = o.endpoint.replace(/\/+$/, '');
  o.url = base.endsWith('/v1/events') ? base : `${base}/v1/events`;
  return o;
}

const now = () => performance.now();
const live = new Set(); // clients to flush when the event loop runs dry

process.on('beforeExit', () => {
  for (const client of live) if (!client.idle()) client.close();
});

export class Aforo {
  /** new Aforo({ endpoint, apiKey, ...options }); see the README for every option. */
  constructor(given = {}) {
    this.options = options(given);
    this.log = this.options.logger;
    this.out = new Outbound(this.options, this.log);
    this.headers = {
      Authorization: `Bearer ${this.options.apiKey}`,
      'Content-Type': 'application/cloudevents-batch+json',
      'Aforo-SDK': `${SDK_NAME}/${VERSION}`,
      'User-Agent': `aforo-sdk-${SDK_NAME}/${VERSION}`,
    };
    this.closed = false;
    this.flushing = 0;
    this.deadline = null;
    this.loop = null;
    this.wake = null; // resolves the sender's wait
    this.timer = null;
    this.waiters = new Set(); // flush() calls waiting for idle
    live.add(this);
  }

  /** Counters: queued, delivered, requests, retries, rejected, dropped, unattributed. */
  get stats() { return this.out.stats; }

  idle() { return this.out.idle(); }

  /** Queue one event; returns its id. Throws at once for an event Aforo would refuse. */
  meter(type, subject, data, { id, time } = {}) {
    if (this.closed) throw new Error('this Aforo client is closed');
    const customer = subject ?? current().customer;
    if (!customer) {
      throw new TypeError('no subject: pass the customer, or meter inside withContext({ customer })');
    }
    const event = newEvent(type, customer, data, { source: this.options.source, id, time });
    const line = encode(event);
    const errors = this.out.put(line, now()) ? [] : this.out.overflow(line);
    this.poke();
    this.report(errors);
    return event.id;
  }

  /** Metering that must never break the metered code (wrappers, middleware, AI). */
  meterQuietly(type, subject, data, what) {
    if (!subject) {
      this.unattributed(what);
      return null;
    }
    try {
      return this.meter(type, subject, data);
    } catch (err) {
      this.log.error(`could not meter ${what}: ${err.message}`);
      return null;
    }
  }

  unattributed(what) {
    this.out.stats.unattributed += 1;
    if (this.out.stats.unattributed === 1) {
      this.log.warn(`not metered (${what}): no customer; use withContext({ customer }) `
        + '(counted in stats.unattributed)');
    }
  }

  /** Send everything queued now, ignoring the linger; true when nothing is left waiting. */
  async flush(timeoutMs = 10_000) {
    if (this.out.idle()) return true;
    this.flushing += 1;
    this.poke();
    try {
      await new Promise((resolve) => {
        const done = () => { clearTimeout(timer); this.waiters.delete(done); resolve(); };
        const timer = setTimeout(done, timeoutMs);
        this.waiters.add(done);
      });
      return this.out.idle();
    } finally {
      this.flushing -= 1;
    }
  }

  /** Flush, then stop. Without a spool, what is undelivered at the deadline goes to onError as
   * `dropped`; with one it stays on disk for the next start. */
  async close(timeoutMs = 10_000) {
    if (this.closed) return;
    this.closed = true;
    live.delete(this);
    this.deadline = now() + timeoutMs;
    this.poke();
    if (this.loop) await this.loop;
    this.report(this.out.abandon());
  }

  // --- the sender ---------------------------------------------------------------------------
  poke() {
    if (this.loop === null && !this.out.idle()) this.loop = this.run();
    if (this.wake) this.wake();
  }

  report(errors) {
    for (const error of errors) {
      try {
        this.options.onError?.(error);
      } catch (err) {
        this.log.error(`onError callback failed: ${err.message}`);
      }
    }
  }

  settle() {
    if (this.out.idle()) for (const done of [...this.waiters]) done();
  }

  async next() {
    for (;;) {
      const t = now();
      const closing = this.deadline !== null;
      if (closing && (t >= this.deadline || this.out.idle())) return null;
      if (!closing && this.out.idle()) return null; // nothing to do: the loop ends, poke() restarts it
      const lines = this.out.nextRequest(t, closing || this.flushing > 0);
      if (lines) return lines;
      let wait = this.out.waitMs(t);
      if (closing) wait = Math.min(wait ?? 1000, this.deadline - t);
      await new Promise((resolve) => {
        this.wake = resolve;
        this.timer = setTimeout(resolve, wait ?? 1000);
        // Lingering alone must not keep the process alive: beforeExit flushes what is left.
        if (!closing && !this.flushing) this.timer.unref();
      });
      clearTimeout(this.timer);
      this.wake = null;
    }
  }

  async run() {
    try {
      for (let lines = await this.next(); lines; lines = await this.next()) {
        let errors;
        try {
          const r = await fetch(this.options.url, {
            method: 'POST', headers: this.headers, body: body(lines),
            signal: AbortSignal.timeout(this.options.timeoutMs),
          });
          const detail = (await r.text()).slice(0, 500);
          errors = this.out.answered(r.status, r.headers.get('retry-after'), detail, now());
        } catch (err) {
          errors = this.out.failed(err, now());
        }
        this.report(errors);
        this.settle();
      }
    } finally {
      this.loop = null;
      this.settle();
    }
  }
}
