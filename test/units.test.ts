import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  type Config,
  ConfigError,
  describeConfig,
  loadConfig,
  settingsReference,
} from "../src/config/index.ts";
import type { DomainError } from "../src/core/errors.ts";
import { clampPageSize, isStringTuple, Paging } from "../src/core/paging.ts";
import { createRedactor, REDACTED } from "../src/core/redact.ts";
import { ROOT } from "./helpers/servers.ts";

const load = (env: Record<string, string>, argv: string[] = []) => loadConfig(argv, env) as Config;

describe("configuration", () => {
  it("defaults to the embedded database on loopback with migrations on", () => {
    const config = load({});
    assert.equal(config.command, "serve");
    assert.deepEqual(config.server.listen, { host: "127.0.0.1", port: 50051 });
    assert.deepEqual(config.database.target, { kind: "pglite", dataDir: "./data/agentstore" });
    assert.equal(config.database.migrateAtStart, true);
    assert.equal(config.server.apiKeys.size, 0);
  });

  it("flags override environment variables", () => {
    const config = load({ AGENTSTORE_LISTEN: "127.0.0.1:1" }, [
      "--listen",
      "127.0.0.1:2",
      "--migrate",
      "false",
      "migrate",
    ]);
    assert.equal(config.server.listen.port, 2);
    assert.equal(config.database.migrateAtStart, false);
    assert.equal(config.command, "migrate");
  });

  it("reads API keys inline and from a file, and rejects short or duplicate keys", () => {
    const dir = mkdtempSync(join(tmpdir(), "agentstore-keys-"));
    const file = join(dir, "keys");
    writeFileSync(file, "# tenants\nbeta:beta-key-0123456789abcdef\n\n");
    const config = load({
      AGENTSTORE_API_KEYS: "alpha:alpha-key-0123456789abc",
      AGENTSTORE_API_KEYS_FILE: file,
    });
    assert.deepEqual([...config.server.apiKeys.values()].sort(), ["alpha", "beta"]);
    assert.throws(() => load({ AGENTSTORE_API_KEYS: "alpha:short" }), /shorter than 16/);
    assert.throws(
      () => load({ AGENTSTORE_API_KEYS: "a:same-key-0123456789,b:same-key-0123456789" }),
      /already used by tenant a/,
    );
    assert.throws(() => load({ AGENTSTORE_API_KEYS: "no-colon-here-0123456789" }), /expected tenant:key/);
  });

  it("refuses keys with separators or whitespace instead of reading two pairs as one", () => {
    assert.throws(
      () => load({ AGENTSTORE_API_KEYS: "acme:0123456789abcdef;beta:0123456789abcdeg" }),
      /the key of tenant acme contains a character/,
    );
    assert.throws(() => load({ AGENTSTORE_API_KEYS: "acme:0123456789 abcdef" }), /contains a character/);
    const dir = mkdtempSync(join(tmpdir(), "agentstore-keys-"));
    const file = join(dir, "keys");
    writeFileSync(file, "acme:0123456789abcdef\tbeta:0123456789abcdeg\n");
    assert.throws(() => load({ AGENTSTORE_API_KEYS_FILE: file }), /contains a character/);
    const ok = load({ AGENTSTORE_API_KEYS: "acme:0123456789abcdef,beta:0123456789abcdeg" });
    assert.deepEqual([...ok.server.apiKeys.values()], ["acme", "beta"]);
  });

  it("reports every bad value at once, naming the variable and flag, without echoing secrets", () => {
    let message = "";
    try {
      load({
        AGENTSTORE_LISTEN: "nowhere",
        AGENTSTORE_MAX_EVENT_BYTES: "-5",
        AGENTSTORE_LOG_LEVEL: "loud",
        AGENTSTORE_TLS_CERT: "/nope.pem",
        AGENTSTORE_API_KEYS: "t:tooshort",
      });
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      message = err.message;
    }
    for (const expected of [
      "AGENTSTORE_LISTEN",
      "--max-event-bytes",
      "AGENTSTORE_LOG_LEVEL",
      "TLS_CERT and",
    ]) {
      assert.ok(message.includes(expected), `${expected} in:\n${message}`);
    }
    assert.ok(!message.includes("tooshort"));
    assert.throws(() => loadConfig(["--no-such-flag"], {}), ConfigError);
    assert.throws(() => loadConfig(["serve", "extra"], {}), /unknown command/);
  });

  it("refuses a non-loopback address without API keys, and allows it with keys", () => {
    assert.throws(() => load({ AGENTSTORE_LISTEN: "0.0.0.0:50051" }), /refusing to listen on 0\.0\.0\.0/);
    assert.throws(() => load({ AGENTSTORE_LISTEN: "[::]:50051" }), /refusing/);
    assert.equal(load({ AGENTSTORE_LISTEN: "[::1]:50051" }).server.listen.host, "::1");
    const open = load({ AGENTSTORE_LISTEN: "0.0.0.0:50051", AGENTSTORE_API_KEYS: "t:key-0123456789abcdef" });
    assert.equal(open.server.listen.host, "0.0.0.0");
  });

  it("describes itself for the logs without keys or the database password", () => {
    const text = JSON.stringify(
      describeConfig(
        load({
          DATABASE_URL: "postgres://app:s3cret@db:5432/x",
          AGENTSTORE_API_KEYS: "t:key-0123456789abcdef",
        }),
      ),
    );
    assert.ok(!text.includes("s3cret"));
    assert.ok(!text.includes("key-0123456789abcdef"));
    assert.match(text, /postgres:\/\/app:\*\*\*@db:5432\/x/);
  });

  it("the README documents every setting with its flag and default", () => {
    const readme = readFileSync(join(ROOT, "README.md"), "utf8");
    for (const { env, flag, fallback } of settingsReference()) {
      const row = readme.split("\n").find((line) => line.startsWith(`| \`${env}\``));
      assert.ok(row, `README has a row for ${env}`);
      assert.ok(row.includes(`\`--${flag}\``), `README row of ${env} names --${flag}`);
      const shown = fallback === undefined ? "unset" : `\`${fallback}\``;
      assert.ok(row.includes(shown), `README row of ${env} shows the default ${shown}`);
    }
  });
});

describe("redaction", () => {
  const redact = createRedactor(["ssn"]);

  it("replaces values under secret-looking keys at any depth", () => {
    assert.deepEqual(
      redact({
        password: "p",
        "X-Api-Key": "k",
        client_secret: "s",
        nested: [{ refresh_token: "r", Cookie: "c" }, { private_key: { pem: "x" } }],
        db: { connection_string: "postgres://u:p@h/d", dsn: "d" },
        ssn: "123",
      }),
      {
        password: REDACTED,
        "X-Api-Key": REDACTED,
        client_secret: REDACTED,
        nested: [{ refresh_token: REDACTED, Cookie: REDACTED }, { private_key: REDACTED }],
        db: { connection_string: REDACTED, dsn: REDACTED },
        ssn: REDACTED,
      },
    );
  });

  it("keeps counters, plain fields, and empty or null secrets", () => {
    const value = {
      input_tokens: 5,
      total_tokens: 9,
      max_tokens: 100,
      tokenizer: "bpe",
      author: "a",
      token: "",
      auth: null,
    };
    assert.deepEqual(redact(value), value);
  });
});

describe("page tokens", () => {
  const paging = new Paging(randomBytes(32));
  const list = { name: "runs", defaultSize: 50, maxSize: 500, isPosition: isStringTuple(2) };
  const reason = (fn: () => unknown) => {
    try {
      fn();
    } catch (err) {
      return (err as DomainError).reason;
    }
    return "none";
  };
  const tokenOf = (tenant: string, filters: unknown) =>
    paging
      .start(list, tenant, filters, { pageSize: 1, pageToken: "" })
      .finish([1, 2], (n) => ["2026-01-01T00:00:00.000Z", String(n)]).nextPageToken;

  it("round-trip, and are bound to the list, the filters and the tenant", () => {
    const token = tokenOf("t1", { threadId: "t" });
    assert.notEqual(token, "");
    const page = paging.start(list, "t1", { threadId: "t" }, { pageSize: 1, pageToken: token });
    assert.deepEqual(page.after, ["2026-01-01T00:00:00.000Z", "1"]);
    assert.equal(
      reason(() => paging.start(list, "t1", { threadId: "u" }, { pageSize: 1, pageToken: token })),
      "PAGE_TOKEN_MISMATCH",
    );
    assert.equal(
      reason(() =>
        paging.start(
          { ...list, name: "inflight" },
          "t1",
          { threadId: "t" },
          { pageSize: 1, pageToken: token },
        ),
      ),
      "INVALID_PAGE_TOKEN",
    );
    assert.equal(
      reason(() => paging.start(list, "t2", { threadId: "t" }, { pageSize: 1, pageToken: token })),
      "INVALID_PAGE_TOKEN",
      "another tenant's token is not one issued to this tenant",
    );
  });

  it("refuse anything the server did not sign, however well-formed", () => {
    const token = tokenOf("t1", {});
    const [body = "", mac = ""] = token.split(".");
    const decoded = JSON.parse(Buffer.from(body, "base64url").toString("utf8"));
    const forged = Buffer.from(JSON.stringify({ ...decoded, p: ["garbage", "zz"] })).toString("base64url");
    for (const bad of [
      `${forged}.${mac}`,
      forged,
      "%%%",
      "a.b.c",
      `${body}.`,
      `.${mac}`,
      `${body}.${mac}x`,
    ]) {
      assert.equal(
        reason(() => paging.start(list, "t1", {}, { pageSize: 1, pageToken: bad })),
        "INVALID_PAGE_TOKEN",
        bad,
      );
    }
    const otherServer = new Paging(randomBytes(32));
    assert.equal(
      reason(() => otherServer.start(list, "t1", {}, { pageSize: 1, pageToken: token })),
      "INVALID_PAGE_TOKEN",
    );
  });

  it("clamps page sizes as AIP-158 says", () => {
    assert.equal(clampPageSize(0, 50, 500), 50);
    assert.equal(clampPageSize(10, 50, 500), 10);
    assert.equal(clampPageSize(10_000, 50, 500), 500);
  });
});
