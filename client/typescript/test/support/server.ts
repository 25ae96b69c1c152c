/**
 * A real memstore server for the tests: the repository's Python server
 * (`.venv/bin/memstore-server serve`) as a child process on a free loopback port,
 * with its own embedded PostgreSQL in a fresh temporary data directory (or, when
 * MEMSTORE_TEST_DATABASE_URL is set, that database, shared with other tests: use
 * unique ids). It is ready when the gRPC health check answers SERVING.
 *
 * Every server is stopped by the test file's after-all hook (`stop()`): SIGTERM to
 * the process this helper started, then a wait for it to exit; should it linger, a
 * SIGKILL to that same process and a fast shutdown of the embedded PostgreSQL it
 * left behind, found through the pid in the data directory's postmaster.pid.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { type Client, createClient } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

import { MemstoreClient, NotFoundError } from "../../src/index.js";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/grpc/health/v1/health_pb.js";

/** Seconds a fresh server may take to answer SERVING (an embedded PostgreSQL runs initdb first). */
const START_TIMEOUT_MS = 90_000;
/** Seconds a stopped server may take to exit: its grace period, the pool, the embedded PostgreSQL. */
const STOP_TIMEOUT_MS = 30_000;
/** In-flight calls get this long after SIGTERM (the server's own default is 10 s). */
const GRACE_PERIOD_S = "1";

/** The directory of package.json: build/test/support/ is three levels down, test/support/ two. */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error("package.json not found above the test helper");
    dir = parent;
  }
  return dir;
}

export const PACKAGE_ROOT = packageRoot();
export const REPO_ROOT = resolve(PACKAGE_ROOT, "..", "..");

function serverCommand(): string {
  const command = process.env["MEMSTORE_SERVER"] ?? join(REPO_ROOT, ".venv", "bin", "memstore-server");
  if (!existsSync(command)) {
    throw new Error(`${command} does not exist: run \`make .venv/.installed\` at the repository root first`);
  }
  return command;
}

/** A loopback port that was free a moment ago (the kernel picks it; we release it). */
export async function freePort(): Promise<number> {
  const probe = createServer();
  probe.listen(0, "127.0.0.1");
  await once(probe, "listening");
  const address = probe.address();
  probe.close();
  await once(probe, "close");
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}

/** The environment without MEMSTORE_* settings, so only the flags configure the server. */
function serverEnvironment(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith("MEMSTORE_")));
}

/** How to start a test server beyond the defaults. */
export interface TestServerOptions {
  /** More `serve` flags, e.g. `["--api-keys", "k"]`. */
  args?: readonly string[];
  /** The server serves TLS (pass its --tls-cert / --tls-key in `args`): the CA to trust for the health check. */
  tlsCa?: string;
  /** The API key the cleanup of a shared database uses, when the server requires one. */
  apiKey?: string;
}

export class TestServer {
  readonly port: number;
  /** Holds the embedded PostgreSQL's data and the server logs; removed by `stop()`. */
  readonly root: string;
  readonly databaseUrl: string | undefined;
  #process: ChildProcess | undefined;
  #exited: Promise<number | null> | undefined;
  #starts = 0;

  readonly #options: TestServerOptions;

  private constructor(port: number, root: string, options: TestServerOptions) {
    this.port = port;
    this.root = root;
    this.databaseUrl = process.env["MEMSTORE_TEST_DATABASE_URL"] || undefined;
    this.#options = options;
  }

  /** Starts a server on a free port with a fresh data directory, and waits until it is SERVING. */
  static async start(options: TestServerOptions = {}): Promise<TestServer> {
    const server = new TestServer(await freePort(), mkdtempSync(join(tmpdir(), "memstore-ts-test-")), options);
    try {
      await server.launch();
    } catch (error) {
      await server.stop();
      throw error;
    }
    return server;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  get dataDir(): string {
    return join(this.root, "data");
  }

  get running(): boolean {
    return this.#process !== undefined && this.#process.exitCode === null && this.#process.signalCode === null;
  }

  /** The server's log (stderr) of its latest start. */
  log(): string {
    const path = join(this.root, `server-${this.#starts}.log`);
    return existsSync(path) ? readFileSync(path, "utf8") : "";
  }

  /** Stops the server (SIGTERM, wait) and starts it again on the same port and data directory. */
  async restart(): Promise<void> {
    await this.terminate();
    await this.launch();
  }

  /**
   * Stops the server if it runs, and removes its data directory. For after-all hooks.
   * On a shared database, the users this test process created are deleted first.
   */
  async stop(): Promise<void> {
    try {
      if (this.databaseUrl !== undefined && this.running) await deleteOurUsers(this.address, this.#options);
    } finally {
      await this.stopProcess();
    }
  }

  private async stopProcess(): Promise<void> {
    try {
      await this.terminate();
    } finally {
      rmSync(this.root, { recursive: true, force: true });
    }
  }

  /** How many times the server process has been started. */
  get starts(): number {
    return this.#starts;
  }

  /** Starts the process and waits for SERVING. */
  private async launch(): Promise<void> {
    this.#starts += 1;
    const logPath = join(this.root, `server-${this.#starts}.log`);
    const log = openSync(logPath, "w");
    const args = ["serve", "--listen", this.address, "--grace-period", GRACE_PERIOD_S, ...(this.#options.args ?? [])];
    if (this.databaseUrl !== undefined) args.push("--database-url", this.databaseUrl);
    else args.push("--data-dir", this.dataDir);
    const child = spawn(serverCommand(), args, {
      stdio: ["ignore", log, log],
      env: serverEnvironment(),
    });
    closeSync(log);
    this.#process = child;
    this.#exited = new Promise((resolveExit) => {
      child.once("exit", (code) => resolveExit(code));
      child.once("error", () => resolveExit(null));
    });
    await this.waitUntilServing();
  }

  /**
   * SIGTERM to our process, then wait for it to exit 0 (SIGKILL, and the embedded
   * PostgreSQL stopped, if it lingers). The data directory stays for `restart()`.
   */
  async terminate(): Promise<void> {
    const child = this.#process;
    const exited = this.#exited;
    if (child === undefined || exited === undefined) return;
    this.#process = undefined;
    this.#exited = undefined;
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<"timeout">((resolveTimeout) => {
      timer = setTimeout(() => resolveTimeout("timeout"), STOP_TIMEOUT_MS);
    });
    const code = await Promise.race([exited, timeout]).finally(() => clearTimeout(timer));
    if (code === "timeout") {
      child.kill("SIGKILL");
      await exited;
      stopEmbeddedPostgres(this.dataDir);
      throw new Error(`memstore-server did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM; log:\n${this.log()}`);
    }
    if (code !== 0) throw new Error(`memstore-server exited with ${String(code)} after SIGTERM; log:\n${this.log()}`);
  }

  private async waitUntilServing(): Promise<void> {
    const tlsCa = this.#options.tlsCa;
    const url = `${tlsCa === undefined ? "http" : "https"}://${this.address}`;
    const connection = new Http2SessionManager(url, undefined, tlsCa === undefined ? {} : { ca: tlsCa });
    const health = createClient(Health, createGrpcTransport({ baseUrl: url, sessionManager: connection }));
    try {
      await this.pollHealth(health);
    } finally {
      connection.abort();
    }
  }

  private async pollHealth(health: Client<typeof Health>): Promise<void> {
    const deadline = Date.now() + START_TIMEOUT_MS;
    let last = "no answer yet";
    while (Date.now() < deadline) {
      if (!this.running) throw new Error(`memstore-server exited before SERVING; log:\n${this.log()}`);
      try {
        const response = await health.check({}, { timeoutMs: 1_000 });
        if (response.status === HealthCheckResponse_ServingStatus.SERVING) return;
        last = HealthCheckResponse_ServingStatus[response.status] ?? String(response.status);
      } catch (error) {
        last = String(error);
      }
      await delay(100);
    }
    throw new Error(`memstore-server not SERVING after ${START_TIMEOUT_MS} ms (${last}); log:\n${this.log()}`);
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolveDelay) => setTimeout(resolveDelay, ms));
}

/** Fast-shutdown an embedded PostgreSQL left running under `dataDir` (its pid is in postmaster.pid). */
function stopEmbeddedPostgres(dataDir: string): void {
  const pidFile = join(dataDir, "postgres", "postmaster.pid");
  if (!existsSync(pidFile)) return;
  const pid = Number.parseInt(readFileSync(pidFile, "utf8").split("\n")[0] ?? "", 10);
  if (!Number.isInteger(pid) || pid <= 0) return;
  try {
    process.kill(pid, "SIGINT");
  } catch {
    // already gone
  }
}

/** Marks every id this test process creates, so a shared database can be cleaned of them. */
const RUN_TAG = `ts${process.pid.toString(36)}${Date.now().toString(36)}`;

/** An id no other test (nor another run sharing the database) uses. */
export function unique(prefix: string): string {
  return `${prefix}-${RUN_TAG}-${Math.random().toString(36).slice(2, 8)}`;
}

/** Deletes the users (and with them their sessions) this test process created. */
async function deleteOurUsers(address: string, options: TestServerOptions): Promise<void> {
  const client = new MemstoreClient({
    address,
    apiKey: options.apiKey,
    tls: options.tlsCa === undefined ? false : { ca: options.tlsCa },
  });
  try {
    const ours: string[] = [];
    for await (const chunk of client.user.listChunked(1000)) {
      ours.push(...chunk.filter((user) => user.user_id.includes(RUN_TAG)).map((user) => user.user_id));
    }
    for (const user_id of ours) {
      await client.user.delete(user_id).catch((error: unknown) => {
        if (!(error instanceof NotFoundError)) throw error;
      });
    }
  } finally {
    client.close();
  }
}
