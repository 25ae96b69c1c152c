/**
 * User and session operations against a live server: plain-object metadata, Date
 * timestamps, the update rules (absent keeps, "" clears, null removes a key, masks
 * replace), paging, and session CRUD.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  type CreateSessionRequest,
  type CreateUserRequest,
  type JsonObject,
  MemstoreClient,
  NotFoundError,
  type Session,
  type UpdateSessionRequest,
  type UpdateUserRequest,
} from "../src/index.js";
import { TestServer, unique } from "./support/server.js";

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

describe("users", () => {
  test("metadata is a plain JSON object both ways, timestamps are Dates", async () => {
    const metadata = {
      name: "Jane",
      n: 42.5,
      ok: true,
      none: null,
      list: [1, "two", { three: 3 }, null],
      nested: { deep: { deeper: "yes" } },
    };
    const request: CreateUserRequest = {
      user_id: unique("plain"),
      email: "jane@example.com",
      first_name: "Jane",
      last_name: "Smith",
      metadata,
    };
    const before = Date.now();
    const created = await client.user.add(request);
    assert.deepEqual(created.metadata, metadata);
    assert.equal(Object.getPrototypeOf(created.metadata), Object.prototype);
    assert.ok(created.created_at instanceof Date && created.updated_at instanceof Date);
    assert.ok(Math.abs(created.created_at.getTime() - before) < 60_000);
    assert.equal(created.email, "jane@example.com");
    assert.equal(created.first_name, "Jane");
    assert.equal(created.last_name, "Smith");
    assert.equal(created.session_count, 0);

    const fetched = await client.user.get(request.user_id);
    assert.deepEqual(fetched, created);
    // JSON-serialisable as it stands, field names as on the reference page.
    const json = JSON.parse(JSON.stringify(fetched)) as Record<string, unknown>;
    assert.deepEqual(Object.keys(json).sort(), [
      "created_at",
      "email",
      "first_name",
      "id",
      "last_name",
      "metadata",
      "session_count",
      "updated_at",
      "user_id",
      "uuid",
    ]);
  });

  test("a user without metadata has {}", async () => {
    const created = await client.user.add({ user_id: unique("bare") });
    assert.deepEqual(created.metadata, {});
    assert.equal(created.email, "");
  });

  test("update: absent keeps, empty string clears, metadata deep-merges and null removes a key", async () => {
    const user_id = unique("update");
    const created = await client.user.add({
      user_id,
      email: "a@example.com",
      first_name: "Ann",
      last_name: "Lee",
      metadata: { keep: 1, plan: { tier: "free", seats: 1 }, drop: "me" },
    });

    const renamed = await client.user.update({ user_id, first_name: "Anne" });
    assert.equal(renamed.first_name, "Anne");
    assert.equal(renamed.email, "a@example.com", "an absent field keeps its value");
    assert.equal(renamed.last_name, "Lee");
    assert.ok(renamed.updated_at.getTime() >= created.updated_at.getTime());

    const request: UpdateUserRequest = {
      user_id,
      email: "",
      metadata: { plan: { tier: "pro" }, drop: null, added: [true] },
    };
    const cleared = await client.user.update(request);
    assert.equal(cleared.email, "", "an empty string clears");
    assert.equal(cleared.first_name, "Anne");
    assert.deepEqual(cleared.metadata, { keep: 1, plan: { tier: "pro", seats: 1 }, added: [true] });

    const replaced = await client.user.update({
      user_id,
      last_name: "",
      metadata: { only: "this" },
      update_mask: ["metadata"],
    });
    assert.deepEqual(replaced.metadata, { only: "this" }, "a mask replaces metadata wholesale");
    assert.equal(replaced.last_name, "Lee", "a field not in the mask does not change");
  });

  test("metadata nested as deep as the server allows (20 levels) reads back from get, list and listChunked", async () => {
    let metadata: JsonObject = { leaf: "bottom" };
    for (let level = 1; level < 20; level++) metadata = { n: metadata };
    const user_id = unique("deep");
    await client.user.add({ user_id, metadata });
    assert.deepEqual((await client.user.get(user_id)).metadata, metadata);
    const listed = [];
    let cursor = 0;
    for (;;) {
      const page = await client.user.list(1000, cursor);
      listed.push(...page.filter((u) => u.user_id === user_id));
      if (page.length < 1000) break;
      cursor = page[page.length - 1]?.id ?? 0;
    }
    const streamed = [];
    for await (const chunk of client.user.listChunked(1000)) streamed.push(...chunk.filter((u) => u.user_id === user_id));
    assert.deepEqual(
      [...listed, ...streamed].map((u) => u.metadata),
      [metadata, metadata],
    );
    await assert.rejects(client.user.add({ user_id: unique("deeper"), metadata: { n: metadata } }), /at most 20 levels/);
  });

  test("list pages by id and getSessions gathers every session in id order", async () => {
    const user_id = unique("pager");
    await client.user.add({ user_id });
    const first = await client.user.list(1, 0);
    assert.equal(first.length, 1);
    const next = await client.user.list(1, first[0]?.id ?? 0);
    assert.ok(next.every((u) => u.id > (first[0]?.id ?? 0)));

    const session_ids = Array.from({ length: 1005 }, (_, i) => `${user_id}-s${String(i).padStart(4, "0")}`);
    for (let i = 0; i < session_ids.length; i += 100) {
      await Promise.all(session_ids.slice(i, i + 100).map((session_id) => client.session.add({ session_id, user_id })));
    }
    const sessions = await client.user.getSessions(user_id);
    assert.equal(sessions.length, 1005, "more than one page (1000) gathered");
    // Created 100 at a time concurrently, so in no particular order within a batch.
    assert.deepEqual(sessions.map((s) => s.session_id).sort(), session_ids);
    const ids = sessions.map((s) => s.id);
    assert.deepEqual(
      ids,
      [...ids].sort((a, b) => a - b),
    );
    assert.equal((await client.user.get(user_id)).session_count, 1005);
    await client.user.delete(user_id);
    await assert.rejects(client.session.get(session_ids[0] ?? ""), NotFoundError, "sessions go with their user");
  });
});

describe("sessions", () => {
  test("create, get, update, list, delete", async () => {
    const user_id = unique("owner");
    await client.user.add({ user_id });
    const request: CreateSessionRequest = { session_id: unique("session"), user_id, metadata: { topic: "billing" } };
    const created: Session = await client.session.add(request);
    assert.equal(created.session_id, request.session_id);
    assert.equal(created.user_id, user_id);
    assert.deepEqual(created.metadata, { topic: "billing" });
    assert.ok(created.created_at instanceof Date);
    assert.ok(created.id > 0);

    assert.deepEqual(await client.session.get(request.session_id), created);
    assert.deepEqual(await client.user.getSessions(user_id), [created]);
    assert.equal((await client.user.get(user_id)).session_count, 1);

    const merge: UpdateSessionRequest = {
      session_id: request.session_id,
      metadata: { topic: null, mood: "happy" },
    };
    const merged = await client.session.update(merge);
    assert.deepEqual(merged.metadata, { mood: "happy" });
    assert.ok(merged.updated_at.getTime() >= created.updated_at.getTime());
    const replaced = await client.session.update({
      session_id: request.session_id,
      metadata: { fresh: 1 },
      update_mask: ["metadata"],
    });
    assert.deepEqual(replaced.metadata, { fresh: 1 });

    const orphan = await client.session.add({ session_id: unique("orphan") });
    assert.equal(orphan.user_id, "", "a session of no user");
    assert.deepEqual(orphan.metadata, {});

    const mine = await client.session.list(10, 0, { user_id });
    assert.deepEqual(
      mine.map((s) => s.session_id),
      [request.session_id],
    );
    const all = await client.session.list(1000, created.id - 1);
    assert.ok(all.some((s) => s.session_id === orphan.session_id));
    assert.ok(all.every((s) => s.id >= created.id));

    await client.session.delete(request.session_id);
    await assert.rejects(client.session.get(request.session_id), NotFoundError);
    assert.deepEqual(await client.user.getSessions(user_id), []);
    await assert.rejects(client.session.delete(request.session_id), NotFoundError);
    await client.session.delete(orphan.session_id);
  });
});
