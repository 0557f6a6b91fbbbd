// instrumentOpenAI with the real `openai` package, pointed at a local server that answers with
// OpenAI's documented response shapes (streamed and not).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import OpenAI from 'openai';
import { Aforo, instrumentOpenAI, withContext } from '../src/index.js';
import { aiKey, ledger, llm, money, newSource, proxy, quiet, sent } from './harness.js';

const messages = [{ role: 'user', content: 'Hello' }];
// The fixtures' usage (tests/fixtures/llm), as the event reports it.
const CHAT = { input_tokens: 1200, cached_tokens: 200, output_tokens: 300, tokens: 1500, reasoning_tokens: 0 };
const RESPONSES = { input_tokens: 2000, cached_tokens: 500, output_tokens: 800, tokens: 2800, reasoning_tokens: 100 };
const tokens = (e) => Object.fromEntries(Object.keys(CHAT).map((k) => [k, e.data[k]]));

function openai() {
  return new OpenAI({ baseURL: `${llm}/v1`, apiKey: 'sk-test', maxRetries: 0 });
}

test('openai completions and responses, streamed or not, are metered', async () => {
  const source = newSource();
  const aforo = new Aforo({ endpoint: proxy, apiKey: aiKey, source, lingerMs: 3_600_000 });
  const client = instrumentOpenAI(openai(), aforo);
  await withContext({ customer: 'ai-cust-1', agent: 'support-bot' }, async () => {
    const completion = await client.chat.completions.create({ model: 'gpt-4o', messages });
    assert.match(completion.choices[0].message.content, /^Hello/);

    const chunks = [];
    for await (const chunk of await client.chat.completions.create({ model: 'gpt-4o', messages, stream: true })) {
      chunks.push(chunk);
    }
    // The wrapper asked for usage; the caller, who did not, sees no usage-only chunk.
    assert.ok(chunks.length && chunks.every((c) => c.choices.length));
    assert.equal(chunks.map((c) => c.choices[0].delta.content ?? '').join(''), 'Hello there');

    const asked = [];
    const stream = await client.chat.completions.create({ model: 'gpt-4o', messages, stream: true,
      stream_options: { include_usage: true } });
    for await (const chunk of stream) asked.push(chunk);
    assert.equal(asked.at(-1).usage.prompt_tokens, 1200); // asked for: delivered

    const helper = client.chat.completions.stream({ model: 'gpt-4o', messages });
    assert.equal((await helper.finalChatCompletion()).choices[0].message.content, 'Hello there');

    const { data, response } = await client.chat.completions.create({ model: 'gpt-4o', messages }).withResponse();
    assert.equal(response.status, 200);
    assert.equal(data.usage.total_tokens, 1500);

    const answer = await client.responses.create({ model: 'gpt-4o-mini', input: 'Tell me a story' });
    assert.match(answer.output_text, /^In a peaceful grove/);
    const types = [];
    for await (const event of await client.responses.create({ model: 'gpt-4o-mini', input: 'Hi', stream: true })) {
      types.push(event.type);
    }
    assert.equal(types.at(-1), 'response.completed');
  });
  await aforo.flush();
  await aforo.close();

  const requested = await (await fetch(llm)).json();
  assert.deepEqual(requested.filter((r) => r.body.stream).slice(0, 3).map((r) => r.body.stream_options),
    [{ include_usage: true }, { include_usage: true }, { include_usage: true }]);

  const events = (await sent(source)).filter((e) => e.type === 'llm.completion');
  assert.deepEqual(events.map((e) => [e.data.operation, e.data.streamed]), [
    ['chat.completions', false], ['chat.completions', true], ['chat.completions', true],
    ['chat.completions', true], ['chat.completions', false], ['responses', false], ['responses', true]]);
  for (const e of events.slice(0, 5)) {
    assert.deepEqual(tokens(e), CHAT);
    assert.deepEqual([e.data.model, e.data.response_model], ['gpt-4o', 'gpt-4o-2024-08-06']);
  }
  for (const e of events.slice(5)) assert.deepEqual([tokens(e), e.data.model], [RESPONSES, 'gpt-4o-mini']);
  assert.deepEqual([...new Set(events.map((e) => `${e.subject} ${e.data.agent} ${e.data.provider}`))],
    ['ai-cust-1 support-bot openai']);

  // nimbus bills gpt-4o at 0.000005 per input and 0.00002 per output token; costs 0.0000025 / 0.00001
  const [record] = (await ledger(source, events[0].id, { apiKey: aiKey })).records;
  assert.deepEqual([record.status, record.tier, money(record.revenue), money(record.cost), money(record.margin)],
    ['accepted', 'sdk', '0.012', '0.006', '0.006']);
});

test('a completion without a customer is counted, not sent; instrumenting twice wraps once', async () => {
  const source = newSource();
  const aforo = new Aforo({ endpoint: proxy, apiKey: aiKey, source, logger: quiet });
  const client = instrumentOpenAI(instrumentOpenAI(openai(), aforo), aforo);
  await client.chat.completions.create({ model: 'gpt-4o', messages });
  await aforo.close();
  assert.equal(aforo.stats.unattributed, 1);
  assert.deepEqual(await sent(source), []);

  const other = newSource();
  const defaulted = new Aforo({ endpoint: proxy, apiKey: aiKey, source: other });
  const withDefault = instrumentOpenAI(instrumentOpenAI(openai(), defaulted, { customer: 'ai-cust-2' }),
    defaulted, { customer: 'ai-cust-2' });
  await withDefault.chat.completions.create({ model: 'gpt-4o', messages });
  await defaulted.close();
  assert.deepEqual((await sent(other)).map((e) => e.subject), ['ai-cust-2']);
});
