/**
 * exportJsonLines against a live server: JSON lines built by the server, every user once
 * in id order, each line the user `get` returns, from a cursor, with a filter.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { MemstoreClient, type User } from "../src/index.js";
import { TestServer, unique } from "./support/server.js";

let server: TestServer;

before(async () => {
  server = await TestServer.start();
});

after(async () => {
  await server?.stop();
});

/** Every user of the blocks, checking each block is whole lines. */
function parse(blocks: string[]): Record<string, unknown>[] {
  return blocks.flatMap((block) => {
    assert.ok(block.endsWith("\n"), "a block ends with its last line's newline");
    return block
      .split("\n")
      .slice(0, -1)
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  });
}

describe("exportJsonLines", () => {
  test("every user once, in id order, as get returns it; from a cursor; with a filter", async () => {
    const client = new MemstoreClient({ address: server.address });
    const prefix = unique("export");
    const made: User[] = [];
    for (let n = 0; n < 12; n++) {
      made.push(
        await client.user.add({
          user_id: `${prefix}-${String(n).padStart(2, "0")}`,
          first_name: n % 2 ? 'Quote "me"' : "line\nbreak",
          metadata: { n, nested: { ok: n % 3 === 0 } },
        }),
      );
    }

    const blocks: string[] = [];
    for await (const block of client.user.exportJsonLines()) blocks.push(block);
    const all = parse(blocks);
    const ids = all.map((user) => user.id as number);
    assert.deepEqual(ids, [...new Set(ids)].sort((a, b) => a - b), "ids strictly increase");
    const mine = all.filter((user) => String(user.user_id).startsWith(prefix));
    assert.deepEqual(
      mine.map((user) => user.user_id),
      made.map((user) => user.user_id),
    );
    for (const [index, line] of mine.entries()) {
      const stored = made[index];
      assert.ok(stored !== undefined);
      assert.deepEqual(Object.keys(line), [
        "user_id", "email", "first_name", "last_name", "metadata", "uuid", "id", "created_at", "updated_at", "session_count",
      ]);
      assert.equal(line.first_name, stored.first_name);
      assert.deepEqual(line.metadata, stored.metadata);
      assert.equal(line.uuid, stored.uuid);
      assert.equal(line.id, stored.id);
      // The line has microseconds; a Date, milliseconds (parsing truncates, the client rounds).
      assert.ok(Math.abs(new Date(String(line.created_at)).getTime() - stored.created_at.getTime()) < 1.5);
    }

    const from = made[7]?.id ?? 0;
    const rest: string[] = [];
    for await (const block of client.user.exportJsonLines(from)) rest.push(block);
    assert.deepEqual(
      parse(rest)
        .filter((user) => String(user.user_id).startsWith(prefix))
        .map((user) => user.user_id),
      made.slice(8).map((user) => user.user_id),
    );

    const filtered: string[] = [];
    for await (const block of client.user.exportJsonLines(0, { filter: `user_id = "${prefix}-0*" AND metadata.n >= 5` })) {
      filtered.push(block);
    }
    assert.deepEqual(
      parse(filtered).map((user) => user.user_id),
      made.filter((user) => Number(user.metadata.n) >= 5 && user.user_id < `${prefix}-1`).map((user) => user.user_id),
    );
    client.close();
  });
});
