/**
 * `apiKey` and `tls` against a live server that requires both: memstore serving TLS
 * with a certificate made at test time (by the openssl command) and API keys on.
 * A call without the key, or with a wrong one, is an AuthError; with it, it works.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { AuthError, MemstoreClient, StatusCode, UnavailableError } from "../src/index.js";
import { TestServer, unique } from "./support/server.js";

const API_KEY = "the-right-key";
const hasOpenssl = spawnSync("openssl", ["version"]).status === 0;

describe("a server with TLS and API keys", { skip: hasOpenssl ? false : "no openssl command to make a certificate" }, () => {
  let server: TestServer;
  let certificates: string;
  let ca: string;

  before(async () => {
    certificates = mkdtempSync(join(tmpdir(), "memstore-ts-tls-"));
    const cert = join(certificates, "server.pem");
    const key = join(certificates, "server.key");
    // A self-signed certificate for the loopback address, trusted by the clients below as their CA.
    execFileSync("openssl", [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
      "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ], { stdio: "ignore" });
    ca = readFileSync(cert, "utf8");
    server = await TestServer.start({
      args: ["--api-keys", API_KEY, "--tls-cert", cert, "--tls-key", key],
      tlsCa: ca,
      apiKey: API_KEY,
    });
  });

  after(async () => {
    await server?.stop();
    if (certificates !== undefined) rmSync(certificates, { recursive: true, force: true });
  });

  test("with the API key over TLS, calls succeed", async () => {
    const client = new MemstoreClient({ address: server.address, apiKey: API_KEY, tls: { ca } });
    const user_id = unique("secure");
    const user = await client.user.add({ user_id, metadata: { over: "tls" } });
    assert.deepEqual((await client.user.get(user_id)).metadata, { over: "tls" });
    const streamed: string[] = [];
    for await (const chunk of client.user.listChunked(100)) streamed.push(...chunk.map((u) => u.user_id));
    assert.ok(streamed.includes(user.user_id));
    await client.user.delete(user_id);
    client.close();
  });

  test("without the key, or with a wrong one, every call is an AuthError", async () => {
    for (const apiKey of [undefined, "a-wrong-key"]) {
      const client = new MemstoreClient({ address: server.address, apiKey, tls: { ca } });
      await assert.rejects(client.user.get("user123"), (error: unknown) => {
        assert.ok(error instanceof AuthError, String(error));
        assert.equal(error.code, StatusCode.UNAUTHENTICATED);
        assert.equal(error.domain, "memstore");
        assert.ok(error.reason.length > 0, "an ErrorInfo reason");
        return true;
      });
      await assert.rejects(client.user.listChunked(10).next(), AuthError);
      client.close();
    }
  });

  test("plaintext to a TLS server fails, and so does a server certificate nobody vouches for", async () => {
    const plaintext = new MemstoreClient({ address: server.address, apiKey: API_KEY, retry: false, resume: { maxAttempts: 1 } });
    await assert.rejects(plaintext.user.get("user123"), UnavailableError);
    await assert.rejects(plaintext.user.listChunked(10).next(), UnavailableError);
    plaintext.close();
    // tls: true trusts only the system's roots, which do not include the test certificate.
    const untrusted = new MemstoreClient({ address: server.address, apiKey: API_KEY, tls: true, retry: false });
    await assert.rejects(untrusted.user.get("user123"), (error: unknown) => {
      assert.ok(error instanceof UnavailableError, String(error));
      assert.match(error.message, /TLS handshake failed \(self[- ]signed certificate/);
      return true;
    });
    untrusted.close();
  });
});
