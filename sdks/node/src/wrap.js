// aforo.wrap(type, fn, options): one event per call of fn (sync or async), with outcome
// (ok/error), duration_ms and an optional quantity. Metering never breaks the metered code: a call
// without a customer is counted in stats.unattributed, not thrown.
import { current } from './context.js';

export function wrap(client, type, fn, { customer, quantity, data } = {}) {
  const what = fn.name || type;
  function emit(args, started, error, result) {
    const who = (typeof customer === 'function' ? customer(...args) : customer) ?? current().customer;
    const event = { ...data, function: what, outcome: error ? 'error' : 'ok',
      duration_ms: Math.round((performance.now() - started) * 1000) / 1000 };
    if (error) event.error = error?.name ?? String(error);
    const q = typeof quantity === 'function' ? (error ? undefined : quantity(result)) : quantity;
    if (q !== undefined) event.quantity = q;
    client.meterQuietly(type, who, event, what);
  }
  const wrapped = function (...args) {
    const started = performance.now();
    let result;
    try {
      result = fn.apply(this, args);
    } catch (err) {
      emit(args, started, err);
      throw err;
    }
    if (result && typeof result.then === 'function') {
      return result.then((value) => { emit(args, started, null, value); return value; },
        (err) => { emit(args, started, err); throw err; });
    }
    emit(args, started, null, result);
    return result;
  };
  Object.defineProperty(wrapped, 'name', { value: fn.name });
  return wrapped;
}
