import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { type Client, Code, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import pg from "pg";
import { TaskState } from "../gen/agentstore/v1/a2a_task_pb.ts";
import { TaskService } from "../gen/agentstore/v1/task_service_pb.ts";
import type { App } from "../src/app.ts";
import { ConfigError, loadConfig } from "../src/config/index.ts";
import { isRefusedAddress } from "../src/core/outbound-url.ts";
import { SecretBox } from "../src/core/secrets.ts";
import { eventually, rejectsWith } from "./helpers/assertions.ts";
import { backends, pglite, type TestDatabase } from "./helpers/databases.ts";
import { KEYS, ROOT, startServer, type TestServer } from "./helpers/servers.ts";

/**
 * TaskService's push-notification configs (A2A v1.0 TaskPushNotificationConfig) over real gRPC,
 * on PGlite and on PostgreSQL: CRUD, lifetime with the task, tenancy, encryption at rest, key
 * rotation with the re-encrypt command, and the URL check.
 */

const KEYS_ENV = `alpha:${KEYS.alpha},beta:${KEYS.beta}`;
const keyText = () => randomBytes(32).toString("base64");
const KEY_A = `a:${keyText()}`;
const KEY_B = `b:${keyText()}`;

const run = promisify(execFile);

type Tasks = Client<typeof TaskService>;

function taskClient(baseUrl: string, apiKey: string): { t: Tasks; close(): void } {
  const auth: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${apiKey}`);
    return next(req);
  };
  const sessionManager = new Http2SessionManager(baseUrl);
  const transport = createGrpcTransport({ baseUrl, interceptors: [auth], sessionManager });
  return { t: createClient(TaskService, transport), close: () => sessionManager.abort() };
}

const newId = (prefix: string) => `${prefix}-${randomUUID()}`;

async function newTask(t: Tasks, ttlMs?: number): Promise<string> {
  const id = newId("task");
  await t.saveTask({
    task: { id, contextId: id, status: { state: TaskState.WORKING } },
    ttl: ttlMs === undefined ? undefined : durationFromMs(ttlMs),
  });
  return id;
}

/** A config with a token and credentials unique to it (so that the database can be searched for them). */
function secretConfig(taskId: string, id = "") {
  const token = `tok-${randomUUID()}`;
  const credentials = `cred-${randomUUID()}`;
  return {
    config: {
      id,
      taskId,
      url: "http://127.0.0.1:9/hook",
      token,
      authentication: { scheme: "Bearer", credentials },
    },
    token,
    credentials,
  };
}

interface Row {
  tenant_id: string;
  task_id: string;
  id: string;
  url: string;
  token: string | null;
  scheme: string | null;
  credentials: string | null;
  key_id: string;
}

/** Rows of a2a_push_configs, straight from the database. */
async function dbRows(app: App, where: string, params: unknown[]): Promise<Row[]> {
  const sql = `select tenant_id, task_id, id, url, token, scheme, credentials, key_id from a2a_push_configs where ${where}`;
  const { pglite, url } = app.db;
  if (pglite !== undefined) return (await pglite.query<Row>(sql, params)).rows;
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<Row>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

const rowsOfTask = (app: App, tenant: string, taskId: string) =>
  dbRows(app, "tenant_id = $1 and task_id = $2", [tenant, taskId]);

for (const backend of await backends()) {
  describe(`push configs on ${backend.name}`, { skip: backend.skip }, () => {
    let db: TestDatabase;
    let server: TestServer;
    let alpha: ReturnType<typeof taskClient>;
    let beta: ReturnType<typeof taskClient>;
    before(async () => {
      db = await backend.create();
      server = await startServer(db, {
        AGENTSTORE_API_KEYS: KEYS_ENV,
        AGENTSTORE_PUSH_CONFIG_KEYS: KEY_A,
        AGENTSTORE_PUSH_ALLOW_PRIVATE_URLS: "true",
        AGENTSTORE_TASK_SWEEP_MS: "100",
      });
      alpha = taskClient(server.url, KEYS.alpha);
      beta = taskClient(server.url, KEYS.beta);
    });
    after(async () => {
      alpha?.close();
      beta?.close();
      await server?.close();
      await db?.drop();
    });

    it("creates (assigning ids), gets, lists by pages and deletes several configs of a task", async () => {
      const taskId = await newTask(alpha.t);
      const first = secretConfig(taskId);
      const created = (await alpha.t.createPushConfig({ config: first.config })).config;
      assert.match(created?.id ?? "", /^[0-9a-f-]{36}$/);
      assert.equal(created?.token, first.token);
      assert.equal(created?.authentication?.credentials, first.credentials);
      const ids = [created?.id ?? ""];
      for (const name of ["c1", "c2", "c3", "c4"]) {
        const res = await alpha.t.createPushConfig({
          config: { taskId, id: name, url: `http://localhost/${name}` },
        });
        assert.equal(res.config?.id, name);
        ids.push(name);
      }
      const got = (await alpha.t.getPushConfig({ taskId, id: ids[0] ?? "" })).config;
      assert.equal(got?.url, first.config.url);
      assert.equal(got?.token, first.token);
      assert.equal(got?.authentication?.scheme, "Bearer");
      assert.equal(got?.authentication?.credentials, first.credentials);
      const plain = (await alpha.t.getPushConfig({ taskId, id: "c1" })).config;
      assert.equal(plain?.token, "");
      assert.equal(plain?.authentication, undefined);

      const listed: string[] = [];
      let pageToken = "";
      let pages = 0;
      do {
        const page = await alpha.t.listPushConfigs({ taskId, pageSize: 2, pageToken });
        assert.ok(page.configs.length <= 2);
        listed.push(...page.configs.map((c) => c.id));
        pageToken = page.nextPageToken;
        pages++;
      } while (pageToken !== "");
      assert.equal(pages, 3);
      assert.deepEqual(listed, [...ids].sort());

      // Same id again: replaced, not added.
      await alpha.t.createPushConfig({ config: { taskId, id: "c1", url: "http://localhost/other" } });
      assert.equal((await alpha.t.getPushConfig({ taskId, id: "c1" })).config?.url, "http://localhost/other");
      assert.equal((await alpha.t.listPushConfigs({ taskId })).configs.length, 5);

      await alpha.t.deletePushConfig({ taskId, id: "c2" });
      await rejectsWith(alpha.t.getPushConfig({ taskId, id: "c2" }), Code.NotFound, "PUSH_CONFIG_NOT_FOUND");
      await rejectsWith(
        alpha.t.deletePushConfig({ taskId, id: "c2" }),
        Code.NotFound,
        "PUSH_CONFIG_NOT_FOUND",
      );
      assert.equal((await alpha.t.listPushConfigs({ taskId })).configs.length, 4);
    });

    it("answers NOT_FOUND for a task that does not exist", async () => {
      const taskId = newId("missing");
      const reason = "A2A_TASK_NOT_FOUND";
      await rejectsWith(alpha.t.createPushConfig(secretConfig(taskId)), Code.NotFound, reason);
      await rejectsWith(alpha.t.getPushConfig({ taskId, id: "x" }), Code.NotFound, reason);
      await rejectsWith(alpha.t.listPushConfigs({ taskId }), Code.NotFound, reason);
      await rejectsWith(alpha.t.deletePushConfig({ taskId, id: "x" }), Code.NotFound, reason);
    });

    it("deletes a task's configs with the task", async () => {
      const taskId = await newTask(alpha.t);
      await alpha.t.createPushConfig(secretConfig(taskId));
      await alpha.t.createPushConfig(secretConfig(taskId));
      assert.equal((await rowsOfTask(server.app, "alpha", taskId)).length, 2);
      await alpha.t.deleteTask({ id: taskId });
      assert.equal((await rowsOfTask(server.app, "alpha", taskId)).length, 0);
      // The id starts a new task, without the old configs.
      await alpha.t.saveTask({ task: { id: taskId, status: { state: TaskState.SUBMITTED } } });
      assert.deepEqual((await alpha.t.listPushConfigs({ taskId })).configs, []);
    });

    it("hides a task's configs when it expires and sweeps them with it", async () => {
      const taskId = await newTask(alpha.t, 400);
      await alpha.t.createPushConfig(secretConfig(taskId, "p"));
      await eventually(async () => {
        await rejectsWith(alpha.t.listPushConfigs({ taskId }), Code.NotFound, "A2A_TASK_NOT_FOUND");
      });
      await rejectsWith(alpha.t.getPushConfig({ taskId, id: "p" }), Code.NotFound, "A2A_TASK_NOT_FOUND");
      await rejectsWith(alpha.t.createPushConfig(secretConfig(taskId)), Code.NotFound, "A2A_TASK_NOT_FOUND");
      await eventually(async () => assert.equal((await rowsOfTask(server.app, "alpha", taskId)).length, 0));
    });

    it("keeps tenants apart", async () => {
      const taskId = await newTask(alpha.t);
      await alpha.t.createPushConfig(secretConfig(taskId, "mine"));
      await rejectsWith(beta.t.getPushConfig({ taskId, id: "mine" }), Code.NotFound, "A2A_TASK_NOT_FOUND");
      await rejectsWith(beta.t.listPushConfigs({ taskId }), Code.NotFound, "A2A_TASK_NOT_FOUND");
      await rejectsWith(beta.t.deletePushConfig({ taskId, id: "mine" }), Code.NotFound, "A2A_TASK_NOT_FOUND");
      await rejectsWith(beta.t.createPushConfig(secretConfig(taskId)), Code.NotFound, "A2A_TASK_NOT_FOUND");
      // beta's task of the same id has configs of its own.
      await beta.t.saveTask({ task: { id: taskId, status: { state: TaskState.SUBMITTED } } });
      await beta.t.createPushConfig({ config: { taskId, id: "mine", url: "http://localhost/beta" } });
      assert.equal((await beta.t.getPushConfig({ taskId, id: "mine" })).config?.url, "http://localhost/beta");
      assert.equal(
        (await alpha.t.getPushConfig({ taskId, id: "mine" })).config?.url,
        "http://127.0.0.1:9/hook",
      );
    });

    it("stores token and credentials encrypted, never in plain text", async () => {
      const taskId = await newTask(alpha.t);
      const { config, token, credentials } = secretConfig(taskId, "sealed");
      await alpha.t.createPushConfig({ config });
      const [row] = await rowsOfTask(server.app, "alpha", taskId);
      assert.ok(row);
      assert.equal(row.key_id, "a");
      assert.match(row.token ?? "", /^v1:a:/);
      assert.match(row.credentials ?? "", /^v1:a:/);
      const everything = JSON.stringify(row);
      assert.ok(!everything.includes(token), "token in plain text");
      assert.ok(!everything.includes(credentials), "credentials in plain text");
      const base64 = (s: string) => Buffer.from(s).toString("base64");
      assert.ok(!everything.includes(base64(token)) && !everything.includes(base64(credentials)));
    });
  });

  describe(`push-config key rotation on ${backend.name}`, { skip: backend.skip }, () => {
    let db: TestDatabase;
    let server: TestServer | undefined;
    const start = async (keys: string) => {
      server = await startServer(db, {
        AGENTSTORE_API_KEYS: KEYS_ENV,
        AGENTSTORE_PUSH_CONFIG_KEYS: keys,
        AGENTSTORE_PUSH_ALLOW_PRIVATE_URLS: "true",
      });
      return { server, client: taskClient(server.url, KEYS.alpha) };
    };
    const stop = async (client: { close(): void }) => {
      client.close();
      await server?.close();
      server = undefined;
    };
    before(async () => {
      db = await backend.create();
    });
    after(async () => {
      await server?.close();
      await db?.drop();
    });

    it("reads old rows under a new key, writes new rows under it, and re-encrypts old rows", async () => {
      const one = await start(KEY_A);
      const taskId = await newTask(one.client.t);
      const old = secretConfig(taskId, "old");
      await one.client.t.createPushConfig({ config: old.config });
      await stop(one.client);

      const two = await start(`${KEY_A},${KEY_B}`);
      const readOld = (await two.client.t.getPushConfig({ taskId, id: "old" })).config;
      assert.equal(readOld?.token, old.token);
      assert.equal(readOld?.authentication?.credentials, old.credentials);
      const fresh = secretConfig(taskId, "new");
      await two.client.t.createPushConfig({ config: fresh.config });
      const keyIds = async () =>
        Object.fromEntries(
          (await rowsOfTask(two.server.app, "alpha", taskId)).map((r) => [
            r.id,
            [r.key_id, r.token?.split(":")[1]],
          ]),
        );
      assert.deepEqual(await keyIds(), { old: ["a", "a"], new: ["b", "b"] });
      await stop(two.client);

      const { stdout } = await run(process.execPath, ["src/main.ts", "reencrypt-push-configs"], {
        cwd: ROOT,
        env: {
          PATH: process.env.PATH ?? "",
          ...db.env,
          AGENTSTORE_PUSH_CONFIG_KEYS: `${KEY_A},${KEY_B}`,
          AGENTSTORE_LOG_LEVEL: "silent",
        },
      });
      assert.match(stdout, /re-encrypted 1 push configs under key 'b'/);

      // Key A is no longer needed.
      const three = await start(KEY_B);
      const rows = await rowsOfTask(three.server.app, "alpha", taskId);
      assert.deepEqual(rows.map((r) => r.key_id).sort(), ["b", "b"]);
      for (const r of rows) assert.ok(r.token?.startsWith("v1:b:") && r.credentials?.startsWith("v1:b:"));
      const after = (await three.client.t.listPushConfigs({ taskId })).configs;
      assert.deepEqual(
        after.map((c) => [c.id, c.token, c.authentication?.credentials]),
        [
          ["new", fresh.token, fresh.credentials],
          ["old", old.token, old.credentials],
        ],
      );
      await stop(three.client);
    });
  });
}

describe("push URLs on a server that refuses private addresses", () => {
  let db: TestDatabase;
  let server: TestServer;
  let alpha: ReturnType<typeof taskClient>;
  before(async () => {
    db = await pglite().create();
    server = await startServer(db, { AGENTSTORE_API_KEYS: KEYS_ENV });
    alpha = taskClient(server.url, KEYS.alpha);
  });
  after(async () => {
    alpha?.close();
    await server?.close();
    await db?.drop();
  });

  it("refuses loopback, private, link-local and metadata addresses at create time", async () => {
    const taskId = await newTask(alpha.t);
    for (const url of [
      "http://127.0.0.1/hook",
      "http://localhost:8080/hook",
      "http://169.254.169.254/latest/meta-data/",
      "https://10.0.0.1/hook",
      "http://192.168.1.1/",
      "http://172.16.5.4/",
      "http://[::1]/",
      "http://[::ffff:127.0.0.1]/",
      "http://[fe80::1]/",
      "http://[fd00::1]/",
      "http://0.0.0.0/",
      "http://[64:ff9b::a9fe:a9fe]/",
      "https://user:pass@93.184.216.34/hook",
      "ftp://example.com/",
      "not a url",
    ]) {
      const err = await rejectsWith(
        alpha.t.createPushConfig({ config: { taskId, url, token: "t0ken-never-echoed" } }),
        Code.InvalidArgument,
        "PUSH_URL_REFUSED",
      );
      assert.ok(!err.message.includes("t0ken-never-echoed"));
    }
    assert.deepEqual((await alpha.t.listPushConfigs({ taskId })).configs, []);
    // A public address passes (a literal: no lookup needed).
    await alpha.t.createPushConfig({ config: { taskId, url: "https://93.184.216.34/hook" } });
  });
});

describe("push-config secrets and settings", () => {
  it("opens values only under the key, row and field they were sealed for", () => {
    const a = new SecretBox([{ id: "a", key: randomBytes(32) }]);
    const sealed = a.seal("s3cret", "row-1");
    assert.equal(a.open(sealed, "row-1"), "s3cret");
    assert.throws(
      () => a.open(sealed, "row-2"),
      (e: Error) => !e.message.includes("s3cret"),
    );
    const other = new SecretBox([{ id: "a", key: randomBytes(32) }]);
    assert.throws(() => other.open(sealed, "row-1"));
    assert.equal(new SecretBox([]).open(new SecretBox([]).seal("p", "x"), "x"), "p");
  });

  it("refuses bad keys without echoing them", () => {
    const short = Buffer.from("too-short-key-material").toString("base64");
    const good = keyText();
    for (const keys of [`a:${short}`, `a:${good},a:${good}`, good]) {
      assert.throws(
        () =>
          loadConfig(["migrate"], { AGENTSTORE_PUSH_CONFIG_KEYS: keys, AGENTSTORE_DATA_DIR: "memory://" }),
        (e: Error) => e instanceof ConfigError && !e.message.includes(short) && !e.message.includes(good),
      );
    }
  });

  it("classifies addresses, IPv4-mapped and IPv4-carrying IPv6 forms included", () => {
    for (const a of [
      "127.0.0.1",
      "10.1.2.3",
      "169.254.169.254",
      "::1",
      "::ffff:10.0.0.1",
      "fe80::1",
      "fc00::1",
      "::",
      // IPv6 forms that carry an IPv4 address: 169.254.169.254 through NAT64, 6to4 and the old
      // IPv4-compatible form.
      "64:ff9b::a9fe:a9fe",
      "64:ff9b:1::a9fe:a9fe",
      "2002:a9fe:a9fe::1",
      "::a9fe:a9fe",
      "fec0::1",
    ]) {
      assert.ok(isRefusedAddress(a), a);
    }
    for (const a of ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34"]) {
      assert.ok(!isRefusedAddress(a), a);
    }
  });
});
