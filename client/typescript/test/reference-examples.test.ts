/**
 * The reference page's TypeScript examples, and the issue's, verbatim apart from the
 * connection line, against a live memstore server. Even the import is the one a
 * consumer writes: the package imports itself by name, which resolves through
 * package.json "exports" to the built dist/ (so `npm test` builds first).
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  type ICreateUserRequest,
  type IUpdateUserRequest,
  MemstoreClient,
  NotFoundError,
  type Session,
  type User,
} from "@memstore/client";
import { TestServer } from "./support/server.js";

let server: TestServer;

before(async () => {
  server = await TestServer.start();
  // A shared database (MEMSTORE_TEST_DATABASE_URL) may hold a user123 from an aborted run.
  const janitor = new MemstoreClient({ address: server.address });
  await janitor.user.delete("user123").catch((error: unknown) => {
    if (!(error instanceof NotFoundError)) throw error;
  });
  janitor.close();
});

after(async () => {
  await server?.stop();
});

function assertUser(value: unknown): asserts value is User {
  assert.ok(typeof value === "object" && value !== null);
  const user = value as Record<string, unknown>;
  for (const field of ["user_id", "email", "first_name", "last_name", "uuid"]) {
    assert.equal(typeof user[field], "string", field);
  }
  assert.equal(typeof user["id"], "number");
  assert.equal(typeof user["session_count"], "number");
  assert.ok(user["created_at"] instanceof Date);
  assert.ok(user["updated_at"] instanceof Date);
  assert.equal(Object.getPrototypeOf(user["metadata"]), Object.prototype, "metadata is a plain object");
}

describe("the issue's examples", () => {
  test("run as written against a live server", async () => {
    const chunks: User[][] = [];
    // Stands for the caller's own function of the example.
    const process = (chunk: User[]): void => {
      chunks.push(chunk);
    };

    // ---- verbatim from the issue, apart from the import and the connection line ----
    const client = new MemstoreClient({ address: `localhost:${server.port}` });
    const user = await client.user.add({ user_id: "user123", metadata: { foo: "bar" } });
    await client.user.get("user123");
    await client.user.update({ user_id: "user123", metadata: { foo: "baz" } });
    const sessions = await client.user.getSessions("user123");
    const users = await client.user.list(10, 0);
    for await (const chunk of client.user.listChunked(100)) { process(chunk); }   // ListUsersChunked
    await client.user.delete("user123");
    // ---- end of the example ----

    assertUser(user);
    assert.equal(user.user_id, "user123");
    assert.deepEqual(user.metadata, { foo: "bar" });
    assert.ok(user.id > 0);
    assert.match(user.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.ok(Math.abs(user.created_at.getTime() - Date.now()) < 60_000, "created_at is now");

    assert.ok(Array.isArray(sessions));
    assert.deepEqual(sessions, []);

    assert.ok(Array.isArray(users));
    assert.ok(users.length >= 1 && users.length <= 10);
    users.forEach(assertUser);
    if (server.databaseUrl === undefined) {
      // Our own embedded database: user123 is its only user.
      assert.deepEqual(
        users.map((u) => u.user_id),
        ["user123"],
      );
      assert.deepEqual(users[0]?.metadata, { foo: "baz" });
    }

    assert.ok(chunks.length >= 1);
    for (const chunk of chunks) {
      assert.ok(Array.isArray(chunk) && chunk.length >= 1 && chunk.length <= 100);
      chunk.forEach(assertUser);
    }
    const streamed = chunks.flat().filter((u) => u.user_id === "user123");
    assert.equal(streamed.length, 1, "user123 came exactly once");
    assert.deepEqual(streamed[0]?.metadata, { foo: "baz" });

    await assert.rejects(client.user.get("user123"), NotFoundError);
    client.close();
  });
});

describe("the reference page's examples", () => {
  test("run as written against a live server, one block per section", async () => {
    const client = new MemstoreClient({ address: `localhost:${server.port}` });
    const processed: User[][] = [];
    const process = (users: User[]): void => {
      processed.push(users);
    };
    // What each section produced, for the assertions below.
    const seen: { newUser?: User; user?: User; updatedUser?: User; sessions?: Session[]; users?: User[] } = {};

    {
      // Adding a User
      const user: ICreateUserRequest = {
          user_id: "user123",
          metadata: { foo: "bar" },
      };
      const newUser = await client.user.add(user);
      seen.newUser = newUser;
    }
    {
      // Getting a User
      const user = await client.user.get("user123");
      seen.user = user;
    }
    {
      // Updating a User
      const user: IUpdateUserRequest = {
          user_id: "user123",
          metadata: { foo: "baz" },
      };
      const updatedUser = await client.user.update(user);
      seen.updatedUser = updatedUser;
    }
    {
      // Getting a User's Sessions
      // Get all sessions for user123
      const sessions = await client.user.getSessions("user123");
      seen.sessions = sessions;
    }
    {
      // Listing Users
      // List the first 10 users
      const users = await client.user.list(10, 0);
      seen.users = users;
    }
    {
      // Listing Users in Chunks
      for await (const users of client.user.listChunked(100)) {
          process(users);
      }
    }
    {
      // Deleting a User
      await client.user.delete("user123");
    }

    const { newUser, user, updatedUser, sessions, users } = seen;
    assert.ok(newUser && user && updatedUser && sessions && users);
    assert.deepEqual(newUser.metadata, { foo: "bar" });
    assert.equal(user.id, newUser.id);
    assert.deepEqual(user.metadata, { foo: "bar" });
    assert.deepEqual(updatedUser.metadata, { foo: "baz" });
    assert.equal(updatedUser.user_id, "user123");
    assert.ok(updatedUser.updated_at.getTime() >= newUser.updated_at.getTime());
    assert.deepEqual(sessions, []);
    assert.ok(users.length >= 1 && users.length <= 10);
    assert.equal(processed.flat().filter((u) => u.user_id === "user123").length, 1);
    await assert.rejects(client.user.get("user123"), NotFoundError);
    client.close();
  });
});
