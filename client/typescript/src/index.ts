/**
 * @memstore/client: the TypeScript client of memstore.
 *
 *     import { MemstoreClient } from "@memstore/client";
 *     const client = new MemstoreClient({ address: "localhost:50051" });
 *     const user = await client.user.add({ user_id: "user123", metadata: { foo: "bar" } });
 */
export { MemstoreClient, SessionClient, UserClient, type MemstoreClientOptions } from "./client.js";
export {
  AlreadyExistsError,
  AuthError,
  CancelledError,
  DeadlineExceededError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  MemstoreError,
  NotFoundError,
  OutOfRangeError,
  ResourceExhaustedError,
  StatusCode,
  UnavailableError,
  errorClassFor,
  statusName,
  toMemstoreError,
  type FieldViolation,
  type MemstoreErrorInit,
  type StatusName,
} from "./errors.js";
export type {
  BatchAddOptions,
  CallOptions,
  CreateSessionRequest,
  CreateUserRequest,
  ICreateSessionRequest,
  ICreateUserRequest,
  IUpdateSessionRequest,
  IUpdateUserRequest,
  JsonObject,
  FilterOptions,
  JsonValue,
  ListSessionsOptions,
  Session,
  SessionUpdateField,
  StreamOptions,
  UpdateSessionRequest,
  UpdateUserRequest,
  User,
  UserEvent,
  UserEventType,
  UserUpdateField,
  WatchOptions,
  WatchUsersResponse,
} from "./models.js";
export {
  DEFAULT_RESUME,
  DEFAULT_RETRY,
  DEFAULT_TIMEOUT_MS,
  type BackoffPolicy,
  type ResumeEvent,
  type ResumePolicy,
} from "./transport.js";
