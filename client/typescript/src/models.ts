/**
 * The client's own types: what callers build and what they get back.
 *
 * Field names are those of the API and of the reference page (`user_id`,
 * `first_name`, `created_at`), metadata is a plain JSON object, timestamps are
 * `Date`s and the server-assigned numbers are `number`s, so callers never touch
 * protobuf messages.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";

import { toMemstoreError } from "./errors.js";

import type { Session as SessionMessage } from "./gen/memstore/v1/sessions_pb.js";
import type {
  CreateSessionRequestSchema,
  UpdateSessionRequestSchema,
} from "./gen/memstore/v1/sessions_pb.js";
import {
  type CreateUserRequestSchema,
  type UpdateUserRequestSchema,
  type User as UserMessage,
  UserEvent_Type,
  type WatchUsersResponse as WatchUsersResponseMessage,
} from "./gen/memstore/v1/users_pb.js";

/** Any JSON value. */
export type JsonValue = number | string | boolean | null | JsonObject | JsonValue[];

/** A JSON object: what `metadata` holds. */
export interface JsonObject {
  [key: string]: JsonValue;
}

/** A user as stored by memstore. */
export interface User {
  /** The caller's identifier of the user; unique, immutable. */
  user_id: string;
  email: string;
  first_name: string;
  last_name: string;
  /** Free-form JSON object; `{}` when none was stored. */
  metadata: JsonObject;
  /** Server-assigned UUID, canonical 36-character form. */
  uuid: string;
  /** Server-assigned number, increasing in creation order: the cursor of `list` and `listChunked`. */
  id: number;
  created_at: Date;
  updated_at: Date;
  /** How many sessions the user has now. */
  session_count: number;
}

/** A session as stored by memstore. */
export interface Session {
  /** The caller's identifier of the session; unique, immutable. */
  session_id: string;
  /** The `user_id` of its user; "" for a session of no user. */
  user_id: string;
  /** Free-form JSON object; `{}` when none was stored. */
  metadata: JsonObject;
  uuid: string;
  /** Server-assigned number, increasing in creation order: the cursor of session listings. */
  id: number;
  created_at: Date;
  updated_at: Date;
}

/** What `client.user.add` takes. Only `user_id` is required. */
export interface CreateUserRequest {
  user_id: string;
  /** Empty or a syntactically valid address. */
  email?: string | undefined;
  first_name?: string | undefined;
  last_name?: string | undefined;
  metadata?: JsonObject | undefined;
}

/** The fields an `update_mask` may name. */
export type UserUpdateField = "email" | "first_name" | "last_name" | "metadata";

/**
 * What `client.user.update` takes. A field left out (or `undefined`) keeps its
 * stored value; a field given is set, so `""` clears it. `metadata` is
 * deep-merged into the stored object, and a `null` value removes that key. With
 * `update_mask`, exactly the named fields are replaced (`metadata` wholesale).
 */
export interface UpdateUserRequest {
  user_id: string;
  email?: string | undefined;
  first_name?: string | undefined;
  last_name?: string | undefined;
  metadata?: JsonObject | undefined;
  update_mask?: readonly UserUpdateField[] | undefined;
}

/** What `client.session.add` takes. Only `session_id` is required. */
export interface CreateSessionRequest {
  session_id: string;
  /** The `user_id` of an existing user to attach the session to; left out for none. */
  user_id?: string | undefined;
  metadata?: JsonObject | undefined;
}

/** The fields an `update_mask` of a session may name. */
export type SessionUpdateField = "metadata";

/**
 * What `client.session.update` takes: `metadata` is deep-merged (a `null` value
 * removes that key); with `update_mask: ["metadata"]` it replaces the stored object.
 */
export interface UpdateSessionRequest {
  session_id: string;
  metadata?: JsonObject | undefined;
  update_mask?: readonly SessionUpdateField[] | undefined;
}

/** The reference page's names for the request types. */
export type ICreateUserRequest = CreateUserRequest;
export type IUpdateUserRequest = UpdateUserRequest;
export type ICreateSessionRequest = CreateSessionRequest;
export type IUpdateSessionRequest = UpdateSessionRequest;

/** Per-call options of every unary method. */
export interface CallOptions {
  /** Deadline of this call in milliseconds; overrides the client's `timeoutMs`. */
  timeoutMs?: number | undefined;
  /** Aborts the call (it then fails with CancelledError). */
  signal?: AbortSignal | undefined;
}

/** Options of `client.listChunked`: the stream has no deadline, but it can be aborted. */
export interface StreamOptions {
  /** Aborts the stream (the iteration then fails with CancelledError). */
  signal?: AbortSignal | undefined;
  /** Only the users matching this filter (the server README's "Filtering"); empty: every user. */
  filter?: string | undefined;
}

/** Options of `client.user.list` and of the counts. */
export interface FilterOptions extends CallOptions {
  /**
   * Only the items matching this filter (the server README's "Filtering"), e.g.
   * `metadata.plan = "pro"`; empty: every item. A bad one is InvalidArgumentError
   * with reason INVALID_FILTER and the character where it goes wrong.
   */
  filter?: string | undefined;
}

/** What an event of `client.user.watch` says happened to its user. */
export type UserEventType = "EXISTING" | "CREATED" | "UPDATED" | "DELETED";

/** One event of a user watch. */
export interface UserEvent {
  /** EXISTING: listed by the initial snapshot; CREATED, UPDATED, DELETED: a committed change. */
  type: UserEventType;
  /** The user after the change; for DELETED, as it was last (at least `user_id`, `uuid` and `id`). */
  user: User;
  /** Never decreases for one `user_id`. */
  sequence: number;
  /** When the change was made, as close to its commit as the server can tell. */
  commit_time: Date;
}

/** One message of a user watch. */
export interface WatchUsersResponse {
  /** Events in the order to apply them; none for the first message and for heartbeats. */
  events: UserEvent[];
  /** The point after these events: keep the last one and pass it to `watch` to go on from there. */
  resume_token: string;
  /** True on the message after the initial snapshot's last user. */
  initial_complete: boolean;
  /**
   * True on the first message of a snapshot taken again because the stream broke during the
   * first one: drop what the broken snapshot gave (users deleted meanwhile are not listed again).
   */
  snapshot_restarted: boolean;
}

/** Options of `client.user.watch`. */
export interface WatchOptions extends StreamOptions {
  /** Every change committed after the point this token marks (from any earlier message). */
  resume_token?: string | undefined;
  /** Without a token: first every existing user as an EXISTING event, then the changes. */
  send_initial?: boolean | undefined;
}

/** Options of `client.session.list`. */
export interface ListSessionsOptions extends FilterOptions {
  /** Only the sessions of this user (NotFoundError when there is no such user). */
  user_id?: string | undefined;
}

/** Options of `client.user.batchAdd`. */
export interface BatchAddOptions extends CallOptions {
  /**
   * Leave users whose `user_id` already exists as they are, and out of the result, instead of
   * failing the whole batch with AlreadyExistsError: an interrupted import can be run again.
   */
  skip_existing?: boolean | undefined;
}

// ---- conversions between these types and the generated messages (internal) ----

function toDate(stamp: Timestamp | undefined): Date {
  return stamp === undefined ? new Date(0) : timestampDate(stamp);
}

/** A server-assigned int64 as a number (ids and counts stay far below 2^53). */
function toNumber(value: bigint): number {
  return Number(value);
}

/** A caller's cursor (number or bigint) as the int64 the wire wants. */
export function toCursor(value: number | bigint): bigint {
  if (typeof value === "bigint") return value;
  if (!Number.isSafeInteger(value)) throw new RangeError(`cursor must be an integer, got ${value}`);
  return BigInt(value);
}

export function userFromMessage(message: UserMessage): User {
  return {
    user_id: message.userId,
    email: message.email,
    first_name: message.firstName,
    last_name: message.lastName,
    metadata: message.metadata ?? {},
    uuid: message.uuid,
    id: toNumber(message.id),
    created_at: toDate(message.createdAt),
    updated_at: toDate(message.updatedAt),
    session_count: toNumber(message.sessionCount),
  };
}

export function sessionFromMessage(message: SessionMessage): Session {
  return {
    session_id: message.sessionId,
    user_id: message.userId,
    metadata: message.metadata ?? {},
    uuid: message.uuid,
    id: toNumber(message.id),
    created_at: toDate(message.createdAt),
    updated_at: toDate(message.updatedAt),
  };
}

/**
 * `metadata` as the wire's google.protobuf.Struct wants it: keys whose value is
 * `undefined` are left out, as JSON.stringify leaves them out.
 */
function toStruct(metadata: JsonObject | undefined): JsonObject | undefined {
  if (metadata === undefined) return undefined;
  return withoutUndefined(metadata) as JsonObject;
}

function withoutUndefined(value: unknown): unknown {
  if (Array.isArray(value)) return value.map((item) => (item === undefined ? null : withoutUndefined(item)));
  if (value !== null && typeof value === "object" && !(value instanceof Date)) {
    const result: Record<string, unknown> = {};
    for (const [key, item] of Object.entries(value)) {
      if (item !== undefined) result[key] = withoutUndefined(item);
    }
    return result;
  }
  return value;
}

function toMask(paths: readonly string[] | undefined): { paths: string[] } | undefined {
  return paths === undefined ? undefined : { paths: [...paths] };
}

export function createUserMessage(request: CreateUserRequest): MessageInitShape<typeof CreateUserRequestSchema> {
  return {
    userId: request.user_id,
    email: request.email ?? "",
    firstName: request.first_name ?? "",
    lastName: request.last_name ?? "",
    metadata: toStruct(request.metadata),
  };
}

export function updateUserMessage(request: UpdateUserRequest): MessageInitShape<typeof UpdateUserRequestSchema> {
  return {
    userId: request.user_id,
    // proto3 `optional`: undefined leaves the field absent (keep), a string is present (set).
    email: request.email,
    firstName: request.first_name,
    lastName: request.last_name,
    metadata: toStruct(request.metadata),
    updateMask: toMask(request.update_mask),
  };
}

export function createSessionMessage(
  request: CreateSessionRequest,
): MessageInitShape<typeof CreateSessionRequestSchema> {
  return {
    sessionId: request.session_id,
    userId: request.user_id ?? "",
    metadata: toStruct(request.metadata),
  };
}

export function updateSessionMessage(
  request: UpdateSessionRequest,
): MessageInitShape<typeof UpdateSessionRequestSchema> {
  return {
    sessionId: request.session_id,
    metadata: toStruct(request.metadata),
    updateMask: toMask(request.update_mask),
  };
}

const EVENT_TYPES: Record<number, UserEventType> = {
  [UserEvent_Type.EXISTING]: "EXISTING",
  [UserEvent_Type.CREATED]: "CREATED",
  [UserEvent_Type.UPDATED]: "UPDATED",
  [UserEvent_Type.DELETED]: "DELETED",
};

/** A response this client cannot read: an INTERNAL MemstoreError, as a missing field is elsewhere. */
function malformed(what: string): Error {
  return toMemstoreError(new ConnectError(`the server's response holds ${what}`, Code.Internal));
}

export function watchResponseFromMessage(
  message: WatchUsersResponseMessage,
  snapshotRestarted: boolean,
): WatchUsersResponse {
  return {
    events: message.events.map((event) => {
      const type = EVENT_TYPES[event.type];
      if (type === undefined) throw malformed(`a user event of unknown type ${event.type}`);
      if (event.user === undefined) throw malformed("a user event without its user");
      return {
        type,
        user: userFromMessage(event.user),
        sequence: toNumber(event.sequence),
        commit_time: toDate(event.commitTime),
      };
    }),
    resume_token: message.resumeToken,
    initial_complete: message.initialComplete,
    snapshot_restarted: snapshotRestarted,
  };
}
