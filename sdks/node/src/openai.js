// instrumentOpenAI(client, aforo): every chat completion and response of an `openai` client
// (streamed or not, including the .stream() / .parse() / runTools helpers, which call create)
// emits an `llm.completion` event with the tokens from the response's own `usage`.
//
// data: provider, model (as requested: the name a price list uses), response_model, operation,
// input_tokens (cached included), cached_tokens, output_tokens (reasoning included),
// reasoning_tokens (when reported), tokens (input + output), latency_ms, streamed, agent.
//
// A streamed chat completion reports usage only when asked (stream_options.include_usage); when
// the caller did not ask, the wrapper asks and keeps the usage-only chunk to itself.
import { current } from './context.js';

export const EVENT_TYPE = 'llm.completion';

const num = (v) => (typeof v === 'number' ? v : 0);

export function chatUsage(u) {
  return {
    input_tokens: num(u.prompt_tokens), output_tokens: num(u.completion_tokens),
    cached_tokens: num(u.prompt_tokens_details?.cached_tokens),
    reasoning_tokens: u.completion_tokens_details?.reasoning_tokens,
  };
}

export function responsesUsage(u) {
  return {
    input_tokens: num(u.input_tokens), output_tokens: num(u.output_tokens),
    cached_tokens: num(u.input_tokens_details?.cached_tokens),
    reasoning_tokens: u.output_tokens_details?.reasoning_tokens,
  };
}

class Call {
  constructor(meter, operation, body) {
    const scope = current();
    this.meter = meter;
    this.customer = scope.customer ?? meter.defaultCustomer();
    this.agent = scope.agent ?? meter.agent;
    this.operation = operation;
    this.model = typeof body?.model === 'string' ? body.model : undefined;
    this.streamed = Boolean(body?.stream);
    this.started = performance.now();
    this.responseModel = undefined;
    this.usage = null;
    this.finished = false;
  }

  finish() {
    if (this.finished) return;
    this.finished = true;
    if (this.usage) this.meter.emit(this);
  }
}

class Meter {
  constructor(client, customer, agent) {
    this.client = client;
    this.customer = customer;
    this.agent = agent;
  }

  defaultCustomer() { return typeof this.customer === 'function' ? this.customer() : this.customer; }

  emit(call) {
    const u = call.usage;
    const model = call.model ?? call.responseModel;
    const data = {
      provider: 'openai', model, response_model: call.responseModel ?? model, operation: call.operation,
      input_tokens: u.input_tokens, cached_tokens: u.cached_tokens, output_tokens: u.output_tokens,
      tokens: u.input_tokens + u.output_tokens,
      latency_ms: Math.round((performance.now() - call.started) * 1000) / 1000, streamed: call.streamed,
    };
    if (u.reasoning_tokens != null) data.reasoning_tokens = u.reasoning_tokens;
    if (call.agent) data.agent = call.agent;
    this.client.meterQuietly(EVENT_TYPE, call.customer, data, `openai ${call.operation} ${model}`);
  }
}

// A stand-in for the library's Stream: the same object (instanceof, controller, tee...) except
// that iterating it lets us see each item, hide those the caller did not ask for, and finish the
// call when iteration ends, fails or is abandoned.
function observed(stream, call, see, hide) {
  async function* items() {
    try {
      for await (const item of stream) {
        see(item);
        if (!hide(item)) yield item;
      }
    } finally {
      call.finish();
    }
  }
  return new Proxy(stream, {
    get(target, prop) {
      if (prop === Symbol.asyncIterator) return () => items();
      const value = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

const handlers = {
  chat: {
    operation: 'chat.completions',
    before(body, call) {
      if (call.streamed && !body.stream_options?.include_usage) {
        call.injected = true;
        return { ...body, stream_options: { ...body.stream_options, include_usage: true } };
      }
      return body;
    },
    done(call, completion) {
      call.responseModel = completion?.model;
      if (completion?.usage) call.usage = chatUsage(completion.usage);
    },
    see(call, chunk) {
      call.responseModel = chunk?.model ?? call.responseModel;
      if (chunk?.usage) call.usage = chatUsage(chunk.usage);
    },
    hide: (call, chunk) => Boolean(call.injected && chunk?.usage && !chunk.choices?.length),
  },
  responses: {
    operation: 'responses',
    before: (body) => body,
    done(call, response) {
      call.responseModel = response?.model ?? call.responseModel;
      if (response?.usage) call.usage = responsesUsage(response.usage);
    },
    // response.completed (or .incomplete / .failed) carries the whole response with its usage.
    see(call, event) { if (event?.response) handlers.responses.done(call, event.response); },
    hide: () => false,
  },
};

function wrapCreate(resource, meter, handler) {
  const original = resource?.create;
  if (typeof original !== 'function' || original.aforo) return;
  const create = function (body, options) {
    const call = new Call(meter, handler.operation, body);
    const promise = original.call(resource, handler.before(body, call), options);
    if (!call.streamed) {
      // A side branch: the caller gets the library's own promise (withResponse() and all).
      promise.then((result) => { handler.done(call, result); call.finish(); }, () => {});
      return promise;
    }
    const wrapStream = (stream) => observed(stream, call, (item) => handler.see(call, item),
      (item) => handler.hide(call, item));
    const streamed = promise.then(wrapStream);
    streamed.asResponse = () => promise.asResponse();
    streamed.withResponse = async () => ({ ...(await promise.withResponse()), data: await streamed });
    return streamed;
  };
  create.aforo = true; // instrumenting twice wraps once
  resource.create = create;
}

/** Meter `client` (an OpenAI instance) into `aforo`; returns the same client. Options: customer
 * (a string or a function, used when no withContext() customer is set), agent. */
export function instrumentOpenAI(client, aforo, { customer, agent } = {}) {
  const meter = new Meter(aforo, customer, agent);
  wrapCreate(client.chat?.completions, meter, handlers.chat);
  wrapCreate(client.responses, meter, handlers.responses);
  return client;
}
