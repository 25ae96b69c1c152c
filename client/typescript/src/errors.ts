/**
 * One error class per meaningful gRPC status, all under MemstoreError.
 *
 * A caller catches `NotFoundError` rather than comparing status codes, and still
 * has the code, the server's message and its machine-readable `reason` (from the
 * `google.rpc.ErrorInfo` the server attaches) when it needs them; an
 * INVALID_ARGUMENT also carries the `google.rpc.BadRequest` field violations.
 */
import { Code, ConnectError } from "@connectrpc/connect";

import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** The gRPC status codes by name; `MemstoreError.code` is one of these numbers. */
export const StatusCode = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

/** A gRPC status name, e.g. `"NOT_FOUND"`. */
export type StatusName = keyof typeof StatusCode;

const NAME_BY_CODE = new Map<number, StatusName>(
  (Object.entries(StatusCode) as [StatusName, number][]).map(([name, code]) => [code, name]),
);

/** The name of a gRPC status code (`5` -> `"NOT_FOUND"`); `"UNKNOWN"` for a number outside the list. */
export function statusName(code: number): StatusName {
  return NAME_BY_CODE.get(code) ?? "UNKNOWN";
}

/** One bad field of a request, as the server reported it in a `google.rpc.BadRequest`. */
export interface FieldViolation {
  /** The request field, e.g. `email`. */
  readonly field: string;
  /** What is wrong with it. */
  readonly description: string;
}

/** What a MemstoreError is made of. */
export interface MemstoreErrorInit {
  /** The gRPC status code (see StatusCode). */
  code: number;
  /** The server's message. */
  message: string;
  /** The ErrorInfo reason, e.g. `USER_NOT_FOUND`; "" when the status carried none. */
  reason?: string | undefined;
  /** The ErrorInfo domain, `memstore` for the server's own errors; "" when none. */
  domain?: string | undefined;
  /** The ErrorInfo metadata, e.g. `{ user_id: "user123" }`. */
  metadata?: Readonly<Record<string, string>> | undefined;
  /** For INVALID_ARGUMENT: every bad field. */
  fieldViolations?: readonly FieldViolation[] | undefined;
  /** The underlying error (the transport's). */
  cause?: unknown;
}

/**
 * A call to memstore failed. `code` is the gRPC status code, `codeName` its name,
 * `rawMessage` the server's message, `reason` / `domain` / `metadata` the
 * `google.rpc.ErrorInfo`, `fieldViolations` the `google.rpc.BadRequest`.
 */
export class MemstoreError extends Error {
  readonly code: number;
  readonly codeName: StatusName;
  readonly rawMessage: string;
  readonly reason: string;
  readonly domain: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly fieldViolations: readonly FieldViolation[];

  constructor(init: MemstoreErrorInit) {
    const codeName = statusName(init.code);
    const reason = init.reason ?? "";
    super(`[${codeName}] ${init.message}${reason ? ` (${reason})` : ""}`, { cause: init.cause });
    this.name = new.target.name;
    this.code = init.code;
    this.codeName = codeName;
    this.rawMessage = init.message;
    this.reason = reason;
    this.domain = init.domain ?? "";
    this.metadata = { ...init.metadata };
    this.fieldViolations = [...(init.fieldViolations ?? [])];
  }
}

/** INVALID_ARGUMENT: the request broke an input rule; `fieldViolations` names every bad field. */
export class InvalidArgumentError extends MemstoreError {}

/** NOT_FOUND: the user or session does not exist. */
export class NotFoundError extends MemstoreError {}

/** ALREADY_EXISTS: the user_id or session_id is taken. */
export class AlreadyExistsError extends MemstoreError {}

/** UNAUTHENTICATED (no or bad credentials) or PERMISSION_DENIED (not allowed). */
export class AuthError extends MemstoreError {}

/** UNAVAILABLE: the server or its database cannot be reached now; retrying later may succeed. */
export class UnavailableError extends MemstoreError {}

/** DEADLINE_EXCEEDED: the call did not finish within its timeout. */
export class DeadlineExceededError extends MemstoreError {}

/** FAILED_PRECONDITION: the server is not in a state to do this. */
export class FailedPreconditionError extends MemstoreError {}

/** OUT_OF_RANGE: a value is outside what the server accepts. */
export class OutOfRangeError extends MemstoreError {}

/** RESOURCE_EXHAUSTED: a limit was hit (message size, rate); the message says which. */
export class ResourceExhaustedError extends MemstoreError {}

/** CANCELLED: the call was cancelled (by the caller's AbortSignal, or by the server). */
export class CancelledError extends MemstoreError {}

/** INTERNAL: the server failed unexpectedly; its log has the details. */
export class InternalError extends MemstoreError {}

type ErrorClass = new (init: MemstoreErrorInit) => MemstoreError;

const CLASS_BY_CODE = new Map<number, ErrorClass>([
  [StatusCode.INVALID_ARGUMENT, InvalidArgumentError],
  [StatusCode.NOT_FOUND, NotFoundError],
  [StatusCode.ALREADY_EXISTS, AlreadyExistsError],
  [StatusCode.UNAUTHENTICATED, AuthError],
  [StatusCode.PERMISSION_DENIED, AuthError],
  [StatusCode.UNAVAILABLE, UnavailableError],
  [StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError],
  [StatusCode.FAILED_PRECONDITION, FailedPreconditionError],
  [StatusCode.OUT_OF_RANGE, OutOfRangeError],
  [StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError],
  [StatusCode.CANCELLED, CancelledError],
  [StatusCode.INTERNAL, InternalError],
]);

/** The MemstoreError subclass for a gRPC status code (MemstoreError itself for the others). */
export function errorClassFor(code: number): ErrorClass {
  return CLASS_BY_CODE.get(code) ?? MemstoreError;
}

/**
 * Any failure of a call as a MemstoreError. The transport has already decoded the
 * `grpc-status-details-bin` trailer (a serialized `google.rpc.Status`) into the
 * error's details; here its ErrorInfo and BadRequest are read out.
 */
export function toMemstoreError(reason: unknown): MemstoreError {
  if (reason instanceof MemstoreError) return reason;
  const error = ConnectError.from(reason);
  if (isBrokenResponse(error)) {
    return new UnavailableError({
      code: StatusCode.UNAVAILABLE,
      message: `the connection broke before the server sent a status (${error.rawMessage})`,
      cause: reason,
    });
  }
  if (isFailedHandshake(error)) {
    return new UnavailableError({
      code: StatusCode.UNAVAILABLE,
      message: `the TLS handshake failed (${error.rawMessage})`,
      cause: reason,
    });
  }
  const [info] = error.findDetails(ErrorInfoSchema);
  const fieldViolations = error
    .findDetails(BadRequestSchema)
    .flatMap((badRequest) => badRequest.fieldViolations)
    .map(({ field, description }) => ({ field, description }));
  const ErrorClass = errorClassFor(error.code);
  return new ErrorClass({
    code: error.code,
    message: error.rawMessage,
    reason: info?.reason,
    domain: info?.domain,
    metadata: info?.metadata,
    fieldViolations,
    cause: reason,
  });
}


/**
 * As toMemstoreError, for a call made with `signal`: a CANCELLED that neither the
 * server sent (it has no `grpc-status`) nor the caller asked for (its signal is not
 * aborted) is the connection being closed under the call (an HTTP/2 stream reset,
 * e.g. plaintext spoken to a TLS port, or a server shutting down), which gRPC
 * reports as UNAVAILABLE, and so does this client.
 */
export function toCallError(reason: unknown, signal: AbortSignal | undefined): MemstoreError {
  const error = toMemstoreError(reason);
  const cause = error.cause instanceof ConnectError ? error.cause : undefined;
  if (
    error.code === StatusCode.CANCELLED &&
    signal?.aborted !== true &&
    cause !== undefined &&
    !cause.metadata.has("grpc-status")
  ) {
    return new UnavailableError({
      code: StatusCode.UNAVAILABLE,
      message: `the connection was closed under the call (${cause.rawMessage})`,
      cause: reason,
    });
  }
  return error;
}

/**
 * True when the transport itself raised `error` because the response ended early:
 * the HTTP/2 stream closed in the middle of a message, or without the trailers that
 * carry the gRPC status (the server went away mid-call). Connect reports these as
 * INVALID_ARGUMENT or INTERNAL "protocol error"s; gRPC calls a connection lost
 * before the status UNAVAILABLE, and so does this client. A status the server did
 * send always comes with its `grpc-status` trailer, so it is never mistaken for one.
 */
function isBrokenResponse(error: ConnectError): boolean {
  return (
    !error.metadata.has("grpc-status") &&
    (error.code === Code.InvalidArgument || error.code === Code.Internal) &&
    /^protocol error: (incomplete envelope|promised \d+ bytes|missing status)/.test(error.rawMessage)
  );
}

/** Node's codes for a server certificate that does not verify, and for TLS protocol failures. */
const TLS_FAILURE = /^(ERR_TLS_|ERR_SSL_|DEPTH_ZERO_SELF_SIGNED_CERT$|SELF_SIGNED_CERT_IN_CHAIN$|UNABLE_TO_|CERT_)/;

/**
 * True when the connection could not be set up because its TLS handshake failed (a
 * certificate that does not verify, no common protocol). Connect reports these as
 * INTERNAL; gRPC reports a connection it could not establish as UNAVAILABLE, and so
 * does this client.
 */
function isFailedHandshake(error: ConnectError): boolean {
  if (error.code !== Code.Internal || error.metadata.has("grpc-status")) return false;
  for (let cause: unknown = error.cause, depth = 0; cause instanceof Error && depth < 8; depth++) {
    const code = (cause as { code?: unknown }).code;
    if (typeof code === "string" && TLS_FAILURE.test(code)) return true;
    cause = cause.cause;
  }
  return false;
}
