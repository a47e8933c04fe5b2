import { mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { PGlite } from "@electric-sql/pglite";
import { Migrator } from "@mikro-orm/migrations";
import { defineConfig, MikroORM, type Options } from "@mikro-orm/postgresql";
import pg from "pg";
import { entities } from "./entities.ts";
import { SavepointPGliteDialect } from "./pglite-dialect.ts";

export const migrationsPath = fileURLToPath(new URL("./migrations", import.meta.url));

export type DatabaseTarget =
  | { kind: "postgres"; url: string; poolMax: number }
  | { kind: "pglite"; dataDir: string | undefined };

/** An open database: the ORM plus what the feed and health need to know about it. */
export interface Database {
  readonly kind: DatabaseTarget["kind"];
  readonly orm: MikroORM;
  /** The embedded engine, when kind is "pglite" (its LISTEN lives here, not on a pool). */
  readonly pglite: PGlite | undefined;
  /** The PostgreSQL URL, when kind is "postgres". */
  readonly url: string | undefined;
  close(): Promise<void>;
}

function baseOptions(): Options {
  return {
    entities,
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

export async function openDatabase(target: DatabaseTarget): Promise<Database> {
  if (target.kind === "postgres") {
    const orm = await MikroORM.init(
      defineConfig({
        ...baseOptions(),
        clientUrl: target.url,
        pool: { min: 0, max: target.poolMax },
        // A dead server must fail a query quickly instead of queueing it forever.
        driverOptions: { connectionTimeoutMillis: 5_000, keepAlive: true },
      }),
    );
    return { kind: "postgres", orm, pglite: undefined, url: target.url, close: () => orm.close(true) };
  }
  if (target.dataDir) mkdirSync(target.dataDir, { recursive: true });
  const pglite = await PGlite.create(target.dataDir ? { dataDir: target.dataDir } : {});
  const orm = await MikroORM.init(
    defineConfig({
      ...baseOptions(),
      dbName: "postgres",
      driverOptions: new SavepointPGliteDialect(pglite),
    }),
  );
  return {
    kind: "pglite",
    orm,
    pglite,
    url: undefined,
    close: async () => {
      // Closing the ORM destroys the Kysely driver, which closes PGlite (and flushes its files).
      await orm.close(true);
      if (!pglite.closed) await pglite.close();
    },
  };
}

/** Any constant works; it only has to be the same for every agentstore process. */
const MIGRATION_LOCK_KEY = 7_361_042_215;

/**
 * Applies every committed migration that has not run yet; returns the names applied. Replicas
 * starting together on one PostgreSQL take turns under an advisory lock: the first migrates, the
 * others then find nothing pending.
 */
export async function migrate(db: Database): Promise<string[]> {
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

/** Names of the committed migrations the database has not applied yet. */
export async function pendingMigrations(db: Database): Promise<string[]> {
  return (await db.orm.migrator.getPending()).map((m) => m.name);
}
