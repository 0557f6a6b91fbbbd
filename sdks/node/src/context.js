// Who is being metered right now (the customer, an event's subject, and the agent), carried
// through async calls with AsyncLocalStorage, so middleware, wrappers and the OpenAI
// instrumentation agree without passing them around.
import { AsyncLocalStorage } from 'node:async_hooks';

const storage = new AsyncLocalStorage();

/** The current scope: { customer, agent, route } (a handler may fill it in late). */
export function current() {
  return storage.getStore() ?? {};
}

/** Run fn with a customer and/or agent (unset ones are inherited). */
export function withContext({ customer, agent } = {}, fn) {
  const parent = current();
  return storage.run({ customer: customer ?? parent.customer, agent: agent ?? parent.agent }, fn);
}

/** Run fn in a scope object the caller keeps (the middleware reads it when the request ends). */
export function runInScope(scope, fn) {
  return storage.run(scope, fn);
}

function scope(field, value) {
  const store = storage.getStore();
  if (store === undefined) {
    throw new Error(`set${field[0].toUpperCase()}${field.slice(1)}() outside a request or withContext()`);
  }
  store[field] = value;
}

/** Name the customer of the current request or context from inside it. */
export const setCustomer = (customer) => scope('customer', customer);
export const setAgent = (agent) => scope('agent', agent);
/** Report the route template from a router the middleware cannot see into. */
export const setRoute = (route) => scope('route', route);
