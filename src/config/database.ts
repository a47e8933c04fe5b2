import { z } from "zod";
import { bool, type GroupValues, optionalText, positiveInt, setting } from "./settings.ts";

/** Where the data lives: PostgreSQL when DATABASE_URL is set, the embedded PGlite otherwise. */
export const databaseSettings = {
  databaseUrl: setting({
    env: "DATABASE_URL",
    flag: "database-url",
    help: "PostgreSQL URL (postgres://user:pass@host:port/db); unset means the embedded database",
    schema: optionalText,
    secret: true,
  }),
  dataDir: setting({
    env: "AGENTSTORE_DATA_DIR",
    flag: "data-dir",
    help: "directory of the embedded database (PGlite); 'memory://' keeps it in memory",
    schema: z.string().min(1),
    fallback: "./data/agentstore",
  }),
  poolMax: setting({
    env: "AGENTSTORE_DB_POOL_MAX",
    flag: "db-pool-max",
    help: "PostgreSQL connection pool size",
    schema: positiveInt,
    fallback: "10",
  }),
  writeGroups: setting({
    env: "AGENTSTORE_DB_WRITE_GROUPS",
    flag: "db-write-groups",
    help: "write transactions a replica runs at once on PostgreSQL; calls beyond them commit together in groups (the embedded database always uses 1)",
    schema: positiveInt,
    fallback: "2",
  }),
  migrate: setting({
    env: "AGENTSTORE_MIGRATE",
    flag: "migrate",
    help: "apply pending migrations at start (true/false)",
    schema: bool,
    fallback: "true",
  }),
};

export type DatabaseTarget =
  | { kind: "postgres"; url: string; poolMax: number }
  | { kind: "pglite"; dataDir: string | undefined };

export interface DatabaseConfig {
  target: DatabaseTarget;
  migrateAtStart: boolean;
  /** Concurrent write transactions (group-commit slots); 1 on the embedded database. */
  writeGroups: number;
}

export function databaseConfig(
  values: GroupValues<typeof databaseSettings>,
  problems: string[],
): DatabaseConfig {
  const { databaseUrl, dataDir } = values;
  if (databaseUrl !== undefined && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    problems.push("DATABASE_URL / --database-url: expected a postgres:// or postgresql:// URL");
  }
  return {
    target:
      databaseUrl !== undefined
        ? { kind: "postgres", url: databaseUrl, poolMax: values.poolMax }
        : { kind: "pglite", dataDir: dataDir === "memory://" ? undefined : dataDir },
    migrateAtStart: values.migrate,
    // PGlite has one connection: a second slot would only queue behind the first.
    writeGroups: databaseUrl !== undefined ? values.writeGroups : 1,
  };
}

/** The URL as it may be shown: without its password. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "***";
    return parsed.toString();
  } catch {
    return "(unparseable url)";
  }
}
