/**
 * What every call shares: the HTTP/2 connection (plaintext or TLS, with keepalive
 * pings), the API key, the retry of reads and the resume policy of streams.
 *
 * Only calls that are safe to repeat (reads) are retried on UNAVAILABLE; a write
 * that may already have been applied is never sent twice behind the caller's back.
 */
import type * as http2 from "node:http2";

import type { Interceptor } from "@connectrpc/connect";
import { Http2SessionManager } from "@connectrpc/connect-node";

import { type MemstoreError, type StatusName, StatusCode, toMemstoreError } from "./errors.js";

/** Exponential backoff: `initialBackoffMs * multiplier^(n-1)`, at most `maxBackoffMs`, `maxAttempts` tries. */
export interface BackoffPolicy {
  /** Tries in all, the first included; 1 means no retry. */
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
}

/** What `onResume` is told before a broken `listChunked` stream is opened again. */
export interface ResumeEvent {
  /** The cursor the new stream starts after: the last `next_cursor` received (0 if none, and for a watch). */
  cursor: number;
  /** For a watch: the token the new stream starts after ("" when it takes its snapshot again). */
  resume_token?: string | undefined;
  /** Failures in a row so far, this one included (reset whenever a chunk arrives). */
  attempt: number;
  /** Milliseconds the client waits before reopening. */
  delayMs: number;
  /** The status that broke the stream. */
  error: MemstoreError;
}

/**
 * When a broken ListUsersChunked stream is resumed from its last cursor. The count
 * of failures resets whenever a chunk arrives, so a long pipeline that meets an
 * occasional restart keeps going, while a server that stays down fails after
 * `maxAttempts` tries in a row.
 */
export interface ResumePolicy extends BackoffPolicy {
  /** Statuses after which the stream is resumed; others end the iteration with their error. */
  retryable: readonly StatusName[];
  /** Called before each resume, e.g. to log it. */
  onResume?: ((event: ResumeEvent) => void) | undefined;
}

/** How reads (GetUser, ListUsers, GetUserSessions, GetSession, ListSessions) are retried on UNAVAILABLE. */
export const DEFAULT_RETRY: BackoffPolicy = {
  maxAttempts: 5,
  initialBackoffMs: 100,
  maxBackoffMs: 2_000,
  multiplier: 2,
};

export const DEFAULT_RESUME: ResumePolicy = {
  maxAttempts: 6,
  initialBackoffMs: 100,
  maxBackoffMs: 5_000,
  multiplier: 2,
  // ABORTED and INTERNAL are what a connection reset or a broken HTTP/2 stream become.
  retryable: ["UNAVAILABLE", "ABORTED", "INTERNAL"],
};

export const DEFAULT_TIMEOUT_MS = 10_000;

/** The unary methods that only read, so may be sent again. */
const IDEMPOTENT_METHODS = new Set([
  "memstore.v1.UserService/GetUser",
  "memstore.v1.UserService/ListUsers",
  "memstore.v1.UserService/GetUserSessions",
  "memstore.v1.SessionService/GetSession",
  "memstore.v1.SessionService/ListSessions",
]);

/** Milliseconds to wait after the n-th failure in a row (n >= 1). */
export function backoffDelay(policy: BackoffPolicy, failuresInARow: number): number {
  return Math.min(policy.maxBackoffMs, policy.initialBackoffMs * policy.multiplier ** (failuresInARow - 1));
}

/** Resolves after `ms`, or rejects as soon as `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason as Error);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason as Error);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Sends the API key as a bearer token with every call. */
export function apiKeyInterceptor(apiKey: string): Interceptor {
  return (next) => (request) => {
    request.header.set("authorization", `Bearer ${apiKey}`);
    return next(request);
  };
}

/** Retries the idempotent unary calls on UNAVAILABLE, within the call's own deadline. */
export function retryReadsInterceptor(policy: BackoffPolicy): Interceptor {
  return (next) => async (request) => {
    const name = `${request.service.typeName}/${request.method.name}`;
    if (request.stream || !IDEMPOTENT_METHODS.has(name)) return next(request);
    for (let attempt = 1; ; attempt++) {
      try {
        return await next(request);
      } catch (reason) {
        // UNAVAILABLE: refused, reset, or broken before the status (see toMemstoreError).
        const { code } = toMemstoreError(reason);
        if (code !== StatusCode.UNAVAILABLE || attempt >= policy.maxAttempts || request.signal.aborted) throw reason;
        await sleep(backoffDelay(policy, attempt), request.signal).catch(() => {
          throw reason;
        });
      }
    }
  };
}

/** `host:port` (or a URL) as the base URL of the gRPC transport. */
export function baseUrl(address: string, tls: boolean): string {
  if (/^https?:\/\//.test(address)) return address;
  return `${tls ? "https" : "http"}://${address}`;
}

/**
 * The HTTP/2 connection of a client, kept so that `close()` can end it. It pings an
 * idle-looking connection every 60 s (a dead peer on a long stream is noticed), and
 * never keeps the Node process alive by itself.
 */
export function sessionManager(
  url: string,
  nodeOptions: http2.ClientSessionOptions | http2.SecureClientSessionOptions,
): Http2SessionManager {
  return new Http2SessionManager(
    url,
    { pingIntervalMs: 60_000, pingTimeoutMs: 20_000, idleConnectionTimeoutMs: 15 * 60_000 },
    nodeOptions,
  );
}
