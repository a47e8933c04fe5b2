import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";

/**
 * Secrets at rest (push-notification tokens and credentials): AES-256-GCM under the newest of the
 * configured keys, readable under any of them, so that keys rotate. A sealed value is text:
 *
 *   v1:<keyId>:<base64(iv | ciphertext | tag)>   12-byte random IV, 16-byte tag
 *   plain:<value>                                 no key configured: stored as given
 *
 * The associated data binds a value to where it is stored (tenant, row, field): a ciphertext
 * copied into another row does not open. Nothing here ever puts a value or a key in an error.
 */
export interface SecretKey {
  id: string;
  key: Buffer;
}

const IV_BYTES = 12;
const TAG_BYTES = 16;
export const PLAIN_KEY_ID = "";

export class SecretError extends Error {
  override name = "SecretError";
}

export class SecretBox {
  readonly #keys: Map<string, Buffer>;
  readonly #current: SecretKey | undefined;

  /** keys: oldest first; the last one encrypts. None: values are stored plain. */
  constructor(keys: readonly SecretKey[]) {
    this.#keys = new Map(keys.map((k) => [k.id, k.key]));
    this.#current = keys.at(-1);
  }

  /** The id of the key new values are sealed under; PLAIN_KEY_ID when there is none. */
  get currentKeyId(): string {
    return this.#current?.id ?? PLAIN_KEY_ID;
  }

  seal(value: string, context: string): string {
    if (this.#current === undefined) return `plain:${value}`;
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv("aes-256-gcm", this.#current.key, iv);
    cipher.setAAD(Buffer.from(context));
    const body = Buffer.concat([iv, cipher.update(value, "utf8"), cipher.final(), cipher.getAuthTag()]);
    return `v1:${this.#current.id}:${body.toString("base64")}`;
  }

  open(sealed: string, context: string): string {
    if (sealed.startsWith("plain:")) return sealed.slice("plain:".length);
    const [version, keyId, data, ...rest] = sealed.split(":");
    if (version !== "v1" || keyId === undefined || data === undefined || rest.length > 0) {
      throw new SecretError("a stored secret has an unknown format");
    }
    const key = this.#keys.get(keyId);
    if (key === undefined)
      throw new SecretError(`a stored secret is under key '${keyId}', which is not configured`);
    const body = Buffer.from(data, "base64");
    if (body.length < IV_BYTES + TAG_BYTES) throw new SecretError("a stored secret is truncated");
    try {
      const decipher = createDecipheriv("aes-256-gcm", key, body.subarray(0, IV_BYTES));
      decipher.setAAD(Buffer.from(context));
      decipher.setAuthTag(body.subarray(body.length - TAG_BYTES));
      return Buffer.concat([
        decipher.update(body.subarray(IV_BYTES, body.length - TAG_BYTES)),
        decipher.final(),
      ]).toString("utf8");
    } catch {
      throw new SecretError(`a stored secret under key '${keyId}' does not decrypt (wrong key or altered)`);
    }
  }
}

/** The key id a sealed value is under; PLAIN_KEY_ID for a plain one. */
export function keyIdOf(sealed: string): string {
  return sealed.startsWith("v1:") ? (sealed.split(":")[1] ?? PLAIN_KEY_ID) : PLAIN_KEY_ID;
}

/**
 * Parses `keyId:base64-32-bytes,...` (oldest first). Problems name the entry by position and id,
 * never its key material.
 */
export function parseSecretKeys(text: string | undefined, problems: string[], what: string): SecretKey[] {
  const keys: SecretKey[] = [];
  if (text === undefined || text.trim() === "") return keys;
  for (const [index, entry] of text.split(",").entries()) {
    const colon = entry.indexOf(":");
    const id = colon < 0 ? "" : entry.slice(0, colon).trim();
    const material = colon < 0 ? "" : entry.slice(colon + 1).trim();
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(id)) {
      problems.push(`${what}: entry ${index + 1} needs a key id (letters, digits, '_', '.', '-') before ':'`);
      continue;
    }
    const key = Buffer.from(material, "base64");
    if (key.length !== 32 || key.toString("base64").replace(/=+$/, "") !== material.replace(/=+$/, "")) {
      problems.push(`${what}: key '${id}' must be 32 bytes in base64 (openssl rand -base64 32)`);
      continue;
    }
    if (keys.some((k) => k.id === id)) {
      problems.push(`${what}: key id '${id}' appears twice`);
      continue;
    }
    keys.push({ id, key });
  }
  return keys;
}
