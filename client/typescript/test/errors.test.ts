/**
 * Every error class where it should be raised: NotFoundError, AlreadyExistsError and
 * InvalidArgumentError (with its field violations) from the live server,
 * UnavailableError when nothing listens, and, from a stand-in gRPC server in this
 * process, what the real one cannot be made to do on demand: PERMISSION_DENIED, a
 * slow answer, a read that fails twice before it succeeds; also AuthError with its
 * ErrorInfo and the API key as a bearer token (live in auth-and-tls.test.ts too).
 */
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import { once } from "node:events";
import { after, before, describe, test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";

import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { UserSchema, UserService } from "../src/gen/memstore/v1/users_pb.js";
import {
  AlreadyExistsError,
  AuthError,
  CancelledError,
  DeadlineExceededError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  MemstoreError,
  MemstoreClient,
  NotFoundError,
  OutOfRangeError,
  ResourceExhaustedError,
  StatusCode,
  type StatusName,
  UnavailableError,
  errorClassFor,
  toMemstoreError,
} from "../src/index.js";
import { toCallError } from "../src/errors.js";
import { TestServer, freePort, unique } from "./support/server.js";

/** Runs `call`, which must fail, and returns its error after checking its class. */
async function failure<E extends MemstoreError>(call: Promise<unknown>, errorClass: abstract new (...args: never[]) => E): Promise<E> {
  try {
    await call;
  } catch (error) {
    assert.ok(error instanceof errorClass, `expected ${errorClass.name}, got ${String(error)}`);
    assert.ok(error instanceof MemstoreError && error instanceof Error);
    return error;
  }
  assert.fail(`expected ${errorClass.name}, but the call succeeded`);
}

describe("against the live server", () => {
  let server: TestServer;
  let client: MemstoreClient;

  before(async () => {
    server = await TestServer.start();
    client = new MemstoreClient({ address: server.address });
  });

  after(async () => {
    client?.close();
    await server?.stop();
  });

  test("NotFoundError for an unknown user or session, with the ErrorInfo", async () => {
    const missing = unique("nobody");
    const error = await failure(client.user.get(missing), NotFoundError);
    assert.equal(error.code, StatusCode.NOT_FOUND);
    assert.equal(error.codeName, "NOT_FOUND");
    assert.equal(error.reason, "USER_NOT_FOUND");
    assert.equal(error.domain, "memstore");
    assert.deepEqual(error.metadata, { user_id: missing });
    assert.match(error.rawMessage, /not found/);
    assert.equal(error.name, "NotFoundError");
    assert.match(error.message, /^\[NOT_FOUND\] .*\(USER_NOT_FOUND\)$/);

    await failure(client.user.update({ user_id: missing, first_name: "x" }), NotFoundError);
    await failure(client.user.delete(missing), NotFoundError);
    await failure(client.user.getSessions(missing), NotFoundError);
    const session = await failure(client.session.get(unique("no-session")), NotFoundError);
    assert.equal(session.reason, "SESSION_NOT_FOUND");
    const orphaned = await failure(client.session.add({ session_id: unique("s"), user_id: missing }), NotFoundError);
    assert.equal(orphaned.reason, "USER_NOT_FOUND");
  });

  test("AlreadyExistsError for a duplicate user or session", async () => {
    const user_id = unique("twice");
    await client.user.add({ user_id });
    const error = await failure(client.user.add({ user_id }), AlreadyExistsError);
    assert.equal(error.code, StatusCode.ALREADY_EXISTS);
    assert.equal(error.reason, "USER_ALREADY_EXISTS");
    const session_id = unique("twice-session");
    await client.session.add({ session_id, user_id });
    const duplicate = await failure(client.session.add({ session_id }), AlreadyExistsError);
    assert.equal(duplicate.reason, "SESSION_ALREADY_EXISTS");
  });

  test("InvalidArgumentError names every bad field", async () => {
    const bad = await failure(client.user.add({ user_id: unique("bad-email"), email: "not-an-email" }), InvalidArgumentError);
    assert.equal(bad.code, StatusCode.INVALID_ARGUMENT);
    assert.equal(bad.domain, "memstore");
    assert.deepEqual(
      bad.fieldViolations.map((v) => v.field),
      ["email"],
    );
    assert.ok((bad.fieldViolations[0]?.description ?? "").length > 0);

    const several = await failure(client.user.add({ user_id: "", email: "nope" }), InvalidArgumentError);
    assert.deepEqual(several.fieldViolations.map((v) => v.field).sort(), ["email", "user_id"]);

    const update = await failure(client.user.update({ user_id: unique("u"), email: "still@bad@" }), InvalidArgumentError);
    assert.ok(update.fieldViolations.some((v) => v.field === "email"));
    await failure(client.user.list(-1, 0), InvalidArgumentError);
    const mask = await failure(client.session.update({ session_id: unique("s"), update_mask: ["user_id" as "metadata"] }), InvalidArgumentError);
    assert.ok(mask.fieldViolations.length > 0);
  });

  test("CancelledError when the caller aborts", async () => {
    const controller = new AbortController();
    controller.abort();
    await failure(client.user.get("anyone", { signal: controller.signal }), CancelledError);
    const stream = client.user.listChunked(10, 0, { signal: controller.signal });
    await failure(stream.next(), CancelledError);
  });
});

describe("when no server listens", () => {
  test("UnavailableError from a unary call, after the read retries", async () => {
    const address = `127.0.0.1:${await freePort()}`;
    const client = new MemstoreClient({ address, retry: { maxAttempts: 3, initialBackoffMs: 10 } });
    const started = Date.now();
    const error = await failure(client.user.get("user123"), UnavailableError);
    assert.equal(error.code, StatusCode.UNAVAILABLE);
    assert.ok(Date.now() - started >= 30, "retried twice with backoff");
    await failure(client.user.add({ user_id: "user123" }), UnavailableError);
    client.close();
  });

  test("UnavailableError from listChunked once its resume attempts are spent", async () => {
    const address = `127.0.0.1:${await freePort()}`;
    const resumes: number[] = [];
    const client = new MemstoreClient({
      address,
      resume: { maxAttempts: 3, initialBackoffMs: 10, onResume: (event) => resumes.push(event.attempt) },
    });
    await failure(client.user.listChunked(10).next(), UnavailableError);
    assert.deepEqual(resumes, [1, 2]);
    client.close();
  });
});

describe("against a stand-in gRPC server in this process", () => {
  let server: http2.Http2Server;
  let address: string;
  const calls = new Map<string, number>();
  const seenAuthorization: (string | null)[] = [];

  function count(name: string): number {
    const n = (calls.get(name) ?? 0) + 1;
    calls.set(name, n);
    return n;
  }

  before(async () => {
    const handler = connectNodeAdapter({
      routes: (router) => {
        router.service(UserService, {
          async getUser(request, context) {
            seenAuthorization.push(context.requestHeader.get("authorization"));
            const n = count(request.userId);
            switch (request.userId) {
              case "needs-key":
                if (context.requestHeader.get("authorization") !== "Bearer right-key") {
                  throw new ConnectError("missing or unknown API key", Code.Unauthenticated, undefined, [
                    { desc: ErrorInfoSchema, value: { reason: "API_KEY_INVALID", domain: "memstore", metadata: { header: "authorization" } } },
                  ]);
                }
                break;
              case "forbidden":
                throw new ConnectError("not yours", Code.PermissionDenied, undefined, [
                  { desc: ErrorInfoSchema, value: { reason: "PERMISSION_DENIED", domain: "memstore" } },
                ]);
              case "slow":
                await new Promise((resolve) => setTimeout(resolve, 2_000));
                break;
              case "flaky":
                if (n <= 2) throw new ConnectError("database restarting", Code.Unavailable);
                break;
            }
            const now = timestampNow();
            return { user: create(UserSchema, { userId: request.userId, id: 7n, createdAt: now, updatedAt: now, metadata: { via: "stand-in" } }) };
          },
          createUser(request) {
            count(`create:${request.userId}`);
            throw new ConnectError("database restarting", Code.Unavailable);
          },
        });
      },
    });
    server = http2.createServer(handler);
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const bound = server.address();
    assert.ok(bound !== null && typeof bound === "object");
    address = `127.0.0.1:${bound.port}`;
  });

  after(async () => {
    server.close();
    await once(server, "close");
  });

  test("UNAUTHENTICATED is an AuthError with its ErrorInfo; the API key travels as a bearer token", async () => {
    const anonymous = new MemstoreClient({ address });
    const error = await failure(anonymous.user.get("needs-key"), AuthError);
    assert.equal(error.code, StatusCode.UNAUTHENTICATED);
    assert.equal(error.codeName, "UNAUTHENTICATED");
    assert.equal(error.reason, "API_KEY_INVALID");
    assert.equal(error.domain, "memstore");
    assert.deepEqual(error.metadata, { header: "authorization" });
    anonymous.close();

    const wrong = new MemstoreClient({ address, apiKey: "wrong-key" });
    await failure(wrong.user.get("needs-key"), AuthError);
    wrong.close();

    const keyed = new MemstoreClient({ address, apiKey: "right-key" });
    const user = await keyed.user.get("needs-key");
    assert.equal(user.user_id, "needs-key");
    assert.equal(user.id, 7);
    assert.deepEqual(user.metadata, { via: "stand-in" });
    assert.ok(user.created_at instanceof Date);
    assert.deepEqual(seenAuthorization.slice(-3), [null, "Bearer wrong-key", "Bearer right-key"]);
    keyed.close();
  });

  test("PERMISSION_DENIED is an AuthError too", async () => {
    const client = new MemstoreClient({ address, apiKey: "k" });
    const error = await failure(client.user.get("forbidden"), AuthError);
    assert.equal(error.code, StatusCode.PERMISSION_DENIED);
    assert.equal(error.reason, "PERMISSION_DENIED");
    client.close();
  });

  test("the client's timeoutMs is every call's deadline, and a call can override it", async () => {
    const client = new MemstoreClient({ address, timeoutMs: 100 });
    const error = await failure(client.user.get("slow"), DeadlineExceededError);
    assert.equal(error.code, StatusCode.DEADLINE_EXCEEDED);
    assert.equal((await client.user.get("slow", { timeoutMs: 5_000 })).user_id, "slow");
    client.close();
  });

  test("reads are retried on UNAVAILABLE, writes are not", async () => {
    const client = new MemstoreClient({ address, retry: { initialBackoffMs: 10 } });
    const user = await client.user.get("flaky");
    assert.equal(user.user_id, "flaky");
    assert.equal(calls.get("flaky"), 3, "two failures, then the answer");
    await failure(client.user.add({ user_id: "once" }), UnavailableError);
    assert.equal(calls.get("create:once"), 1, "a write is sent once");
    client.close();

    const noRetry = new MemstoreClient({ address, retry: false });
    calls.delete("flaky");
    await failure(noRetry.user.get("flaky"), UnavailableError);
    assert.equal(calls.get("flaky"), 1);
    noRetry.close();
  });
});

describe("the status-to-class mapping", () => {
  const expected: [StatusName, abstract new (...args: never[]) => MemstoreError][] = [
    ["INVALID_ARGUMENT", InvalidArgumentError],
    ["NOT_FOUND", NotFoundError],
    ["ALREADY_EXISTS", AlreadyExistsError],
    ["UNAUTHENTICATED", AuthError],
    ["PERMISSION_DENIED", AuthError],
    ["UNAVAILABLE", UnavailableError],
    ["DEADLINE_EXCEEDED", DeadlineExceededError],
    ["FAILED_PRECONDITION", FailedPreconditionError],
    ["OUT_OF_RANGE", OutOfRangeError],
    ["RESOURCE_EXHAUSTED", ResourceExhaustedError],
    ["CANCELLED", CancelledError],
    ["INTERNAL", InternalError],
  ];

  test("each status has its class; the rest are plain MemstoreErrors", () => {
    for (const [name, errorClass] of expected) {
      const error = toMemstoreError(new ConnectError("boom", StatusCode[name] as Code, { "grpc-status": String(StatusCode[name]) }));
      assert.ok(error instanceof errorClass, name);
      assert.equal(error.codeName, name);
      assert.equal(errorClassFor(StatusCode[name]), errorClass);
    }
    for (const name of ["UNKNOWN", "ABORTED", "UNIMPLEMENTED", "DATA_LOSS"] as const) {
      const error = toMemstoreError(new ConnectError("boom", StatusCode[name]));
      assert.equal(error.constructor, MemstoreError, name);
      assert.equal(error.codeName, name);
    }
  });

  test("the status numbers are gRPC's, as the transport reports them", () => {
    const connectName = (name: string): string =>
      name === "CANCELLED" ? "Canceled" : name.toLowerCase().replace(/(^|_)([a-z])/g, (_, __: string, c: string) => c.toUpperCase());
    for (const [name, code] of Object.entries(StatusCode)) {
      if (name === "OK") continue;
      assert.equal(Code[connectName(name) as keyof typeof Code], code, name);
    }
  });

  test("a stream reset the caller did not ask for is UNAVAILABLE; the caller's own abort stays CANCELLED", () => {
    const reset = new ConnectError("http/2 stream closed with error code CANCEL (0x8)", Code.Canceled);
    assert.ok(toCallError(reset, undefined) instanceof UnavailableError);
    assert.ok(toCallError(reset, new AbortController().signal) instanceof UnavailableError);
    assert.ok(toCallError(reset, AbortSignal.abort()) instanceof CancelledError);
    const sent = new ConnectError("cancelled", Code.Canceled, { "grpc-status": "1" });
    assert.ok(toCallError(sent, undefined) instanceof CancelledError);
  });

  test("a response cut short before its status is UNAVAILABLE, a status the server sent is kept", () => {
    const cut = toMemstoreError(new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument));
    assert.ok(cut instanceof UnavailableError);
    const missing = toMemstoreError(new ConnectError("protocol error: missing status", Code.Internal));
    assert.ok(missing instanceof UnavailableError);
    const sent = toMemstoreError(
      new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument, { "grpc-status": "3" }),
    );
    assert.ok(sent instanceof InvalidArgumentError);
  });
});
