/**
 * user.watch against a live server: the initial snapshot then changes, resuming from a
 * token, heartbeats, a malformed token, and a stream broken by a server restart that
 * resumes by itself from its last token with nothing missed.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  InvalidArgumentError,
  MemstoreClient,
  type ResumeEvent,
  type UserEvent,
  type WatchUsersResponse,
} from "../src/index.js";
import { TestServer, unique } from "./support/server.js";

let server: TestServer;

before(async () => {
  server = await TestServer.start({ args: ["--watch-heartbeat", "0.5"] });
});

after(async () => {
  await server?.stop();
});

/**
 * Reads `stream` until `done` says so over everything read (or 30 s pass). The stream stays
 * open for the next read: `next()` by hand, since leaving a `for await` would end it.
 */
async function readUntil(
  stream: AsyncGenerator<WatchUsersResponse>,
  done: (messages: WatchUsersResponse[]) => boolean,
): Promise<WatchUsersResponse[]> {
  const messages: WatchUsersResponse[] = [];
  const deadline = Date.now() + 30_000;
  for (;;) {
    const next = await stream.next();
    assert.ok(next.done !== true, "the watch ended");
    messages.push(next.value);
    if (done(messages)) return messages;
    assert.ok(Date.now() < deadline, `still waiting after ${messages.length} messages`);
  }
}

/** The events of the users whose `user_id` starts with `prefix`, in arrival order. */
function eventsOf(messages: WatchUsersResponse[], prefix: string): UserEvent[] {
  return messages.flatMap((message) => message.events).filter((event) => event.user.user_id.startsWith(prefix));
}

describe("user.watch", () => {
  test("send_initial: existing users, then initial_complete, then each change of a user in order", async () => {
    const client = new MemstoreClient({ address: server.address });
    const prefix = unique("watch-initial");
    await client.user.add({ user_id: `${prefix}-old`, email: "old@example.com" });

    const stream = client.user.watch({ send_initial: true });
    const snapshot = await readUntil(stream, (messages) => messages.some((message) => message.initial_complete));
    const existing = eventsOf(snapshot, prefix);
    assert.deepEqual(
      existing.map((event) => [event.type, event.user.user_id, event.user.email]),
      [["EXISTING", `${prefix}-old`, "old@example.com"]],
    );
    assert.ok(snapshot.every((message) => message.resume_token !== ""), "every message carries a token");

    await client.user.add({ user_id: `${prefix}-new`, metadata: { plan: "free" } });
    await client.user.update({ user_id: `${prefix}-new`, metadata: { plan: "pro" } });
    await client.user.delete(`${prefix}-old`);
    const changes = await readUntil(stream, (messages) => eventsOf(messages, prefix).length >= 3);
    await stream.return(undefined);

    const events = eventsOf(changes, prefix);
    assert.deepEqual(
      events.map((event) => [event.type, event.user.user_id]),
      [
        ["CREATED", `${prefix}-new`],
        ["UPDATED", `${prefix}-new`],
        ["DELETED", `${prefix}-old`],
      ],
    );
    assert.deepEqual(events[1]?.user.metadata, { plan: "pro" });
    assert.ok((events[1]?.sequence ?? 0) > (events[0]?.sequence ?? 0), "one user's sequence increases");
    assert.ok(events.every((event) => event.commit_time instanceof Date && event.commit_time.getTime() > 0));
    assert.ok((events[2]?.user.id ?? 0) > 0 && events[2]?.user.uuid !== "", "a deleted user keeps id and uuid");
    client.close();
  });

  test("resume_token: the changes after it, none before; heartbeats while nothing changes", async () => {
    const client = new MemstoreClient({ address: server.address });
    const prefix = unique("watch-resume");
    await client.user.add({ user_id: `${prefix}-before` });

    // The first message comes at once, with no events of ours and the current token.
    const first = client.user.watch();
    const [opening] = await readUntil(first, () => true);
    await first.return(undefined);
    assert.ok(opening !== undefined && opening.resume_token !== "");
    assert.deepEqual(eventsOf([opening], prefix), []);

    await client.user.add({ user_id: `${prefix}-after` });
    const resumed = client.user.watch({ resume_token: opening.resume_token });
    const messages = await readUntil(resumed, (read) => eventsOf(read, prefix).length >= 1);
    assert.deepEqual(
      eventsOf(messages, prefix).map((event) => [event.type, event.user.user_id]),
      [["CREATED", `${prefix}-after`]],
    );

    // Nothing of ours changes now: heartbeats (no events of ours) keep coming, each with a token.
    const quiet = await readUntil(resumed, (read) => read.length >= 3);
    await resumed.return(undefined);
    assert.deepEqual(eventsOf(quiet, prefix), []);
    assert.ok(quiet.every((message) => message.resume_token !== ""));
    client.close();
  });

  test("a malformed token is InvalidArgumentError (INVALID_RESUME_TOKEN), not resumed", async () => {
    const client = new MemstoreClient({ address: server.address });
    const stream = client.user.watch({ resume_token: "not-a-token" });
    await assert.rejects(
      readUntil(stream, () => true),
      (error: unknown) => error instanceof InvalidArgumentError && error.reason === "INVALID_RESUME_TOKEN",
    );
    client.close();
  });

  test("a stream broken by a server restart resumes from its last token: every change arrives", async () => {
    const resumes: ResumeEvent[] = [];
    const client = new MemstoreClient({
      address: server.address,
      resume: { maxAttempts: 40, initialBackoffMs: 50, maxBackoffMs: 500, onResume: (event) => resumes.push(event) },
    });
    const prefix = unique("watch-restart");
    const stream = client.user.watch();
    const opening = await readUntil(stream, () => true);
    await client.user.add({ user_id: `${prefix}-1` });
    await readUntil(stream, (read) => eventsOf(read, prefix).length >= 1);

    await server.restart();
    // Made while the stream is reconnecting (or just after): the resumed stream must bring it.
    await client.user.add({ user_id: `${prefix}-2` });
    const after = await readUntil(stream, (read) => eventsOf(read, prefix).some((e) => e.user.user_id === `${prefix}-2`));
    await stream.return(undefined);

    assert.ok(opening.length === 1);
    assert.ok(resumes.length >= 1, "the stream broke and was resumed");
    assert.ok(resumes.every((event) => (event.resume_token ?? "") !== ""), "resumed from a token");
    // At least once: the first change may come again, the second comes exactly as made.
    const second = eventsOf(after, prefix).filter((event) => event.user.user_id === `${prefix}-2`);
    assert.deepEqual(
      second.map((event) => event.type),
      ["CREATED"],
    );
    client.close();
  });
});
