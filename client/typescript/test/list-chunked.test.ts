/**
 * listChunked against a live server: a table with gaps in its ids (no user twice,
 * none skipped, unlike the reference SDK's offset arithmetic), starting from a
 * cursor, stopping early, and resuming a stream that a server restart broke.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { MemstoreClient, MemstoreError, type ResumeEvent, type User } from "../src/index.js";
import { TestServer, unique } from "./support/server.js";

let server: TestServer;

before(async () => {
  server = await TestServer.start();
});

after(async () => {
  await server?.stop();
});

/** Creates `count` users named `<prefix>-0000`...; concurrently, `batch` at a time. */
async function addUsers(client: MemstoreClient, prefix: string, count: number, metadata = {}, batch = 50): Promise<User[]> {
  const users: User[] = [];
  for (let start = 0; start < count; start += batch) {
    const ids = Array.from({ length: Math.min(batch, count - start) }, (_, i) => `${prefix}-${String(start + i).padStart(4, "0")}`);
    users.push(...(await Promise.all(ids.map((user_id) => client.user.add({ user_id, metadata })))));
  }
  return users.sort((a, b) => a.id - b.id);
}

/** Checks a whole stream: chunk sizes, ids strictly increasing across chunks (so nothing twice). */
function assertWellFormed(chunks: User[][], chunkSize: number): User[] {
  const all = chunks.flat();
  for (const chunk of chunks) {
    assert.ok(Array.isArray(chunk));
    assert.ok(chunk.length >= 1 && chunk.length <= chunkSize, `chunk of ${chunk.length}`);
  }
  for (let i = 1; i < all.length; i++) {
    assert.ok((all[i]?.id ?? 0) > (all[i - 1]?.id ?? 0), `ids increase: ${all[i - 1]?.id} then ${all[i]?.id}`);
  }
  return all;
}

describe("listChunked", () => {
  test("over a table with gaps: every user once, in id order, full chunks", async () => {
    const client = new MemstoreClient({ address: server.address });
    const prefix = unique("gaps");
    const users = await addUsers(client, prefix, 20, {}, 1);
    // Gaps: single ids and a run of them, in the middle and at the end.
    const deleted = new Set([1, 2, 3, 7, 11, 12, 19].map((i) => users[i]?.user_id ?? ""));
    for (const user_id of deleted) await client.user.delete(user_id);
    const remaining = users.filter((u) => !deleted.has(u.user_id));

    const chunks: User[][] = [];
    for await (const chunk of client.user.listChunked(3)) chunks.push(chunk);
    const mine = assertWellFormed(chunks, 3).filter((u) => u.user_id.startsWith(prefix));
    assert.deepEqual(
      mine.map((u) => u.user_id),
      remaining.map((u) => u.user_id),
    );
    if (server.databaseUrl === undefined) {
      // Our own table: every chunk but the last is full.
      assert.ok(chunks.slice(0, -1).every((chunk) => chunk.length === 3));
    }

    // From a cursor: exactly the users after it.
    const from = remaining[4]?.id ?? 0;
    const after: User[] = [];
    for await (const chunk of client.user.listChunked(4, from)) after.push(...chunk);
    assert.ok(after.every((u) => u.id > from));
    assert.deepEqual(
      after.filter((u) => u.user_id.startsWith(prefix)).map((u) => u.user_id),
      remaining.slice(5).map((u) => u.user_id),
    );

    // Past the end: a stream with no chunk at all.
    const last = Math.max(...chunks.flat().map((u) => u.id));
    const none: User[][] = [];
    for await (const chunk of client.user.listChunked(10, last)) none.push(chunk);
    assert.deepEqual(none, []);
    client.close();
  });

  test("stopping early ends the stream and leaves the client usable", async () => {
    const client = new MemstoreClient({ address: server.address });
    await addUsers(client, unique("early"), 5);
    let seen = 0;
    for await (const chunk of client.user.listChunked(1)) {
      seen += chunk.length;
      if (seen === 2) break;
    }
    assert.equal(seen, 2);
    assert.ok((await client.user.list(1, 0)).length === 1);
    client.close();
  });

  test("a stream broken by a server restart resumes from its last cursor: none twice, none missing", async () => {
    const resumes: ResumeEvent[] = [];
    const client = new MemstoreClient({
      address: server.address,
      resume: { maxAttempts: 40, initialBackoffMs: 50, maxBackoffMs: 500, onResume: (event) => resumes.push(event) },
    });
    const prefix = unique("resume");
    // ~1.5 KB each, ~450 KB in all: far more than HTTP/2 flow control lets the server
    // send ahead, so the stream is still open when the server goes down.
    const users = await addUsers(client, prefix, 300, { pad: "x".repeat(1500) });
    const startsBefore = server.starts;

    const chunks: User[][] = [];
    let lastIdBeforeRestart = 0;
    for await (const chunk of client.user.listChunked(10)) {
      chunks.push(chunk);
      if (chunks.length === 3) {
        lastIdBeforeRestart = chunk.at(-1)?.id ?? 0;
        // SIGTERM (in-flight calls get the 1 s grace period, then are cut), wait for
        // the exit, start again on the same port and data directory.
        await server.restart();
      }
    }

    assert.equal(server.starts, startsBefore + 1, "the server was restarted mid-stream");
    assert.ok(resumes.length >= 1, "the stream broke and was resumed");
    const first = resumes[0];
    assert.ok(first !== undefined);
    // How the break shows depends on timing: cut mid-message, reset, refused while down.
    assert.ok(["UNAVAILABLE", "ABORTED", "INTERNAL"].includes(first.error.codeName), first.error.message);
    assert.ok(resumes.every((event) => event.error instanceof MemstoreError));
    assert.ok(first.cursor >= lastIdBeforeRestart, "resumed after everything already received");
    assert.ok(first.cursor < (users.at(-1)?.id ?? 0), "resumed before the end");

    const all = assertWellFormed(chunks, 10);
    assert.equal(new Set(all.map((u) => u.id)).size, all.length, "no user twice");
    assert.deepEqual(
      all.filter((u) => u.user_id.startsWith(prefix)).map((u) => u.user_id),
      users.map((u) => u.user_id),
      "every user, in id order, none missing",
    );
    client.close();
  });
});
