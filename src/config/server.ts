import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { z } from "zod";
import { type GroupValues, optionalText, positiveInt, setting } from "./settings.ts";

export const DEFAULT_TENANT = "default";

/** The network face of the server: where it listens, who may call it, how it stops. */
export const serverSettings = {
  listen: setting({
    env: "AGENTSTORE_LISTEN",
    flag: "listen",
    help: "host:port to serve on (gRPC, gRPC-Web and Connect on one port)",
    schema: z.string(),
    fallback: "127.0.0.1:50051",
  }),
  apiKeys: setting({
    env: "AGENTSTORE_API_KEYS",
    flag: "api-keys",
    help: "comma-separated tenant:key pairs",
    schema: optionalText,
    secret: true,
  }),
  apiKeysFile: setting({
    env: "AGENTSTORE_API_KEYS_FILE",
    flag: "api-keys-file",
    help: "file with one tenant:key pair per line (# comments allowed)",
    schema: optionalText,
  }),
  tlsCert: setting({
    env: "AGENTSTORE_TLS_CERT",
    flag: "tls-cert",
    help: "PEM certificate file; with --tls-key serves TLS",
    schema: optionalText,
  }),
  tlsKey: setting({
    env: "AGENTSTORE_TLS_KEY",
    flag: "tls-key",
    help: "PEM private key file",
    schema: optionalText,
  }),
  maxMessageBytes: setting({
    env: "AGENTSTORE_MAX_MESSAGE_BYTES",
    flag: "max-message-bytes",
    help: "largest request message read",
    schema: positiveInt,
    fallback: String(16 * 1024 * 1024),
  }),
  maxStreamsPerTenant: setting({
    env: "AGENTSTORE_MAX_STREAMS_PER_TENANT",
    flag: "max-streams-per-tenant",
    help: "most streaming calls (StreamRunEvents, WatchRuns, ...) one tenant may hold open on this replica",
    schema: positiveInt,
    fallback: "2000",
  }),
  healthIntervalMs: setting({
    env: "AGENTSTORE_HEALTH_INTERVAL_MS",
    flag: "health-interval-ms",
    help: "how often the database is probed for the health service",
    schema: positiveInt,
    fallback: "1000",
  }),
  shutdownGraceMs: setting({
    env: "AGENTSTORE_SHUTDOWN_GRACE_MS",
    flag: "shutdown-grace-ms",
    help: "how long shutdown waits for unary calls in flight",
    schema: positiveInt,
    fallback: "10000",
  }),
  logLevel: setting({
    env: "AGENTSTORE_LOG_LEVEL",
    flag: "log-level",
    help: "fatal, error, warn, info, debug, trace or silent",
    schema: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]),
    fallback: "info",
  }),
};

export interface ServerConfig {
  listen: { host: string; port: number };
  /** API key -> tenant. Empty means one default tenant, loopback only. */
  apiKeys: Map<string, string>;
  tls: { certFile: string; keyFile: string } | undefined;
  maxMessageBytes: number;
  maxStreamsPerTenant: number;
  healthIntervalMs: number;
  shutdownGraceMs: number;
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
}

export function serverConfig(
  values: GroupValues<typeof serverSettings>,
  command: string,
  problems: string[],
): ServerConfig {
  const listen = parseListen(values.listen, problems);
  const apiKeys = parseApiKeys(values.apiKeys, values.apiKeysFile, problems);
  const { tlsCert: certFile, tlsKey: keyFile } = values;
  if ((certFile === undefined) !== (keyFile === undefined)) {
    problems.push("AGENTSTORE_TLS_CERT and AGENTSTORE_TLS_KEY must be set together");
  }
  for (const file of [certFile, keyFile]) {
    if (file === undefined) continue;
    try {
      readFileSync(file);
    } catch (err) {
      problems.push(`cannot read TLS file ${file}: ${(err as Error).message}`);
    }
  }
  if (problems.length === 0 && command === "serve" && apiKeys.size === 0 && !isLoopback(listen.host)) {
    problems.push(
      `refusing to listen on ${listen.host} without API keys: set AGENTSTORE_API_KEYS (or --api-keys-file), ` +
        "or listen on a loopback address such as 127.0.0.1",
    );
  }
  return {
    listen,
    apiKeys,
    tls: certFile !== undefined && keyFile !== undefined ? { certFile, keyFile } : undefined,
    maxMessageBytes: values.maxMessageBytes,
    maxStreamsPerTenant: values.maxStreamsPerTenant,
    healthIntervalMs: values.healthIntervalMs,
    shutdownGraceMs: values.shutdownGraceMs,
    logLevel: values.logLevel,
  };
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

const TENANT_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/**
 * Key characters: what base64, base64url and hex keys are made of. Separators (',', ';', ':') and
 * whitespace are refused, so that "a:key1;b:key2" is an error rather than one tenant whose key
 * happens to contain ";b:key2".
 */
const KEY_PATTERN = /^[A-Za-z0-9._~+/=-]+$/;

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
    const tenant = text.slice(0, at);
    const key = text.slice(at + 1);
    if (at <= 0 || !TENANT_PATTERN.test(tenant)) {
      problems.push(`${where}: expected tenant:key with a tenant of letters, digits, '.', '_' or '-'`);
    } else if (!KEY_PATTERN.test(key)) {
      problems.push(
        `${where}: the key of tenant ${tenant} contains a character other than letters, digits and ` +
          "'._~+/=-' (separate pairs with ',' in AGENTSTORE_API_KEYS, or one per line in a file)",
      );
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
