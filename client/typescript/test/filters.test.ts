/**
 * Filters, counts and batch creation against a live server: `list` and `listChunked` with a
 * filter, `count({ filter })`, `batchAdd([...], { skip_existing })`, sessions alike, and a bad
 * filter as InvalidArgumentError naming its character.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { AlreadyExistsError, type CreateUserRequest, InvalidArgumentError, MemstoreClient } from "../src/index.js";
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

function people(tag: string, from = 0, to = 5): CreateUserRequest[] {
  const requests: CreateUserRequest[] = [];
  for (let n = from; n < to; n++) {
    requests.push({
      user_id: `${tag}-${n}`,
      email: `${tag}-${n}@Example.com`,
      metadata: { tag, plan: n % 2 === 0 ? "pro" : "free", n },
    });
  }
  return requests;
}

describe("filters, counts and batches", () => {
  test("batchAdd creates in order; list, listChunked and count apply the filter", async () => {
    const tag = unique("tsf");
    const created = await client.user.batchAdd(people(tag));
    assert.deepEqual(
      created.map((user) => user.user_id),
      [0, 1, 2, 3, 4].map((n) => `${tag}-${n}`),
    );
    assert.deepEqual(created[1]?.metadata, { tag, plan: "free", n: 1 });
    const pro = `metadata.tag = "${tag}" AND metadata.plan = "pro"`;
    assert.equal(await client.user.count({ filter: pro }), 3);
    const first = await client.user.list(2, 0, { filter: pro });
    assert.deepEqual(
      first.map((user) => user.user_id),
      [`${tag}-0`, `${tag}-2`],
    );
    const rest = await client.user.list(2, first[1]?.id ?? 0, { filter: pro });
    assert.deepEqual(
      rest.map((user) => user.user_id),
      [`${tag}-4`],
    );
    const chunks: string[][] = [];
    for await (const chunk of client.user.listChunked(2, 0, { filter: `email = "${tag.toUpperCase()}*" AND metadata.n > 1` })) {
      chunks.push(chunk.map((user) => user.user_id));
    }
    assert.deepEqual(chunks, [[`${tag}-2`, `${tag}-3`], [`${tag}-4`]]);
  });

  test("batchAdd is all or none, and skip_existing leaves existing users out", async () => {
    const tag = unique("tsb");
    await client.user.batchAdd(people(tag, 0, 3));
    const overlapping = people(tag, 2, 5);
    const refused = await client.user.batchAdd(overlapping).then(
      () => assert.fail("an existing user_id must refuse the batch"),
      (error: unknown) => error,
    );
    assert.ok(refused instanceof AlreadyExistsError);
    assert.equal(refused.reason, "USER_ALREADY_EXISTS");
    assert.equal(await client.user.count({ filter: `metadata.tag = "${tag}"` }), 3);
    const added = await client.user.batchAdd(overlapping, { skip_existing: true });
    assert.deepEqual(
      added.map((user) => user.user_id),
      [`${tag}-3`, `${tag}-4`],
    );
    assert.equal(await client.user.count({ filter: `metadata.tag = "${tag}"` }), 5);
  });

  test("sessions are filtered and counted", async () => {
    const tag = unique("tss");
    await client.user.add({ user_id: tag });
    for (let n = 0; n < 3; n++) await client.session.add({ session_id: `${tag}-${n}`, user_id: tag, metadata: { n } });
    assert.equal(await client.session.count({ filter: `user_id = "${tag}" AND metadata.n >= 1` }), 2);
    const page = await client.session.list(10, 0, { user_id: tag, filter: "NOT metadata.n = 1" });
    assert.deepEqual(
      page.map((session) => session.session_id),
      [`${tag}-0`, `${tag}-2`],
    );
  });

  test("a bad filter is InvalidArgumentError with reason INVALID_FILTER and its character", async () => {
    const refused = await client.user.count({ filter: 'session_count = "x"' }).then(
      () => assert.fail("the filter must be refused"),
      (error: unknown) => error,
    );
    assert.ok(refused instanceof InvalidArgumentError);
    assert.equal(refused.reason, "INVALID_FILTER");
    assert.equal(refused.fieldViolations[0]?.field, "filter");
    assert.match(refused.fieldViolations[0]?.description ?? "", /^at character 17: /);
    await assert.rejects(client.session.list(0, 0, { filter: "email = 1" }), InvalidArgumentError);
    await assert.rejects(client.user.listChunked(10, 0, { filter: "(" }).next(), InvalidArgumentError);
  });
});
