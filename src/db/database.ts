import { readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { PGlite } from "@electric-sql/pglite";
import type { EntitySchema } from "@mikro-orm/core";
import { Migrator } from "@mikro-orm/migrations";
import { defineConfig, MikroORM, type Options } from "@mikro-orm/postgresql";
import pg from "pg";
import { redactUrl } from "../config/database.ts";
import type { DatabaseTarget } from "../config/index.ts";
import { StartupError } from "../core/errors.ts";
import { lockDataDir } from "./data-dir-lock.ts";
import { SavepointPGliteDialect } from "./pglite-dialect.ts";
import { PreparingClient } from "./prepared.ts";
import { col } from "./rows.ts";
import { type QueryExecutor, SqlRunner, statement } from "./sql.ts";

export const migrationsPath = fileURLToPath(new URL("./migrations", import.meta.url));

/** An open database: the ORM, a statement runner on its pool, and what the feed and health need. */
export interface Database {
  readonly kind: DatabaseTarget["kind"];
  readonly orm: MikroORM;
  /** Runs named statements outside any transaction (each is its own). */
  readonly sql: SqlRunner;
  /** The embedded engine, when kind is "pglite" (its LISTEN lives here, not on a pool). */
  readonly pglite: PGlite | undefined;
  /** The PostgreSQL URL, when kind is "postgres". */
  readonly url: string | undefined;
  close(): Promise<void>;
}

export interface OpenOptions {
  entities: readonly EntitySchema[];
  /** Create a missing PostgreSQL database (only when the server also manages the schema). */
  createMissingDatabase?: boolean;
}

function baseOptions(entities: readonly EntitySchema[]): Options {
  return {
    entities: [...entities],
    extensions: [Migrator],
    // Schema changes come from committed migrations only, never from entity discovery at run time.
    discovery: { warnWhenNoEntities: true },
    ensureDatabase: false,
    allowGlobalContext: false,
    debug: false,
    migrations: {
      path: migrationsPath,
      pathTs: migrationsPath,
      tableName: "agentstore_migrations",
      snapshotName: ".snapshot-agentstore",
      transactional: true,
      allOrNothing: true,
      silent: true,
    },
  };
}

export async function openDatabase(target: DatabaseTarget, options: OpenOptions): Promise<Database> {
  if (target.kind === "postgres") {
    await ensureReachable(target.url, options.createMissingDatabase ?? false);
    const orm = await MikroORM.init(
      defineConfig({
        ...baseOptions(options.entities),
        clientUrl: target.url,
        pool: { min: 0, max: target.poolMax },
        // A dead server must fail a query quickly instead of queueing it forever. PreparingClient
        // prepares the named hot statements once per connection.
        driverOptions: { connectionTimeoutMillis: 5_000, keepAlive: true, Client: PreparingClient },
      }),
    );
    return {
      kind: "postgres",
      orm,
      sql: runnerOf(orm),
      pglite: undefined,
      url: target.url,
      close: () => orm.close(true),
    };
  }
  const unlock = target.dataDir === undefined ? () => {} : lockDataDir(target.dataDir);
  try {
    const pglite = await PGlite.create({
      ...(target.dataDir ? { dataDir: target.dataDir } : {}),
      // PostgreSQL zeroes all of shared_buffers at start, so PGlite's 128 MB default is resident
      // from the first second: 16 MB saves ~120 MB of RSS and ~60 ms of start, with reads served
      // from the OS page cache as fast. startParams replaces PGlite's defaults, so they are kept.
      startParams: [...PGlite.defaultStartParams, "-c", "shared_buffers=16MB"],
    });
    const orm = await MikroORM.init(
      defineConfig({
        ...baseOptions(options.entities),
        dbName: "postgres",
        driverOptions: new SavepointPGliteDialect(pglite),
      }),
    );
    return {
      kind: "pglite",
      orm,
      sql: runnerOf(orm),
      pglite,
      url: undefined,
      close: async () => {
        try {
          // Closing the ORM destroys the Kysely driver, which closes PGlite (and flushes its files).
          await orm.close(true);
          if (!pglite.closed) await pglite.close();
        } finally {
          unlock();
        }
      },
    };
  } catch (err) {
    unlock();
    throw err;
  }
}

function runnerOf(orm: MikroORM): SqlRunner {
  const client = orm.em.getConnection().getClient() as unknown as QueryExecutor;
  const mapper = orm.em.fork();
  return new SqlRunner(
    () => client,
    (entity, raw) => mapper.map(entity, raw as never, { disableIdentityMap: true }),
  );
}

/**
 * Connects once before the ORM does, so that an operator gets one line saying what is wrong
 * (unreachable, login refused, no such database) instead of a stack trace or, later, a
 * misleading "schema is behind". A missing database is created when the server manages the
 * schema, so that `DATABASE_URL=... make run` works on a fresh PostgreSQL.
 */
async function ensureReachable(url: string, createMissing: boolean): Promise<void> {
  const shown = redactUrl(url);
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  try {
    await client.connect();
    return;
  } catch (err) {
    const code = (err as { code?: string }).code;
    const reason = (err as Error).message;
    if (code === "3D000") {
      if (createMissing) return await createDatabase(url);
      const name = new URL(url).pathname.slice(1);
      throw new StartupError(
        `the database "${name}" does not exist on ${shown} (DATABASE_URL); create it ` +
          `(createdb "${name}", or psql -c 'create database "${name}"') or start with AGENTSTORE_MIGRATE=true`,
      );
    }
    if (code === "28P01" || code === "28000") {
      throw new StartupError(`PostgreSQL at ${shown} (DATABASE_URL) refused the login: ${reason}`);
    }
    throw new StartupError(`cannot reach the database at ${shown} (DATABASE_URL): ${reason}`);
  } finally {
    await client.end().catch(() => {});
  }
}

async function createDatabase(url: string): Promise<void> {
  const target = new URL(url);
  const name = decodeURIComponent(target.pathname.slice(1));
  const maintenance = new URL(url);
  maintenance.pathname = "/postgres";
  const client = new pg.Client({ connectionString: maintenance.toString(), connectionTimeoutMillis: 5_000 });
  try {
    await client.connect();
    await client.query(`create database ${pg.escapeIdentifier(name)}`);
  } catch (err) {
    // Another replica may have created it in the meantime.
    if ((err as { code?: string }).code === "42P04") return;
    throw new StartupError(
      `the database "${name}" does not exist on ${redactUrl(url)} (DATABASE_URL) and could not be created: ` +
        `${(err as Error).message}; create it yourself (createdb "${name}")`,
    );
  } finally {
    await client.end().catch(() => {});
  }
}

/** Any constant works; it only has to be the same for every agentstore process. */
const MIGRATION_LOCK_KEY = 7_361_042_215;

/**
 * Applies every committed migration that has not run yet; returns the names applied. Replicas
 * starting together on one PostgreSQL take turns under an advisory lock: the first migrates, the
 * others then find nothing pending.
 */
export async function migrate(db: Database): Promise<string[]> {
  // The common case at start, nothing to apply, is one cheap query rather than the migrator's
  // information_schema round trips and its lock.
  if ((await pendingMigrations(db)).length === 0) return [];
  if (db.kind === "pglite" || db.url === undefined) return (await db.orm.migrator.up()).map((m) => m.name);
  const lock = new pg.Client({ connectionString: db.url, connectionTimeoutMillis: 10_000 });
  await lock.connect();
  try {
    await lock.query("select pg_advisory_lock($1)", [MIGRATION_LOCK_KEY]);
    return (await db.orm.migrator.up()).map((m) => m.name);
  } finally {
    await lock.end().catch(() => {});
  }
}

const appliedMigrations = statement<[]>()({
  name: "migrations.applied",
  text: "select name from agentstore_migrations",
  row: { name: col.text("name") },
});

/** Names of the committed migrations the database has not applied yet, oldest first. */
export async function pendingMigrations(db: Database): Promise<string[]> {
  const committed = readdirSync(migrationsPath)
    .filter((file) => /^Migration\d+\w*\.(ts|js)$/.test(file))
    .map((file) => file.replace(/\.(ts|js)$/, ""))
    .sort();
  let applied: Set<string>;
  try {
    applied = new Set((await db.sql.all(appliedMigrations)).map((row) => row.name));
  } catch (err) {
    // No migrations table yet (42P01): a new database, everything is pending.
    if ((err as { code?: string }).code === "42P01" || /agentstore_migrations/.test(String(err)))
      return committed;
    throw err;
  }
  return committed.filter((name) => !applied.has(name));
}
