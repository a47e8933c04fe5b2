import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { after, before } from "node:test";
import { fileURLToPath } from "node:url";
import { type App, startApp } from "../../src/app.ts";
import { type AgentStoreClient, createClient } from "../../src/client/index.ts";
import { loadConfig } from "../../src/config/index.ts";
import { createLogger } from "../../src/core/logger.ts";
import type { Backend, TestDatabase } from "./databases.ts";

export const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** Two tenants with keys, for the tests that need auth. */
export const KEYS = {
  alpha: "alpha-key-0123456789abcdef",
  beta: "beta-key-0123456789abcdef0",
};
export const API_KEYS_ENV = `alpha:${KEYS.alpha},beta:${KEYS.beta}`;

export interface TestServer {
  app: App;
  url: string;
  close(): Promise<void>;
}

/** The real server, in this process, on a free loopback port, with the given database. */
export async function startServer(db: TestDatabase, env: Record<string, string> = {}): Promise<TestServer> {
  const config = loadConfig([], {
    AGENTSTORE_LISTEN: "127.0.0.1:0",
    AGENTSTORE_HEALTH_INTERVAL_MS: "200",
    AGENTSTORE_SHUTDOWN_GRACE_MS: "2000",
    ...db.env,
    ...env,
  });
  if (config === "help") throw new Error("unexpected help");
  const app = await startApp(config, createLogger(process.env.AGENTSTORE_TEST_LOG ?? "silent"));
  // The background warm-up's writes would otherwise mingle with a test's counts (write groups, rows).
  await app.restWarmedUp;
  return { app, url: `http://127.0.0.1:${app.port}`, close: () => app.close() };
}

export interface ServerProcess {
  child: ChildProcess;
  port: number;
  url: string;
  /** Everything the process wrote, for assertions and for debugging a failure. */
  output(): string;
  /** Sends the signal and waits for the process to exit; returns its exit code or signal. */
  stop(signal?: NodeJS.Signals): Promise<number | string>;
}

const children = new Set<ChildProcess>();
// A test that fails half-way must not leave servers behind to keep the runner (and CI) waiting.
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

/** `node src/main.ts` as a separate process, the way the README runs it. */
export async function spawnServer(env: Record<string, string>, port = 0): Promise<ServerProcess> {
  const child = spawn(process.execPath, ["src/main.ts"], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? "",
      AGENTSTORE_LISTEN: `127.0.0.1:${port}`,
      AGENTSTORE_HEALTH_INTERVAL_MS: "200",
      AGENTSTORE_LOG_LEVEL: "info",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  child.once("exit", () => children.delete(child));
  let output = "";
  child.stdout?.on("data", (chunk) => {
    output += chunk;
  });
  child.stderr?.on("data", (chunk) => {
    output += chunk;
  });
  const exited = once(child, "exit");
  const listening = new Promise<number>((resolve, reject) => {
    // A first start creates and migrates the embedded database: seconds, and far more on a loaded machine.
    const timer = setTimeout(
      () => reject(new Error(`server did not start within 120 s:\n${output}`)),
      120_000,
    );
    const onData = () => {
      const match = /"port":(\d+).*"msg":"agentstore serving"/.exec(output);
      if (match) {
        clearTimeout(timer);
        child.stdout?.off("data", onData);
        resolve(Number(match[1]));
      }
    };
    child.stdout?.on("data", onData);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before serving:\n${output}`));
    });
  });
  const actualPort = await listening;
  return {
    child,
    port: actualPort,
    url: `http://127.0.0.1:${actualPort}`,
    output: () => output,
    async stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const [code, sig] = (await exited) as [number | null, NodeJS.Signals | null];
      return code ?? sig ?? "unknown";
    },
  };
}

export interface ServerFixture {
  readonly server: TestServer;
  /** A Connect client of the server, with no API key. */
  readonly client: AgentStoreClient;
}

/**
 * One server per describe block: registers before/after hooks that create a fresh database of the
 * backend, start the server on it with `env` and open a client, then close all three.
 */
export function useServer(backend: Backend, env: Record<string, string> = {}): ServerFixture {
  let db: TestDatabase | undefined;
  let server: TestServer | undefined;
  let client: AgentStoreClient | undefined;
  before(async () => {
    db = await backend.create();
    server = await startServer(db, env);
    client = createClient({ baseUrl: server.url });
  });
  after(async () => {
    client?.close();
    await server?.close();
    await db?.drop();
  });
  return {
    get server() {
      if (server === undefined) throw new Error("the server starts in before()");
      return server;
    },
    get client() {
      if (client === undefined) throw new Error("the client opens in before()");
      return client;
    },
  };
}
