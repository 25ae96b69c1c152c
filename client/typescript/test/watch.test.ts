/**
 * client.user.watch against a live server: the snapshot then changes, a bad token, and a
 * watch that resumes by itself from its last token after a server restart (changes made
 * while the server was down still come).
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { InvalidArgumentError, MemstoreClient, type WatchUsersResponse } from "../src/index.js";
import { TestServer, unique } from "./support/server.js";

let server: TestServer;

before(async () => {
  server = await TestServer.start({ args: ["--watch-heartbeat", "0.5"] });
});

after(async () => {
  await server?.stop();
});

/** Reads `stream` until `done` holds for the messages so far (without closing it, as a
 * `break` out of `for await` would); returns them. */
async function readUntil(
  stream: AsyncGenerator<WatchUsersResponse, void, undefined>,
  done: (messages: WatchUsersResponse[]) => boolean,
  messages: WatchUsersResponse[] = [],
): Promise<WatchUsersResponse[]> {
  for (;;) {
    const next = await stream.next();
    if (next.done === true) throw new Error("the watch ended");
    messages.push(next.value);
    if (done(messages)) return messages;
  }
}

function eventsOf(messages: WatchUsersResponse[], userId: string): string[] {
  return messages.flatMap((m) => m.events.filter((e) => e.user.user_id === userId).map((e) => e.type));
}

describe("watch", () => {
  test("the snapshot, initial_complete, then each change with its user", async () => {
    const client = new MemstoreClient({ address: server.address });
    const before = await client.user.add({ user_id: unique("before") });
    const stream = client.user.watch({ sendInitial: true });
    const snapshot = await readUntil(stream, (ms) => ms.at(-1)?.initial_complete === true);
    assert.ok(snapshot[0]?.resume_token);
    const listed = snapshot.flatMap((m) => m.events);
    assert.ok(listed.every((e) => e.type === "EXISTING"));
    assert.deepEqual(listed.find((e) => e.user.user_id === before.user_id)?.user, before);
    const userId = unique("after");
    const created = await client.user.add({ user_id: userId });
    await client.user.update({ user_id: userId, first_name: "Ann" });
    await client.user.delete(userId);
    const changes = await readUntil(stream, (ms) => eventsOf(ms, userId).length >= 3);
    assert.deepEqual(eventsOf(changes, userId), ["CREATED", "UPDATED", "DELETED"]);
    const createdEvent = changes.flatMap((m) => m.events).find((e) => e.user.user_id === userId);
    assert.deepEqual(createdEvent?.user, created);
    assert.ok(createdEvent !== undefined && createdEvent.sequence > 0 && createdEvent.commit_time instanceof Date);
    await stream.return();
    client.close();
  });

  test("a malformed token is InvalidArgumentError (INVALID_RESUME_TOKEN)", async () => {
    const client = new MemstoreClient({ address: server.address });
    await assert.rejects(
      async () => {
        await client.user.watch({ resumeToken: "not-a-token" }).next();
      },
      (error: unknown) => error instanceof InvalidArgumentError && error.reason === "INVALID_RESUME_TOKEN",
    );
    client.close();
  });

  test("a watch resumes by itself after a server restart, from its last token", async () => {
    const client = new MemstoreClient({
      address: server.address,
      resume: { maxAttempts: 40, initialBackoffMs: 50, maxBackoffMs: 500 },
    });
    const stream = client.user.watch();
    const first = await readUntil(stream, (ms) => ms.length >= 1);
    assert.ok(first[0]?.resume_token);
    const restarted = server.restart();
    const messages = await readUntil(stream, () => true); // whatever comes first after the break
    await restarted;
    const userId = unique("after-restart");
    await client.user.add({ user_id: userId });
    await readUntil(stream, (ms) => eventsOf(ms, userId).length >= 1, messages);
    assert.deepEqual(eventsOf(messages, userId), ["CREATED"]);
    await stream.return();
    client.close();
  });
});
