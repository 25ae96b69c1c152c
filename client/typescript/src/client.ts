/**
 * The client: `new MemstoreClient({ address: "localhost:50051" }).user.get("user123")`.
 *
 * Calls go over Connect's gRPC transport for Node (HTTP/2) through the stubs
 * generated from protos/ (src/gen); this file only turns the reference page's
 * shapes into request messages and the responses back into plain objects.
 */
import type * as http2 from "node:http2";

import { Code, type CallOptions as ConnectCallOptions, type Client, type Interceptor, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, type Http2SessionManager } from "@connectrpc/connect-node";

import { StatusCode, toCallError, toMemstoreError } from "./errors.js";
import { SessionService } from "./gen/memstore/v1/sessions_pb.js";
import { UserService } from "./gen/memstore/v1/users_pb.js";
import {
  type CallOptions,
  type CreateSessionRequest,
  type BatchAddOptions,
  type CreateUserRequest,
  type FilterOptions,
  type ListSessionsOptions,
  type Session,
  type StreamOptions,
  type UpdateSessionRequest,
  type UpdateUserRequest,
  type User,
  type WatchOptions,
  type WatchUsersResponse,
  createSessionMessage,
  createUserMessage,
  sessionFromMessage,
  toCursor,
  updateSessionMessage,
  updateUserMessage,
  userFromMessage,
  watchResponseFromMessage,
} from "./models.js";
import {
  type BackoffPolicy,
  DEFAULT_RESUME,
  DEFAULT_RETRY,
  DEFAULT_TIMEOUT_MS,
  type ResumePolicy,
  apiKeyInterceptor,
  backoffDelay,
  baseUrl,
  retryReadsInterceptor,
  sessionManager,
  sleep,
} from "./transport.js";

/** How to reach memstore. Every field is optional. */
export interface MemstoreClientOptions {
  /** `host:port` of the server (or an `http://` / `https://` URL); default `localhost:50051`. */
  address?: string | undefined;
  /** Sent as `authorization: Bearer <apiKey>` with every call. */
  apiKey?: string | undefined;
  /**
   * `true`: TLS with the system's trusted roots; an object: TLS with these Node
   * options (`ca`, `cert`, `key`, `servername`...); default plaintext.
   */
  tls?: boolean | http2.SecureClientSessionOptions | undefined;
  /** Default deadline of every unary call in milliseconds (default 10 000; 0 for none). Streams have none. */
  timeoutMs?: number | undefined;
  /** Retry of reads on UNAVAILABLE (default 5 tries, 100 ms doubling to 2 s); `false` for none. */
  retry?: Partial<BackoffPolicy> | false | undefined;
  /** Resume of a broken `listChunked` stream (default 6 tries in a row, 100 ms doubling to 5 s). */
  resume?: Partial<ResumePolicy> | undefined;
  /** Extra Connect interceptors, run on every call (logging, tracing, headers). */
  interceptors?: Interceptor[] | undefined;
}

/**
 * Sends one unary call with the client's deadline; every failure becomes a MemstoreError.
 * @internal
 */
export class Caller {
  constructor(private readonly timeoutMs: number) {}

  options(options: CallOptions | undefined): ConnectCallOptions {
    const timeoutMs = options?.timeoutMs ?? this.timeoutMs;
    const result: ConnectCallOptions = {};
    if (timeoutMs > 0) result.timeoutMs = timeoutMs;
    if (options?.signal !== undefined) result.signal = options.signal;
    return result;
  }

  async call<T>(send: (options: ConnectCallOptions) => Promise<T>, options: CallOptions | undefined): Promise<T> {
    try {
      return await send(this.options(options));
    } catch (reason) {
      throw toCallError(reason, options?.signal);
    }
  }
}

/** Sessions fetched per request when `getSessions` gathers all of a user's sessions. */
const SESSION_PAGE = 1000;

/** `client.user`: the reference page's user operations. */
export class UserClient {
  readonly #stub: Client<typeof UserService>;
  readonly #caller: Caller;
  readonly #resume: ResumePolicy;

  /** @internal Use `new MemstoreClient(...).user`. */
  constructor(stub: Client<typeof UserService>, caller: Caller, resume: ResumePolicy) {
    this.#stub = stub;
    this.#caller = caller;
    this.#resume = resume;
  }

  /** Creates a user. AlreadyExistsError when the `user_id` is taken; InvalidArgumentError for a bad field. */
  async add(request: CreateUserRequest, options?: CallOptions): Promise<User> {
    const response = await this.#caller.call((o) => this.#stub.createUser(createUserMessage(request), o), options);
    return userFromMessage(required(response.user, "user"));
  }

  /** One user by its `user_id`. NotFoundError when there is none. */
  async get(user_id: string, options?: CallOptions): Promise<User> {
    const response = await this.#caller.call((o) => this.#stub.getUser({ userId: user_id }, o), options);
    return userFromMessage(required(response.user, "user"));
  }

  /** Updates a user (see UpdateUserRequest) and returns it as stored afterwards. */
  async update(request: UpdateUserRequest, options?: CallOptions): Promise<User> {
    const response = await this.#caller.call((o) => this.#stub.updateUser(updateUserMessage(request), o), options);
    return userFromMessage(required(response.user, "user"));
  }

  /** Deletes a user and all of its sessions. NotFoundError when there is none. */
  async delete(user_id: string, options?: CallOptions): Promise<void> {
    await this.#caller.call((o) => this.#stub.deleteUser({ userId: user_id }, o), options);
  }

  /**
   * One page of users in `id` order after `cursor` (0: from the start), only those matching
   * `options.filter` when given. `limit` 0 means the server's default (100), at most 1000.
   * For the next page pass the last user's `id` (and the same filter).
   */
  async list(limit = 0, cursor: number | bigint = 0, options?: FilterOptions): Promise<User[]> {
    const request = { limit, cursor: toCursor(cursor), filter: options?.filter ?? "" };
    const response = await this.#caller.call((o) => this.#stub.listUsers(request, o), options);
    return response.users.map(userFromMessage);
  }

  /** How many users match `options.filter` (every user without one). */
  async count(options?: FilterOptions): Promise<number> {
    const request = { filter: options?.filter ?? "" };
    const response = await this.#caller.call((o) => this.#stub.countUsers(request, o), options);
    return Number(response.count);
  }

  /**
   * Creates 1 to 1,000 users in one transaction, all or none, and returns them in request
   * order. A `user_id` that exists (or comes twice) is AlreadyExistsError and nothing is
   * created, unless `options.skip_existing`: existing users are then left alone and left out.
   */
  async batchAdd(requests: readonly CreateUserRequest[], options?: BatchAddOptions): Promise<User[]> {
    const request = { requests: requests.map(createUserMessage), skipExisting: options?.skip_existing ?? false };
    const response = await this.#caller.call((o) => this.#stub.batchCreateUsers(request, o), options);
    return response.users.map(userFromMessage);
  }

  /** All of a user's sessions in `id` order (gathered page by page). NotFoundError for an unknown user. */
  async getSessions(user_id: string, options?: CallOptions): Promise<Session[]> {
    const sessions: Session[] = [];
    let cursor = 0n;
    for (;;) {
      const response = await this.#caller.call(
        (o) => this.#stub.getUserSessions({ userId: user_id, limit: SESSION_PAGE, cursor }, o),
        options,
      );
      sessions.push(...response.sessions.map(sessionFromMessage));
      if (response.nextCursor === 0n) return sessions;
      cursor = response.nextCursor;
    }
  }

  /**
   * Every user after `cursor`, `chunkSize` at a time (one array per chunk), over one
   * ListUsersChunked stream. A stream broken by a retryable status (the server
   * restarting, a connection reset) is reopened from the last `next_cursor`
   * received, so no user comes twice and none is missed. The stream has no
   * deadline; abort it with `options.signal`, or stop iterating.
   */
  async *listChunked(
    chunkSize = 100,
    cursor: number | bigint = 0,
    options: StreamOptions = {},
  ): AsyncGenerator<User[], void, undefined> {
    const filter = options.filter ?? "";
    const messages = resumedByCursor(
      (next, signal) => this.#stub.listUsersChunked({ chunkSize, cursor: next, filter }, { signal }),
      toCursor(cursor),
      this.#resume,
      options.signal,
      { lastHasCursor0: true },
    );
    for await (const message of messages) yield message.users.map(userFromMessage);
  }

  /**
   * Every user after `cursor` (matching `options.filter`) as JSON lines that the server
   * builds (ExportUsers, what `memstore export` writes): each string is whole lines, each
   * ending in "\n", up to 4,000 users, in id order. Far cheaper than serializing
   * `listChunked`'s users. A stream broken by a retryable status is reopened after the
   * last block received, so no user comes twice and none is missed. No deadline; abort it
   * with `options.signal`, or stop iterating.
   */
  async *exportJsonLines(
    cursor: number | bigint = 0,
    options: StreamOptions = {},
  ): AsyncGenerator<string, void, undefined> {
    const filter = options.filter ?? "";
    const messages = resumedByCursor(
      (next, signal) => this.#stub.exportUsers({ cursor: next, filter }, { signal }),
      toCursor(cursor),
      this.#resume,
      options.signal,
      { lastHasCursor0: false },
    );
    for await (const message of messages) yield message.jsonLines;
  }

  /**
   * The change feed (WatchUsers): with `send_initial`, every existing user as an EXISTING
   * event, then a message with `initial_complete`, then every committed change; with
   * `resume_token`, every change after the point it marks; with neither, the changes from
   * now on. A message comes at once and then at least every heartbeat while nothing
   * changes, each with a fresh `resume_token` to checkpoint.
   *
   * A stream broken by a retryable status is reopened from the last token received
   * (delivery is at least once: an event may come again, never is one missed). Broken
   * during the initial snapshot, it takes the snapshot again from the start and flags that
   * message `snapshot_restarted`: a token from inside a snapshot would skip the users not
   * listed yet. The stream never ends by itself; stop iterating or abort `options.signal`.
   */
  async *watch(options: WatchOptions = {}): AsyncGenerator<WatchUsersResponse, void, undefined> {
    const policy = this.#resume;
    const retryable = new Set<number>(policy.retryable.map((name) => StatusCode[name]));
    let token = options.resume_token ?? "";
    let inSnapshot = (options.send_initial ?? false) && token === "";
    let snapshotStarted = false;
    let failures = 0;
    for (;;) {
      const attempt = new AbortController();
      const signal = options.signal === undefined ? attempt.signal : AbortSignal.any([options.signal, attempt.signal]);
      let restarted = inSnapshot && snapshotStarted;
      const request = inSnapshot ? { sendInitial: true } : { resumeToken: token };
      try {
        for await (const message of this.#stub.watchUsers(request, { signal })) {
          failures = 0;
          if (inSnapshot) {
            snapshotStarted = true;
            if (message.initialComplete) inSnapshot = false;
          }
          if (message.resumeToken !== "") token = message.resumeToken;
          const response = watchResponseFromMessage(message, restarted);
          restarted = false;
          yield response;
        }
        // The server ended the stream (it is shutting down, say): go on from the last token.
        throw new ConnectError("the server ended the watch", Code.Unavailable);
      } catch (reason) {
        const error = toCallError(reason, options.signal);
        failures += 1;
        if (options.signal?.aborted || !retryable.has(error.code) || failures >= policy.maxAttempts) {
          throw error;
        }
        const delayMs = backoffDelay(policy, failures);
        policy.onResume?.({ cursor: 0, resume_token: token, attempt: failures, delayMs, error });
        try {
          await sleep(delayMs, options.signal);
        } catch {
          throw error;
        }
      } finally {
        attempt.abort();
      }
    }
  }
}

/** `client.session`: session operations in the same style. */
export class SessionClient {
  readonly #stub: Client<typeof SessionService>;
  readonly #caller: Caller;

  /** @internal Use `new MemstoreClient(...).session`. */
  constructor(stub: Client<typeof SessionService>, caller: Caller) {
    this.#stub = stub;
    this.#caller = caller;
  }

  /** Creates a session. AlreadyExistsError when the `session_id` is taken, NotFoundError for an unknown `user_id`. */
  async add(request: CreateSessionRequest, options?: CallOptions): Promise<Session> {
    const response = await this.#caller.call((o) => this.#stub.createSession(createSessionMessage(request), o), options);
    return sessionFromMessage(required(response.session, "session"));
  }

  /** One session by its `session_id`. NotFoundError when there is none. */
  async get(session_id: string, options?: CallOptions): Promise<Session> {
    const response = await this.#caller.call((o) => this.#stub.getSession({ sessionId: session_id }, o), options);
    return sessionFromMessage(required(response.session, "session"));
  }

  /** Merges (or, with `update_mask`, replaces) a session's metadata; returns the session afterwards. */
  async update(request: UpdateSessionRequest, options?: CallOptions): Promise<Session> {
    const response = await this.#caller.call((o) => this.#stub.updateSession(updateSessionMessage(request), o), options);
    return sessionFromMessage(required(response.session, "session"));
  }

  /** Deletes a session. NotFoundError when there is none. */
  async delete(session_id: string, options?: CallOptions): Promise<void> {
    await this.#caller.call((o) => this.#stub.deleteSession({ sessionId: session_id }, o), options);
  }

  /**
   * One page of sessions in `id` order after `cursor`, optionally only those of `options.user_id`
   * and only those matching `options.filter`.
   */
  async list(limit = 0, cursor: number | bigint = 0, options?: ListSessionsOptions): Promise<Session[]> {
    const request = {
      limit,
      cursor: toCursor(cursor),
      userId: options?.user_id ?? "",
      filter: options?.filter ?? "",
    };
    const response = await this.#caller.call((o) => this.#stub.listSessions(request, o), options);
    return response.sessions.map(sessionFromMessage);
  }

  /** How many sessions match `options.filter` (every session without one). */
  async count(options?: FilterOptions): Promise<number> {
    const request = { filter: options?.filter ?? "" };
    const response = await this.#caller.call((o) => this.#stub.countSessions(request, o), options);
    return Number(response.count);
  }
}

/**
 * A connection to memstore. It connects on the first call and reconnects as needed;
 * `close()` ends the connection (an idle client never keeps Node running).
 */
export class MemstoreClient {
  readonly user: UserClient;
  readonly session: SessionClient;
  readonly #sessions: Http2SessionManager;

  constructor(options: MemstoreClientOptions = {}) {
    const tls = options.tls ?? false;
    const url = baseUrl(options.address ?? "localhost:50051", tls !== false);
    this.#sessions = sessionManager(url, typeof tls === "object" ? tls : {});
    const interceptors: Interceptor[] = [...(options.interceptors ?? [])];
    if (options.apiKey !== undefined) interceptors.push(apiKeyInterceptor(options.apiKey));
    if (options.retry !== false) interceptors.push(retryReadsInterceptor({ ...DEFAULT_RETRY, ...options.retry }));
    const transport = createGrpcTransport({ baseUrl: url, sessionManager: this.#sessions, interceptors });
    const caller = new Caller(options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    this.user = new UserClient(createClient(UserService, transport), caller, { ...DEFAULT_RESUME, ...options.resume });
    this.session = new SessionClient(createClient(SessionService, transport), caller);
  }

  /** Ends the connection; calls in flight fail with UnavailableError or CancelledError. */
  close(): void {
    this.#sessions.abort();
  }
}

/**
 * The messages of a stream read by cursor (ListUsersChunked, ExportUsers), reopened after the
 * last `nextCursor` received when a retryable status breaks it, within the resume policy; so
 * no user comes twice and none is missed. `lastHasCursor0`: the stream marks its last message
 * with cursor 0 (ListUsersChunked), and ends there.
 */
async function* resumedByCursor<M extends { nextCursor: bigint }>(
  open: (cursor: bigint, signal: AbortSignal) => AsyncIterable<M>,
  cursor: bigint,
  policy: ResumePolicy,
  callerSignal: AbortSignal | undefined,
  { lastHasCursor0 }: { lastHasCursor0: boolean },
): AsyncGenerator<M, void, undefined> {
  const retryable = new Set<number>(policy.retryable.map((name) => StatusCode[name]));
  let next = cursor;
  let failures = 0;
  for (;;) {
    // Ends this attempt's stream when the caller stops iterating early, or it breaks.
    const attempt = new AbortController();
    const signal = callerSignal === undefined ? attempt.signal : AbortSignal.any([callerSignal, attempt.signal]);
    try {
      for await (const message of open(next, signal)) {
        failures = 0;
        next = message.nextCursor;
        yield message;
        if (lastHasCursor0 && next === 0n) return;
      }
      return;
    } catch (reason) {
      const error = toCallError(reason, callerSignal);
      failures += 1;
      if (callerSignal?.aborted || !retryable.has(error.code) || failures >= policy.maxAttempts) {
        throw error;
      }
      const delayMs = backoffDelay(policy, failures);
      policy.onResume?.({ cursor: Number(next), attempt: failures, delayMs, error });
      try {
        await sleep(delayMs, callerSignal);
      } catch {
        throw error;
      }
    } finally {
      attempt.abort();
    }
  }
}

function required<T>(value: T | undefined, field: string): T {
  if (value === undefined) {
    throw toMemstoreError(new ConnectError(`the server's response has no ${field}`, Code.Internal));
  }
  return value;
}
