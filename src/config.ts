import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { parseArgs } from "node:util";
import { z } from "zod";

/**
 * Configuration comes from environment variables, each overridable by a command-line flag. Every
 * value is validated before anything starts; a bad one stops the process with a message that names
 * the variable, the flag and what was expected.
 */
export interface Config {
  command: "serve" | "migrate";
  listen: { host: string; port: number };
  database:
    | { kind: "postgres"; url: string; poolMax: number }
    | { kind: "pglite"; dataDir: string | undefined };
  migrateAtStart: boolean;
  /** API key -> tenant. Empty means one default tenant, loopback only. */
  apiKeys: Map<string, string>;
  tls: { certFile: string; keyFile: string } | undefined;
  limits: Limits;
  stream: { bufferEvents: number; pollIntervalMs: number };
  healthIntervalMs: number;
  shutdownGraceMs: number;
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  extraRedactKeys: string[];
}

export interface Limits {
  /** Largest request message the server reads (Connect readMaxBytes). */
  maxMessageBytes: number;
  /** Largest JSON payload of one event, after encoding. */
  maxEventBytes: number;
  /** Most events in one AppendRunEvents. */
  maxBatchEvents: number;
  /** Largest sum of event payloads in one AppendRunEvents. */
  maxBatchBytes: number;
  /** Largest metadata + input of a run, as JSON. */
  maxRunJsonBytes: number;
}

export const DEFAULT_TENANT = "default";

interface Setting {
  env: string;
  flag: string;
  help: string;
  schema: z.ZodType;
  fallback?: string;
}

const positiveInt = z.coerce.number().int().positive();
const bool = z
  .enum(["true", "false", "1", "0", "yes", "no", "on", "off"])
  .transform((v) => ["true", "1", "yes", "on"].includes(v));

const settings = {
  listen: {
    env: "AGENTSTORE_LISTEN",
    flag: "listen",
    help: "host:port to serve on (gRPC, gRPC-Web and Connect on one port)",
    schema: z.string(),
    fallback: "127.0.0.1:50051",
  },
  databaseUrl: {
    env: "DATABASE_URL",
    flag: "database-url",
    help: "PostgreSQL URL (postgres://user:pass@host:port/db); unset means the embedded database",
    schema: z.string().optional(),
  },
  dataDir: {
    env: "AGENTSTORE_DATA_DIR",
    flag: "data-dir",
    help: "directory of the embedded database (PGlite); 'memory://' keeps it in memory",
    schema: z.string().min(1),
    fallback: "./data/agentstore",
  },
  poolMax: {
    env: "AGENTSTORE_DB_POOL_MAX",
    flag: "db-pool-max",
    help: "PostgreSQL connection pool size",
    schema: positiveInt,
    fallback: "10",
  },
  migrate: {
    env: "AGENTSTORE_MIGRATE",
    flag: "migrate",
    help: "apply pending migrations at start (true/false)",
    schema: bool,
    fallback: "true",
  },
  apiKeys: {
    env: "AGENTSTORE_API_KEYS",
    flag: "api-keys",
    help: "comma-separated tenant:key pairs",
    schema: z.string().optional(),
  },
  apiKeysFile: {
    env: "AGENTSTORE_API_KEYS_FILE",
    flag: "api-keys-file",
    help: "file with one tenant:key pair per line (# comments allowed)",
    schema: z.string().optional(),
  },
  tlsCert: {
    env: "AGENTSTORE_TLS_CERT",
    flag: "tls-cert",
    help: "PEM certificate file; with --tls-key serves TLS",
    schema: z.string().optional(),
  },
  tlsKey: {
    env: "AGENTSTORE_TLS_KEY",
    flag: "tls-key",
    help: "PEM private key file",
    schema: z.string().optional(),
  },
  maxMessageBytes: {
    env: "AGENTSTORE_MAX_MESSAGE_BYTES",
    flag: "max-message-bytes",
    help: "largest request message read",
    schema: positiveInt,
    fallback: String(16 * 1024 * 1024),
  },
  maxEventBytes: {
    env: "AGENTSTORE_MAX_EVENT_BYTES",
    flag: "max-event-bytes",
    help: "largest event payload (JSON bytes)",
    schema: positiveInt,
    fallback: String(256 * 1024),
  },
  maxBatchEvents: {
    env: "AGENTSTORE_MAX_BATCH_EVENTS",
    flag: "max-batch-events",
    help: "most events in one AppendRunEvents",
    schema: positiveInt,
    fallback: "1000",
  },
  maxBatchBytes: {
    env: "AGENTSTORE_MAX_BATCH_BYTES",
    flag: "max-batch-bytes",
    help: "largest AppendRunEvents batch (sum of JSON payload bytes)",
    schema: positiveInt,
    fallback: String(4 * 1024 * 1024),
  },
  maxRunJsonBytes: {
    env: "AGENTSTORE_MAX_RUN_JSON_BYTES",
    flag: "max-run-json-bytes",
    help: "largest run metadata + input (JSON bytes)",
    schema: positiveInt,
    fallback: String(1024 * 1024),
  },
  streamBufferEvents: {
    env: "AGENTSTORE_STREAM_BUFFER_EVENTS",
    flag: "stream-buffer-events",
    help: "recent events kept in memory per streamed run; slower readers catch up from the database",
    schema: positiveInt,
    fallback: "256",
  },
  streamPollMs: {
    env: "AGENTSTORE_STREAM_POLL_MS",
    flag: "stream-poll-ms",
    help: "safety re-check of streamed runs, in case a notification was lost",
    schema: positiveInt,
    fallback: "15000",
  },
  healthIntervalMs: {
    env: "AGENTSTORE_HEALTH_INTERVAL_MS",
    flag: "health-interval-ms",
    help: "how often the database is probed for the health service",
    schema: positiveInt,
    fallback: "1000",
  },
  shutdownGraceMs: {
    env: "AGENTSTORE_SHUTDOWN_GRACE_MS",
    flag: "shutdown-grace-ms",
    help: "how long shutdown waits for unary calls in flight",
    schema: positiveInt,
    fallback: "10000",
  },
  logLevel: {
    env: "AGENTSTORE_LOG_LEVEL",
    flag: "log-level",
    help: "fatal, error, warn, info, debug, trace or silent",
    schema: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]),
    fallback: "info",
  },
  redactKeys: {
    env: "AGENTSTORE_REDACT_KEYS",
    flag: "redact-keys",
    help: "extra comma-separated payload key names to redact (on top of the built-in list)",
    schema: z.string().optional(),
  },
} satisfies Record<string, Setting>;

type SettingName = keyof typeof settings;

/** Every setting's variable, flag and default, for documentation and its test. */
export function settingsReference(): Array<{ env: string; flag: string; fallback: string | undefined }> {
  return (Object.values(settings) as Setting[]).map(({ env, flag, fallback }) => ({ env, flag, fallback }));
}

export class ConfigError extends Error {
  override name = "ConfigError";
}

export function usage(): string {
  const lines = [
    "usage: agentstore [serve|migrate] [flags]",
    "",
    "  serve    run the gRPC service (default)",
    "  migrate  apply pending database migrations and exit",
    "",
    "flags (each also read from the environment variable shown):",
  ];
  for (const s of Object.values(settings) as Setting[]) {
    const fallback = s.fallback === undefined ? "" : ` (default ${s.fallback})`;
    lines.push(`  --${s.flag.padEnd(22)} ${s.env.padEnd(32)} ${s.help}${fallback}`);
  }
  lines.push(`  --${"help".padEnd(22)} ${"".padEnd(32)} print this text`);
  return lines.join("\n");
}

/** Parses argv (without node and script) and env into a Config, or throws ConfigError. */
export function loadConfig(argv: string[], env: NodeJS.ProcessEnv): Config | "help" {
  const options = Object.fromEntries(
    (Object.values(settings) as Setting[]).map((s) => [s.flag, { type: "string" as const }]),
  );
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
  if ((command !== "serve" && command !== "migrate") || extra.length > 0) {
    throw new ConfigError(`unknown command '${parsed.positionals.join(" ")}'\n\n${usage()}`);
  }

  const problems: string[] = [];
  const read = <N extends SettingName>(name: N): z.output<(typeof settings)[N]["schema"]> => {
    const s: Setting = settings[name];
    const fromFlag = parsed.values[s.flag];
    const raw = typeof fromFlag === "string" ? fromFlag : (env[s.env] ?? s.fallback);
    const value = raw === "" && s.fallback === undefined ? undefined : raw;
    const result = s.schema.safeParse(value);
    if (!result.success) {
      const shown = s.env.includes("KEY") || s.env === "DATABASE_URL" ? "(hidden)" : `'${value}'`;
      problems.push(`${s.env} / --${s.flag}: ${result.error.issues[0]?.message ?? "invalid"}, got ${shown}`);
      return undefined as never;
    }
    return result.data as never;
  };

  const listen = parseListen(read("listen"), problems);
  const databaseUrl = read("databaseUrl");
  const dataDir = read("dataDir");
  if (databaseUrl !== undefined && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    problems.push("DATABASE_URL / --database-url: expected a postgres:// or postgresql:// URL");
  }
  const apiKeys = parseApiKeys(read("apiKeys"), read("apiKeysFile"), problems);
  const certFile = read("tlsCert");
  const keyFile = read("tlsKey");
  if ((certFile === undefined) !== (keyFile === undefined)) {
    problems.push("AGENTSTORE_TLS_CERT and AGENTSTORE_TLS_KEY must be set together");
  }
  for (const file of [certFile, keyFile]) {
    if (file !== undefined) {
      try {
        readFileSync(file);
      } catch (err) {
        problems.push(`cannot read TLS file ${file}: ${(err as Error).message}`);
      }
    }
  }

  const config: Config = {
    command,
    listen,
    database:
      databaseUrl !== undefined
        ? { kind: "postgres", url: databaseUrl, poolMax: read("poolMax") }
        : { kind: "pglite", dataDir: dataDir === "memory://" ? undefined : dataDir },
    migrateAtStart: read("migrate"),
    apiKeys,
    tls: certFile !== undefined && keyFile !== undefined ? { certFile, keyFile } : undefined,
    limits: {
      maxMessageBytes: read("maxMessageBytes"),
      maxEventBytes: read("maxEventBytes"),
      maxBatchEvents: read("maxBatchEvents"),
      maxBatchBytes: read("maxBatchBytes"),
      maxRunJsonBytes: read("maxRunJsonBytes"),
    },
    stream: { bufferEvents: read("streamBufferEvents"), pollIntervalMs: read("streamPollMs") },
    healthIntervalMs: read("healthIntervalMs"),
    shutdownGraceMs: read("shutdownGraceMs"),
    logLevel: read("logLevel"),
    extraRedactKeys: (read("redactKeys") ?? "")
      .split(",")
      .map((k: string) => k.trim())
      .filter(Boolean),
  };

  if (problems.length === 0 && command === "serve" && apiKeys.size === 0 && !isLoopback(listen.host)) {
    problems.push(
      `refusing to listen on ${listen.host} without API keys: set AGENTSTORE_API_KEYS (or --api-keys-file), ` +
        "or listen on a loopback address such as 127.0.0.1",
    );
  }
  if (problems.length > 0) {
    throw new ConfigError(`invalid configuration:\n  - ${problems.join("\n  - ")}`);
  }
  return config;
}

function parseListen(value: string | undefined, problems: string[]): { host: string; port: number } {
  const match = value === undefined ? null : /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(value);
  const port = match ? Number(match[2]) : Number.NaN;
  if (!match?.[1] || port > 65535) {
    if (value !== undefined)
      problems.push(`AGENTSTORE_LISTEN / --listen: expected host:port, got '${value}'`);
    return { host: "127.0.0.1", port: 0 };
  }
  return { host: match[1].replace(/^\[|\]$/g, ""), port };
}

function parseApiKeys(inline: string | undefined, file: string | undefined, problems: string[]) {
  const keys = new Map<string, string>();
  const entries: Array<{ text: string; where: string }> = [];
  for (const [i, text] of (inline ?? "").split(",").entries()) {
    if (text.trim()) entries.push({ text: text.trim(), where: `AGENTSTORE_API_KEYS entry ${i + 1}` });
  }
  if (file !== undefined) {
    try {
      for (const [i, line] of readFileSync(file, "utf8").split(/\r?\n/).entries()) {
        const text = line.replace(/#.*$/, "").trim();
        if (text) entries.push({ text, where: `${file}:${i + 1}` });
      }
    } catch (err) {
      problems.push(`cannot read AGENTSTORE_API_KEYS_FILE ${file}: ${(err as Error).message}`);
    }
  }
  for (const { text, where } of entries) {
    const at = text.indexOf(":");
    const tenant = text.slice(0, at).trim();
    const key = text.slice(at + 1).trim();
    if (at <= 0 || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(tenant)) {
      problems.push(`${where}: expected tenant:key with a tenant of letters, digits, '.', '_' or '-'`);
    } else if (key.length < 16) {
      problems.push(`${where}: the key of tenant ${tenant} is shorter than 16 characters`);
    } else if (keys.has(key)) {
      problems.push(`${where}: the key of tenant ${tenant} is already used by tenant ${keys.get(key)}`);
    } else {
      keys.set(key, tenant);
    }
  }
  return keys;
}

function isLoopback(host: string): boolean {
  if (host === "localhost") return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  return host === "::1";
}

/** The configuration as it may be logged: no keys, no database password. */
export function describeConfig(config: Config): Record<string, unknown> {
  return {
    command: config.command,
    listen: `${config.listen.host}:${config.listen.port}`,
    database:
      config.database.kind === "postgres"
        ? { kind: "postgres", url: redactUrl(config.database.url), poolMax: config.database.poolMax }
        : { kind: "pglite", dataDir: config.database.dataDir ?? "memory://" },
    migrateAtStart: config.migrateAtStart,
    tenants: config.apiKeys.size === 0 ? [DEFAULT_TENANT] : [...new Set(config.apiKeys.values())],
    tls: config.tls !== undefined,
    limits: config.limits,
    stream: config.stream,
  };
}

function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "***";
    return parsed.toString();
  } catch {
    return "(unparseable url)";
  }
}
