// Building and encoding CloudEvents. Every event gets its id and time when it is created, so a
// retry, a spool replay or a resend carries the same id: Aforo's ledger records it as a
// duplicate, never as a second charge.
import { randomUUID } from 'node:crypto';

export const SPECVERSION = '1.0';
// One event alone must fit in a request (Aforo takes 1 MiB per request, brackets included).
export const MAX_EVENT_BYTES = (1 << 20) - 2;

function name(value, what) {
  if (typeof value !== 'string' || value === '') {
    throw new TypeError(`${what} must be a non-empty string, got ${JSON.stringify(value)}`);
  }
  return value;
}

/** A CloudEvent with its id and time fixed now. The tenant comes from the API key. */
export function newEvent(type, subject, data, { source, id, time } = {}) {
  if (data != null && (typeof data !== 'object' || Array.isArray(data))) {
    throw new TypeError('data must be a plain object (a JSON object)');
  }
  const when = time === undefined ? new Date() : time instanceof Date ? time : new Date(time);
  if (Number.isNaN(when.getTime())) throw new TypeError(`time ${JSON.stringify(time)} is not a date`);
  const event = {
    specversion: SPECVERSION,
    id: id === undefined ? randomUUID() : name(id, 'id'),
    source,
    type: name(type, 'type'),
    subject: name(subject, 'subject'),
    time: when.toISOString(),
  };
  if (data != null && Object.keys(data).length) event.data = data;
  return event;
}

function replacer(key, value) {
  if (typeof value === 'number' && !Number.isFinite(value)) {
    throw new RangeError(`${key}: ${value} is not a number Aforo can meter`); // JSON would say null
  }
  if (typeof value === 'bigint') return value.toString(); // exact: Aforo's metrics read numbers from strings
  return value;
}

/** Compact JSON as a Buffer; NaN and infinities refused, BigInt as an exact string. */
export function encode(event) {
  const line = Buffer.from(JSON.stringify(event, replacer));
  if (line.length > MAX_EVENT_BYTES) {
    throw new RangeError(`event ${event.id} is ${line.length} bytes; Aforo takes at most ${MAX_EVENT_BYTES}`);
  }
  return line;
}
