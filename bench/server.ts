/** What the benchmarks share: the server as its own process on a throwaway database, percentiles. */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";

export const ROOT = fileURLToPath(new URL("..", import.meta.url));
export const DEFAULT_ADMIN_URL =
  process.env.TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

export type BenchBackend = "pglite" | "postgres";

export interface BenchServer {
  url: string;
  child: ChildProcess;
  /** Stops the server (and, from startBenchServer, removes its database). */
  stop(): Promise<void>;
}

/** `node src/main.ts` as in production, on a fresh database of the backend. */
export async function startBenchServer(
  backend: BenchBackend,
  name: string,
  adminUrl = DEFAULT_ADMIN_URL,
): Promise<BenchServer> {
  const database = await benchDatabase(backend, name, adminUrl);
  const server = await spawnBenchServer(database.env);
  return {
    ...server,
    async stop() {
      await server.stop();
      await database.drop();
    },
  };
}

/** A fresh database of the backend for a benchmark: the server's environment, and its removal. */
export async function benchDatabase(
  backend: BenchBackend,
  name: string,
  adminUrl = DEFAULT_ADMIN_URL,
): Promise<{ env: Record<string, string>; drop(): Promise<void> }> {
  if (backend === "pglite") {
    const dir = mkdtempSync(join(tmpdir(), "agentstore-bench-"));
    return {
      env: { AGENTSTORE_DATA_DIR: join(dir, "data") },
      drop: async () => rmSync(dir, { recursive: true, force: true }),
    };
  }
  const database = `agentstore_bench_${name}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`drop database if exists ${database} with (force)`);
  await admin.query(`create database ${database}`);
  await admin.end();
  const url = new URL(adminUrl);
  url.pathname = `/${database}`;
  return { env: { DATABASE_URL: url.toString() }, drop: async () => {} };
}

/** The server as its own process with this environment, once it serves. */
export async function spawnBenchServer(env: Record<string, string>): Promise<BenchServer> {
  const child = spawn(process.execPath, ["src/main.ts"], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? "",
      AGENTSTORE_LISTEN: "127.0.0.1:0",
      AGENTSTORE_LOG_LEVEL: "info",
      ...env,
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout?.on("data", (chunk) => {
      out += chunk;
      const m = /"port":(\d+).*"msg":"agentstore serving"/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once("exit", (code) => reject(new Error(`server exited ${code}: ${out}`)));
  });
  return {
    url: `http://127.0.0.1:${port}`,
    child,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}

/** Whether the PostgreSQL of the benchmarks answers. */
export async function postgresReachable(adminUrl = DEFAULT_ADMIN_URL): Promise<boolean> {
  const probe = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 3000 });
  const reachable = await probe.connect().then(
    () => true,
    () => false,
  );
  await probe.end().catch(() => {});
  return reachable;
}

/** The p-th percentile of ascending values. */
export const percentile = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;

/** "p50 x ms, p99 y ms" of unsorted samples. */
export function latency(samples: number[]): string {
  const sorted = [...samples].sort((a, b) => a - b);
  return `p50 ${percentile(sorted, 50).toFixed(2)} ms, p99 ${percentile(sorted, 99).toFixed(2)} ms`;
}
