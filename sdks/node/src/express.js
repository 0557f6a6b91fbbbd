// Express middleware: app.use(aforoExpress(aforo)) meters every request as `api.call` with the
// route template (req.baseUrl + req.route.path), method, status and latency_ms. The customer is
// the `customer(req)` callback's answer, else what a handler set with setCustomer(), else the
// customer header (X-Customer-Id). Probes (skipPaths) and requests no route matched are skipped.
import { runInScope } from './context.js';

export const DEFAULT_SKIP_PATHS = ['/health', '/healthz', '/livez', '/readyz', '/ready', '/ping', '/metrics',
  '/favicon.ico'];

export function aforoExpress(client, {
  eventType = 'api.call', customerHeader = 'x-customer-id', customer, skipPaths = DEFAULT_SKIP_PATHS, skip,
  meterUnmatched = false,
} = {}) {
  const skipped = new Set(skipPaths);
  return function aforoMiddleware(req, res, next) {
    if (skipped.has(req.path) || skip?.(req)) return next();
    const started = performance.now();
    const scope = { customer: req.get(customerHeader) || undefined, agent: undefined, route: undefined };
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      const route = scope.route ?? (req.route ? `${req.baseUrl ?? ''}${req.route.path}` : undefined);
      if (route === undefined && !meterUnmatched) return; // no route matched: nobody's usage
      const who = customer?.(req) ?? scope.customer;
      client.meterQuietly(eventType, who, {
        route: route ?? null, method: req.method, status: res.statusCode,
        latency_ms: Math.round((performance.now() - started) * 1000) / 1000,
      }, `${req.method} ${route}`);
    };
    res.once('finish', finish);
    res.once('close', finish); // the client went away before the response ended
    return runInScope(scope, next);
  };
}
