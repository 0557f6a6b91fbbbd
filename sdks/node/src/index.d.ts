// Types of @aforo/sdk (the package is plain ESM JavaScript).

export declare const VERSION: string;

export interface AforoOptions {
  /** Aforo's base URL (or AFORO_ENDPOINT), e.g. http://127.0.0.1:8080 */
  endpoint?: string;
  /** A tenant API key, `afk_...` (or AFORO_API_KEY) */
  apiKey?: string;
  /** The CloudEvents source of every event (part of the idempotency key). Default "sdk/node". */
  source?: string;
  /** Events per request, 1..1000. Default 100. */
  batchSize?: number;
  /** How long a partial batch waits for company. Default 1000 ms. */
  lingerMs?: number;
  /** In-memory queue bound; when full, new events are dropped and reported. Default 10000. */
  maxQueue?: number;
  /** Retries per batch before it is dropped (never, with a spool). Default 10. */
  maxRetries?: number;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** Per request. Default 10000 ms. */
  timeoutMs?: number;
  /** Keep every event on disk until Aforo acknowledged it (survives exits and kills). */
  spoolDir?: string | null;
  spoolMaxBytes?: number;
  /** Called for events that will not be delivered: rejected, dropped, overflow. */
  onError?: ((error: DeliveryError) => void) | null;
  logger?: Pick<Console, 'warn' | 'error'>;
}

export interface Stats {
  queued: number;
  delivered: number;
  requests: number;
  retries: number;
  rejected: number;
  dropped: number;
  unattributed: number;
}

export type Data = Record<string, unknown>;

export interface WrapOptions<A extends unknown[], R> {
  /** A customer id, or a function of the call's arguments; default: the context's customer. */
  customer?: string | ((...args: A) => string | undefined);
  /** A quantity, or a function of the result. */
  quantity?: number | string | ((result: Awaited<R>) => number | string | undefined);
  data?: Data;
}

export declare class Aforo {
  constructor(options?: AforoOptions);
  readonly stats: Stats;
  /** Queue one event; returns its id. Throws at once for an event Aforo would refuse. */
  meter(type: string, subject?: string, data?: Data, options?: { id?: string; time?: Date | string }): string;
  wrap<A extends unknown[], R>(type: string, fn: (...args: A) => R, options?: WrapOptions<A, R>): (...args: A) => R;
  /** Send everything queued now; true when nothing is left waiting. */
  flush(timeoutMs?: number): Promise<boolean>;
  /** Flush, then stop. */
  close(timeoutMs?: number): Promise<void>;
}

export declare class DeliveryError extends Error {
  readonly reason: 'rejected' | 'dropped' | 'overflow';
  readonly lines: Buffer[];
  readonly detail: string;
  readonly status: number | null;
}

export declare class SpoolLocked extends Error {}

export declare function withContext<T>(scope: { customer?: string; agent?: string }, fn: () => T): T;
export declare function setCustomer(customer: string): void;
export declare function setAgent(agent: string): void;
export declare function setRoute(route: string): void;

export interface ExpressOptions {
  eventType?: string;
  customerHeader?: string;
  customer?: (req: any) => string | undefined;
  skipPaths?: string[];
  skip?: (req: any) => boolean;
  meterUnmatched?: boolean;
}

export declare function aforoExpress(client: Aforo, options?: ExpressOptions): (req: any, res: any, next: any) => void;

export declare function instrumentOpenAI<C>(client: C, aforo: Aforo,
  options?: { customer?: string | (() => string | undefined); agent?: string }): C;
