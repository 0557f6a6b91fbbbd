// The one-line middleware in a real Express app, over a real socket.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import express from 'express';
import { Aforo, aforoExpress, setCustomer } from '../src/index.js';
import { aiKey, ledger, money, newSource, proxy, quiet, sent } from './harness.js';

async function listen(app) {
  const server = await new Promise((resolve) => { const s = app.listen(0, '127.0.0.1', () => resolve(s)); });
  return { server, base: `http://127.0.0.1:${server.address().port}` };
}

test('express middleware meters route templates, methods, statuses and latency', async () => {
  const source = newSource();
  const aforo = new Aforo({ endpoint: proxy, apiKey: aiKey, source, lingerMs: 3_600_000, logger: quiet });
  const app = express();
  app.use(aforoExpress(aforo));
  app.get('/items/:itemId', (req, res) => res.json({ id: req.params.itemId }));
  app.post('/orders', (req, res) => { setCustomer('ai-cust-2'); res.json({}); });
  app.get('/missing/:x', (req, res) => res.status(404).end());
  app.get('/boom', () => { throw new Error('bug'); });
  app.get('/health', (req, res) => res.json({ ok: true }));
  const v2 = express.Router();
  v2.get('/users/:id', (req, res) => res.json({}));
  app.use('/v2', v2);

  const { server, base } = await listen(app);
  const who = { headers: { 'X-Customer-Id': 'ai-cust-1' } };
  try {
    assert.equal((await fetch(`${base}/items/42`, who)).status, 200);
    assert.equal((await fetch(`${base}/orders`, { method: 'POST' })).status, 200);
    assert.equal((await fetch(`${base}/missing/a`, who)).status, 404);
    assert.equal((await fetch(`${base}/boom`, who)).status, 500);
    assert.equal((await fetch(`${base}/health`, who)).status, 200); // a probe: skipped
    assert.equal((await fetch(`${base}/nowhere`, who)).status, 404); // no route: skipped
    assert.equal((await fetch(`${base}/v2/users/9`, who)).status, 200);
    assert.equal((await fetch(`${base}/items/44`)).status, 200); // nobody to bill: counted, not sent
  } finally {
    server.close();
  }
  await aforo.flush();
  await aforo.close();
  assert.equal(aforo.stats.unattributed, 1);
  const events = await sent(source);
  const byRoute = Object.fromEntries(events.map((e) => [`${e.data.method} ${e.data.route}`, e]));
  assert.deepEqual(Object.keys(byRoute).sort(), ['GET /boom', 'GET /items/:itemId', 'GET /missing/:x',
    'GET /v2/users/:id', 'POST /orders']);
  assert.equal(byRoute['POST /orders'].subject, 'ai-cust-2');
  assert.equal(byRoute['GET /missing/:x'].data.status, 404);
  assert.equal(byRoute['GET /boom'].data.status, 500);
  const item = byRoute['GET /items/:itemId'];
  assert.deepEqual(Object.keys(item.data).sort(), ['latency_ms', 'method', 'route', 'status']);
  assert.equal(item.subject, 'ai-cust-1');
  const [record] = (await ledger(source, item.id, { apiKey: aiKey })).records;
  assert.deepEqual([record.status, record.tier, money(record.revenue)], ['accepted', 'sdk', '0.001']);
});

test('express customer callback and skip', async () => {
  const source = newSource();
  const aforo = new Aforo({ endpoint: proxy, apiKey: aiKey, source, lingerMs: 3_600_000 });
  const app = express();
  app.use(aforoExpress(aforo, { customer: (req) => req.get('x-tenant-user'), skip: (req) => req.path === '/internal' }));
  app.get('/things/:name', (req, res) => res.json({}));
  app.get('/internal', (req, res) => res.json({}));
  const { server, base } = await listen(app);
  try {
    await fetch(`${base}/things/a`, { headers: { 'x-tenant-user': 'ai-cust-1' } });
    await fetch(`${base}/internal`, { headers: { 'x-tenant-user': 'ai-cust-1' } });
  } finally {
    server.close();
  }
  await aforo.close();
  assert.deepEqual((await sent(source)).map((e) => [e.subject, e.data.route]), [['ai-cust-1', '/things/:name']]);
});
