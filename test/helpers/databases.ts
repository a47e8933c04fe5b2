import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";

/**
 * The two databases every integration test runs against: the embedded PGlite default and the
 * machine's PostgreSQL (TEST_POSTGRES_URL, default 127.0.0.1:5432 as postgres, trust auth). Each
 * test file gets a database of its own. When CI=true an unreachable PostgreSQL fails the run
 * instead of skipping its half.
 */
export interface Backend {
  name: "pglite" | "postgres";
  /** Why this backend is skipped, or undefined when it runs. */
  skip: string | undefined;
  /** A fresh, empty database: the environment that points a server at it, and how to remove it. */
  create(): Promise<TestDatabase>;
}

export interface TestDatabase {
  env: Record<string, string>;
  /** The PostgreSQL URL, when the backend is PostgreSQL. */
  url?: string;
  drop(): Promise<void>;
}

export const ADMIN_URL = process.env.TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
let counter = 0;

export function pglite(): Backend {
  return {
    name: "pglite",
    skip: undefined,
    async create() {
      const dir = mkdtempSync(join(tmpdir(), "agentstore-test-"));
      return {
        env: { AGENTSTORE_DATA_DIR: join(dir, "data") },
        drop: async () => rmSync(dir, { recursive: true, force: true }),
      };
    },
  };
}

async function postgresReachable(): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: ADMIN_URL, connectionTimeoutMillis: 3_000 });
  try {
    await client.connect();
    await client.query("select 1");
    return undefined;
  } catch (err) {
    return `PostgreSQL at ${ADMIN_URL} is unreachable (${(err as Error).message})`;
  } finally {
    await client.end().catch(() => {});
  }
}

export async function postgres(): Promise<Backend> {
  const unreachable = await postgresReachable();
  if (unreachable !== undefined && process.env.CI === "true") {
    throw new Error(`${unreachable}; CI requires it (start it or set TEST_POSTGRES_URL)`);
  }
  return {
    name: "postgres",
    skip: unreachable,
    async create() {
      const name = `agentstore_test_${process.pid}_${++counter}_${Date.now().toString(36)}`;
      await adminQuery(`create database ${name}`);
      const url = new URL(ADMIN_URL);
      url.pathname = `/${name}`;
      return {
        env: { DATABASE_URL: url.toString() },
        url: url.toString(),
        drop: () => adminQuery(`drop database if exists ${name} with (force)`),
      };
    },
  };
}

export async function backends(): Promise<Backend[]> {
  return [pglite(), await postgres()];
}

async function adminQuery(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: ADMIN_URL });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}
