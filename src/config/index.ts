import { parseArgs } from "node:util";
import { type DatabaseConfig, databaseConfig, databaseSettings, redactUrl } from "./database.ts";
import { type QueueConfig, queueConfig, queueSettings } from "./queue.ts";
import { type RunsConfig, runsConfig, runsSettings } from "./runs.ts";
import { DEFAULT_TENANT, type ServerConfig, serverConfig, serverSettings } from "./server.ts";
import { readGroup, type Setting } from "./settings.ts";
import { type TasksConfig, tasksConfig, tasksSettings } from "./tasks.ts";

export type { DatabaseConfig, DatabaseTarget } from "./database.ts";
export type { QueueConfig } from "./queue.ts";
export type { RunLimits, RunsConfig } from "./runs.ts";
export { DEFAULT_TENANT, type ServerConfig } from "./server.ts";
export type { TasksConfig } from "./tasks.ts";

/**
 * Configuration comes from environment variables, each overridable by a command-line flag, grouped
 * by the module that reads them. Every value is validated before anything starts; a bad one stops
 * the process with a message that names the variable, the flag and what was expected.
 */
export interface Config {
  command: "serve" | "migrate" | "reencrypt-push-configs";
  server: ServerConfig;
  database: DatabaseConfig;
  runs: RunsConfig;
  queue: QueueConfig;
  tasks: TasksConfig;
}

/** Every group, in the order `--help` and the README list them. */
const GROUPS = {
  server: serverSettings,
  database: databaseSettings,
  runs: runsSettings,
  queue: queueSettings,
  tasks: tasksSettings,
};

const allSettings = (): Setting[] => Object.values(GROUPS).flatMap((group) => Object.values(group));

/** Every setting's variable, flag and default, for documentation and its test. */
export function settingsReference(): Array<{ env: string; flag: string; fallback: string | undefined }> {
  return allSettings().map(({ env, flag, fallback }) => ({ env, flag, fallback }));
}

export class ConfigError extends Error {
  override name = "ConfigError";
}

export function usage(): string {
  const lines = [
    "usage: agentstore [serve|migrate|reencrypt-push-configs] [flags]",
    "",
    "  serve                   run the gRPC service (default)",
    "  migrate                 apply pending database migrations and exit",
    "  reencrypt-push-configs  re-encrypt push-config secrets under the newest key and exit",
    "",
    "flags (each also read from the environment variable shown):",
  ];
  for (const s of allSettings()) {
    const fallback = s.fallback === undefined ? "" : ` (default ${s.fallback})`;
    lines.push(`  --${s.flag.padEnd(22)} ${s.env.padEnd(32)} ${s.help}${fallback}`);
  }
  lines.push(`  --${"help".padEnd(22)} ${"".padEnd(32)} print this text`);
  return lines.join("\n");
}

/** Parses argv (without node and script) and env into a Config, or throws ConfigError. */
export function loadConfig(argv: string[], env: NodeJS.ProcessEnv): Config | "help" {
  const options = Object.fromEntries(allSettings().map((s) => [s.flag, { type: "string" as const }]));
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({
      args: argv,
      options: { ...options, help: { type: "boolean", short: "h" } },
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    throw new ConfigError(`${(err as Error).message}\n\n${usage()}`);
  }
  if (parsed.values.help) return "help";
  const [command = "serve", ...extra] = parsed.positionals;
  if (
    (command !== "serve" && command !== "migrate" && command !== "reencrypt-push-configs") ||
    extra.length > 0
  ) {
    throw new ConfigError(`unknown command '${parsed.positionals.join(" ")}'\n\n${usage()}`);
  }

  const problems: string[] = [];
  const flags = parsed.values;
  const server = readGroup(serverSettings, flags, env, problems);
  const database = readGroup(databaseSettings, flags, env, problems);
  const runs = readGroup(runsSettings, flags, env, problems);
  const queue = readGroup(queueSettings, flags, env, problems);
  const tasks = readGroup(tasksSettings, flags, env, problems);
  const config: Config = {
    command,
    server: serverConfig(server, command, problems),
    database: databaseConfig(database, problems),
    runs: runsConfig(runs),
    queue: queueConfig(queue),
    tasks: tasksConfig(tasks, problems),
  };
  if (problems.length > 0) {
    throw new ConfigError(`invalid configuration:\n  - ${problems.join("\n  - ")}`);
  }
  return config;
}

/** The configuration as it may be logged: no keys, no database password. */
export function describeConfig(config: Config): Record<string, unknown> {
  const { server, database } = config;
  return {
    command: config.command,
    listen: `${server.listen.host}:${server.listen.port}`,
    database:
      database.target.kind === "postgres"
        ? { kind: "postgres", url: redactUrl(database.target.url), poolMax: database.target.poolMax }
        : { kind: "pglite", dataDir: database.target.dataDir ?? "memory://" },
    migrateAtStart: database.migrateAtStart,
    tenants: server.apiKeys.size === 0 ? [DEFAULT_TENANT] : [...new Set(server.apiKeys.values())],
    tls: server.tls !== undefined,
    maxMessageBytes: server.maxMessageBytes,
    runs: { limits: config.runs.limits, stream: config.runs.stream },
    queue: config.queue,
    // Key ids only: never the keys.
    tasks: { ...config.tasks, pushConfigKeys: config.tasks.pushConfigKeys.map((k) => k.id) },
  };
}
