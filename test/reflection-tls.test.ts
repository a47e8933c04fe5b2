import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { createClient } from "../src/client/index.ts";
import { pglite, type TestDatabase } from "./helpers/databases.ts";
import { API_KEYS_ENV, KEYS, ROOT, startServer, type TestServer } from "./helpers/servers.ts";

const run = promisify(execFile);
const BUF = join(ROOT, "node_modules/.bin/buf");

/** `buf curl` as a person would type it; resolves with stdout, or with stderr and the exit code. */
async function bufCurl(args: string[]): Promise<{ ok: boolean; out: string }> {
  try {
    const { stdout } = await run(BUF, ["curl", ...args], { timeout: 30_000 });
    return { ok: true, out: stdout };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return { ok: false, out: `${e.stdout ?? ""}${e.stderr ?? ""}` };
  }
}

describe("buf curl through server reflection", () => {
  let db: TestDatabase;
  let server: TestServer;
  before(async () => {
    db = await pglite().create();
    server = await startServer(db, { AGENTSTORE_API_KEYS: API_KEYS_ENV });
  });
  after(async () => {
    await server?.close();
    await db?.drop();
  });
  const h2c = ["--protocol", "grpc", "--http2-prior-knowledge"];
  const auth = ["-H", `Authorization: Bearer ${KEYS.alpha}`];

  it("checks health with no schema at hand", async () => {
    const res = await bufCurl([...h2c, `${server.url}/grpc.health.v1.Health/Check`]);
    assert.ok(res.ok, res.out);
    assert.deepEqual(JSON.parse(res.out), { status: "SERVING" });
  });

  it("lists services and methods through reflection v1 and v1alpha", async () => {
    for (const protocol of ["grpc-v1", "grpc-v1alpha"]) {
      const services = await bufCurl([...h2c, "--reflect-protocol", protocol, "--list-services", server.url]);
      assert.ok(services.ok, services.out);
      assert.deepEqual(services.out.trim().split("\n").sort(), [
        "agentstore.v1.QueueService",
        "agentstore.v1.RunService",
        "agentstore.v1.RunnerService",
        "agentstore.v1.SessionService",
        "agentstore.v1.TaskService",
        "grpc.health.v1.Health",
      ]);
    }
    const methods = await bufCurl([...h2c, "--list-methods", server.url]);
    assert.match(methods.out, /agentstore\.v1\.RunService\/StreamRunEvents/);
    assert.match(methods.out, /grpc\.health\.v1\.Health\/Watch/);
  });

  it("creates, appends, finishes and streams a run as JSON", async () => {
    const base = `${server.url}/agentstore.v1.RunService`;
    const created = await bufCurl([
      ...h2c,
      ...auth,
      "-d",
      '{"run":{"threadId":"curl","metadata":{"a":1}}}',
      `${base}/CreateRun`,
    ]);
    assert.ok(created.ok, created.out);
    const run = JSON.parse(created.out).run;
    assert.equal(run.status, "RUN_STATUS_PENDING");
    const appended = await bufCurl([
      ...h2c,
      ...auth,
      "-d",
      JSON.stringify({ runId: run.runId, events: [{ type: "assistant_message", payload: { text: "hi" } }] }),
      `${base}/AppendRunEvents`,
    ]);
    assert.equal(JSON.parse(appended.out).lastSeq, "1");
    await bufCurl([
      ...h2c,
      ...auth,
      "-d",
      JSON.stringify({ runId: run.runId, status: "RUN_STATUS_COMPLETED" }),
      `${base}/FinishRun`,
    ]);
    const streamed = await bufCurl([
      ...h2c,
      ...auth,
      "-d",
      JSON.stringify({ runId: run.runId }),
      `${base}/StreamRunEvents`,
    ]);
    assert.ok(streamed.ok, streamed.out);
    assert.match(streamed.out, /"type": "assistant_message"/);
    assert.match(streamed.out, /"type": "terminal_status"/);
  });

  it("shows errors with their code and, over the Connect protocol, their decoded reason", async () => {
    const missing = await bufCurl([
      "--protocol",
      "connect",
      ...auth,
      "-d",
      '{"runId":"00000000-0000-7000-8000-000000000000"}',
      `${server.url}/agentstore.v1.RunService/GetRun`,
    ]);
    assert.equal(missing.ok, false);
    assert.match(missing.out, /not_found/);
    assert.match(missing.out, /RUN_NOT_FOUND/);
    const anonymous = await bufCurl([...h2c, "-d", "{}", `${server.url}/agentstore.v1.RunService/ListRuns`]);
    assert.match(anonymous.out, /unauthenticated/);
  });
});

describe("TLS", () => {
  let dir: string;
  let db: TestDatabase;
  let server: TestServer;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "agentstore-tls-"));
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=agentstore-test",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        join(dir, "key.pem"),
        "-out",
        join(dir, "cert.pem"),
      ],
      { stdio: "ignore" },
    );
    db = await pglite().create();
    server = await startServer(db, {
      AGENTSTORE_TLS_CERT: join(dir, "cert.pem"),
      AGENTSTORE_TLS_KEY: join(dir, "key.pem"),
    });
  });
  after(async () => {
    await server?.close();
    await db?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("serves gRPC over HTTP/2 and Connect over HTTP/1.1 on one TLS port", async () => {
    const url = `https://127.0.0.1:${server.app.port}`;
    const ca = readFileSync(join(dir, "cert.pem"));
    for (const protocol of ["grpc", "connect"] as const) {
      const client = createClient({ baseUrl: url, protocol, tls: { ca } });
      try {
        const { run } = await client.runs.createRun({ run: { threadId: `tls-${protocol}` } });
        const { run: read } = await client.runs.getRun({ runId: run?.runId ?? "" });
        assert.equal(read?.threadId, `tls-${protocol}`);
      } finally {
        client.close();
      }
    }
    const curl = await bufCurl([
      "--protocol",
      "grpc",
      "--cacert",
      join(dir, "cert.pem"),
      `${url}/grpc.health.v1.Health/Check`,
    ]);
    assert.ok(curl.ok, curl.out);
    assert.match(curl.out, /SERVING/);
  });
});
