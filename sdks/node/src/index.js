// Aforo's Node.js SDK: meter usage as CloudEvents, batched, retried and (optionally) spooled.
//
//   import { Aforo } from '@aforo/sdk';
//   const aforo = new Aforo({ endpoint: 'http://127.0.0.1:8080', apiKey: 'afk_...' });
//   aforo.meter('api.call', 'cust-1', { route: '/v2/search' });
//   await aforo.close();
import { Aforo as Client, VERSION } from './client.js';
import { wrap } from './wrap.js';

export class Aforo extends Client {
  /** A function that meters each call of fn (sync or async): outcome, duration_ms, quantity. */
  wrap(type, fn, options) {
    return wrap(this, type, fn, options);
  }
}

export { VERSION };
export { withContext, setCustomer, setAgent, setRoute } from './context.js';
export { DeliveryError, SpoolLocked } from './delivery.js';
export { aforoExpress } from './express.js';
export { instrumentOpenAI } from './openai.js';
