export const REDACTED = "[REDACTED]";

/**
 * Key names whose values are secrets, compared after lower-casing and dropping '-', '_' and '.'.
 * A key is secret when it equals one of these or ends with one ("github_token", "clientSecret"),
 * so counters such as "input_tokens" or "max_tokens" stay readable.
 */
const SECRET_KEY_SUFFIXES = [
  "password",
  "passwd",
  "passphrase",
  "secret",
  "token",
  "apikey",
  "accesskey",
  "privatekey",
  "secretkey",
  "signingkey",
  "authorization",
  "auth",
  "cookie",
  "setcookie",
  "credential",
  "credentials",
  "connectionstring",
  "dsn",
  "sessionkey",
  "clientkey",
];

const normalize = (key: string) => key.toLowerCase().replace(/[-_.\s]/g, "");

export type Redactor = (value: unknown) => unknown;

/** Builds a redactor over the built-in key names plus extra ones from configuration. */
export function createRedactor(extraKeys: readonly string[] = []): Redactor {
  const suffixes = [...SECRET_KEY_SUFFIXES, ...extraKeys.map(normalize)];
  const isSecret = (key: string) => {
    const n = normalize(key);
    return suffixes.some((s) => n.endsWith(s));
  };
  const walk = (value: unknown): unknown => {
    if (Array.isArray(value)) return value.map(walk);
    if (value !== null && typeof value === "object") {
      const out: Record<string, unknown> = {};
      for (const [key, inner] of Object.entries(value)) {
        out[key] = isSecret(key) && inner !== null && inner !== "" ? REDACTED : walk(inner);
      }
      return out;
    }
    return value;
  };
  return walk;
}
