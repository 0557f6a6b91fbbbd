// The queue (in memory, or a spool on disk), batching, what an answer from Aforo means and the
// backoff between attempts. Answers: 2xx delivered; 408/425/429/5xx and network errors retried
// with exponential backoff and full jitter, waiting at least Retry-After; 400/413 for a batch of
// several events split it in halves (one bad event cannot sink its neighbours); any other 4xx, or
// 400/413 for one event, is a rejection: reported to onError, kept in the spool's
// rejected-*.ndjson when there is a spool, never retried.
import fs from 'node:fs';
import path from 'node:path';

export const RETRYABLE = new Set([408, 425, 429, 500, 502, 503, 504]);
export const SPLITTABLE = new Set([400, 413]);
export const MAX_BATCH_EVENTS = 1000;
export const MAX_REQUEST_BYTES = 1 << 20;

/** Events that will not reach Aforo from this process: reason `rejected` | `dropped` | `overflow`. */
export class DeliveryError extends Error {
  constructor(reason, lines, detail, status = null) {
    super(`${lines.length} events ${reason}: ${detail}`);
    this.name = 'DeliveryError';
    this.reason = reason;
    this.lines = lines;
    this.detail = detail;
    this.status = status;
  }
}

export class SpoolLocked extends Error {}

export function body(lines) {
  return Buffer.concat([Buffer.from('['), ...lines.flatMap((l, i) => (i ? [Buffer.from(','), l] : [l])),
    Buffer.from(']')]);
}

/** Retry-After as milliseconds from now: delta-seconds or an HTTP date. */
export function retryAfterMs(value) {
  if (!value) return null;
  if (/^\s*\d+(\.\d+)?\s*$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, at - Date.now());
}

/** Full jitter (uniform in [0, min(cap, base·2^attempt)]), and never sooner than Retry-After. */
export function backoffMs(attempt, baseMs, capMs, retryAfter, rnd = Math.random) {
  const delay = rnd() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 32));
  return retryAfter == null ? delay : Math.max(delay, retryAfter);
}

function take(queue, limit) {
  const lines = [];
  let size = 2;
  while (queue.length && lines.length < limit && (!lines.length || size + queue[0].length + 1 <= MAX_REQUEST_BYTES)) {
    const line = queue.shift();
    lines.push(line);
    size += line.length + 1;
  }
  return lines;
}

export class MemoryOutbox {
  constructor(maxQueue, batchSize) {
    this.queue = [];
    this.max = maxQueue;
    this.batch = batchSize;
    this.firstAt = 0;
  }

  get length() { return this.queue.length; }

  put(line, now) {
    if (this.queue.length >= this.max) return false;
    if (!this.queue.length) this.firstAt = now;
    this.queue.push(line);
    return true;
  }

  fullBatch() { return this.queue.length >= this.batch; }

  take() {
    const lines = take(this.queue, this.batch);
    return lines.length ? { lines, token: null } : null;
  }

  done() {}

  drain() { return this.queue.splice(0); }

  close() {}
}

/**
 * The queue on disk: each event is appended to the head segment before meter() returns, so it
 * survives the process exiting or being killed (not a machine crash: no fsync per event). A
 * segment holds one batch and is deleted once Aforo acknowledged it; segments left by an earlier
 * run are sent first (a duplicate at worst, never a second charge). One process per directory.
 */
export class SpoolOutbox {
  constructor(dir, maxBytes, batchSize) {
    this.dir = dir;
    fs.mkdirSync(dir, { recursive: true });
    this.lockPath = path.join(dir, '.lock');
    lock(this.lockPath);
    this.max = maxBytes;
    this.batch = batchSize;
    this.sealed = fs.readdirSync(dir).filter((f) => /^seg-\d+\.ndjson$/.test(f)).sort()
      .map((f) => path.join(dir, f));
    this.bytes = this.sealed.reduce((n, p) => n + fs.statSync(p).size, 0);
    this.seq = this.sealed.reduce((n, p) => Math.max(n, Number(path.basename(p).slice(4, -7))), 0) + 1;
    this.head = null;
    this.headPath = null;
    this.headCount = 0;
    this.headBytes = 0;
    this.firstAt = 0;
  }

  get length() { return this.headCount + this.sealed.length; }

  file(prefix) {
    this.seq += 1;
    return path.join(this.dir, `${prefix}-${String(this.seq).padStart(20, '0')}.ndjson`);
  }

  put(line, now) {
    const size = line.length + 1;
    if (this.bytes + size > this.max) return false;
    if (this.headCount && (this.headCount >= this.batch || this.headBytes + size + 2 > MAX_REQUEST_BYTES)) {
      this.seal();
    }
    if (this.head === null) {
      this.headPath = this.file('seg');
      this.head = fs.openSync(this.headPath, 'a', 0o600);
      this.firstAt = now;
    }
    fs.writeSync(this.head, Buffer.concat([line, Buffer.from('\n')]));
    this.headCount += 1;
    this.headBytes += size;
    this.bytes += size;
    return true;
  }

  fullBatch() { return this.sealed.length > 0 || this.headCount >= this.batch; }

  seal() {
    if (this.head !== null) {
      fs.closeSync(this.head);
      this.sealed.push(this.headPath);
      this.head = null;
      this.headPath = null;
      this.headCount = 0;
      this.headBytes = 0;
    }
  }

  take() {
    if (!this.sealed.length) this.seal();
    if (!this.sealed.length) return null;
    const file = this.sealed[0];
    // A crash can leave a last line half written: only newline-terminated lines are events.
    const parts = fs.readFileSync(file).toString('utf8').split('\n');
    const lines = parts.slice(0, -1).filter((l) => l).map((l) => Buffer.from(l));
    return { lines, token: file };
  }

  done(token) {
    const file = this.sealed.shift();
    if (file !== token) throw new Error('spool: acknowledged a segment out of order');
    try {
      this.bytes -= fs.statSync(file).size;
      fs.unlinkSync(file);
    } catch (err) {
      if (err.code !== 'ENOENT') throw err;
    }
  }

  reject(lines) {
    const file = this.file('rejected');
    fs.writeFileSync(file, Buffer.concat(lines.flatMap((l) => [l, Buffer.from('\n')])));
    return file;
  }

  drain() { return []; } // everything waiting is on disk already

  close() {
    if (this.head !== null) {
      fs.closeSync(this.head);
      this.head = null;
    }
    try { fs.unlinkSync(this.lockPath); } catch { /* already gone */ }
    held.delete(path.resolve(this.lockPath));
  }
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === 'EPERM';
  }
}

const held = new Set(); // lock files this process holds

// Node has no flock: a lock file holding the owner's pid, taken over when that process is gone
// (or when it names this very process, restarted with the same pid, and we do not hold it).
function lock(file) {
  const where = path.resolve(file);
  if (held.has(where)) {
    throw new SpoolLocked(`spool directory ${path.dirname(file)} is used by another client of this process`);
  }
  for (let attempt = 0; attempt < 2; attempt += 1) {
    try {
      fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
      held.add(where);
      return;
    } catch (err) {
      if (err.code !== 'EEXIST') throw err;
      const pid = Number(fs.readFileSync(file, 'utf8'));
      if (pid && pid !== process.pid && alive(pid)) {
        throw new SpoolLocked(`spool directory ${path.dirname(file)} is used by process ${pid}; `
          + 'give each process its own spoolDir');
      }
      fs.rmSync(file, { force: true });
    }
  }
  throw new SpoolLocked(`could not lock ${file}`);
}

/** The state the client drives: what to send next, and what an answer means. */
export class Outbound {
  constructor(options, log, rnd = Math.random) {
    this.o = options;
    this.log = log;
    this.rnd = rnd;
    this.stats = { queued: 0, delivered: 0, requests: 0, retries: 0, rejected: 0, dropped: 0, unattributed: 0 };
    this.spool = options.spoolDir ? new SpoolOutbox(options.spoolDir, options.spoolMaxBytes, options.batchSize)
      : null;
    this.outbox = this.spool ?? new MemoryOutbox(options.maxQueue, options.batchSize);
    this.work = null;
  }

  put(line, now) {
    if (!this.outbox.put(line, now)) return false;
    this.stats.queued += 1;
    return true;
  }

  idle() { return this.work === null && this.outbox.length === 0; }

  ready(now, force) {
    return this.outbox.length > 0
      && (force || this.outbox.fullBatch() || now - this.outbox.firstAt >= this.o.lingerMs);
  }

  /** The events to send now, if any (force: flushing, no lingering). */
  nextRequest(now, force) {
    if (this.work === null && this.ready(now, force)) {
      const taken = this.outbox.take();
      if (taken) this.work = { token: taken.token, parts: [taken.lines], attempt: 0, notBefore: 0 };
    }
    return this.work !== null && now >= this.work.notBefore ? this.work.parts[0] : null;
  }

  /** Milliseconds until nextRequest may have something; null: until an event is put. */
  waitMs(now) {
    if (this.work !== null) return Math.max(0, this.work.notBefore - now);
    if (this.outbox.length) return Math.max(0, this.outbox.firstAt + this.o.lingerMs - now);
    return null;
  }

  answered(status, retryAfter, detail, now) {
    const work = this.work;
    this.stats.requests += 1;
    const lines = work.parts[0];
    if (status >= 200 && status < 300) {
      this.stats.delivered += lines.length;
      return this.partDone();
    }
    if (RETRYABLE.has(status)) return this.retry(`HTTP ${status}: ${detail}`, retryAfterMs(retryAfter), now);
    if (SPLITTABLE.has(status) && lines.length > 1) {
      const half = Math.floor(lines.length / 2);
      work.parts.splice(0, 1, lines.slice(0, half), lines.slice(half));
      return [];
    }
    this.stats.rejected += lines.length;
    const where = this.spool ? ` (kept in ${this.spool.reject(lines)})` : '';
    this.log.error(`Aforo refused ${lines.length} events with HTTP ${status}${where}: ${detail}`);
    return [new DeliveryError('rejected', lines, detail + where, status), ...this.partDone()];
  }

  /** The request got no answer (connection refused, reset, timeout). */
  failed(err, now) {
    this.stats.requests += 1;
    return this.retry(`${err.name}: ${err.cause?.code ?? err.message}`, null, now);
  }

  partDone() {
    const work = this.work;
    work.parts.shift();
    work.attempt = 0;
    if (!work.parts.length) {
      this.outbox.done(work.token);
      this.work = null;
    }
    return [];
  }

  retry(why, retryAfter, now) {
    const work = this.work;
    if (work.attempt >= this.o.maxRetries && !this.spool) {
      const lines = work.parts.flat();
      this.stats.dropped += lines.length;
      this.work = null;
      this.log.error(`dropped ${lines.length} events after ${this.o.maxRetries} retries: ${why}`);
      return [new DeliveryError('dropped', lines, `after ${this.o.maxRetries} retries: ${why}`)];
    }
    // With a spool nothing is given up: the batch stays on disk and is retried at the cap.
    const delay = backoffMs(work.attempt, this.o.backoffBaseMs, this.o.backoffMaxMs, retryAfter, this.rnd);
    work.attempt += 1;
    work.notBefore = now + delay;
    this.stats.retries += 1;
    this.log.warn(`Aforo did not take ${work.parts[0].length} events (${why}); retrying in ${Math.round(delay)} ms`);
    return [];
  }

  /** On close, past the flush deadline: what is lost (nothing, with a spool). */
  abandon() {
    if (this.spool) {
      this.spool.close();
      return [];
    }
    const lines = [...(this.work ? this.work.parts.flat() : []), ...this.outbox.drain()];
    this.work = null;
    if (!lines.length) return [];
    this.stats.dropped += lines.length;
    this.log.error(`closing with ${lines.length} events undelivered and no spoolDir: they are lost`);
    return [new DeliveryError('dropped', lines, 'the client closed before Aforo took them')];
  }

  overflow(line) {
    this.stats.dropped += 1;
    const where = this.spool ? 'spool' : 'queue';
    this.log.error(`Aforo ${where} full: dropped an event (see maxQueue / spoolMaxBytes)`);
    return [new DeliveryError('overflow', [line], `the ${where} is full`)];
  }
}
