import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { createClient as createConnectClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../gen/grpc/health/v1/health_pb.ts";
import { Code, createClient } from "../src/client/index.ts";
import { eventually, rejectsWith } from "./helpers/assertions.ts";
import { pglite, postgres, type TestDatabase } from "./helpers/databases.ts";
import { startServer, type TestServer } from "./helpers/servers.ts";
import { startTcpProxy, type TcpProxy } from "./helpers/tcp-proxy.ts";

const healthClient = (url: string) => createConnectClient(Health, createGrpcTransport({ baseUrl: url }));

describe("health on pglite", () => {
  let db: TestDatabase;
  let server: TestServer;
  before(async () => {
    db = await pglite().create();
    server = await startServer(db);
  });
  after(async () => {
    await server?.close();
    await db?.drop();
  });

  it("answers SERVING for the server and for every mounted service, NOT_FOUND for other services", async () => {
    const health = healthClient(server.url);
    assert.equal((await health.check({ service: "" })).status, Status.SERVING);
    assert.equal((await health.check({ service: "agentstore.v1.RunService" })).status, Status.SERVING);
    await rejectsWith(health.check({ service: "nope.Service" }), Code.NotFound, "SERVICE_UNKNOWN");
    const { statuses } = await health.list({});
    assert.equal((await health.check({ service: "agentstore.v1.RunnerService" })).status, Status.SERVING);
    assert.equal((await health.check({ service: "agentstore.v1.SessionService" })).status, Status.SERVING);
    assert.equal((await health.check({ service: "agentstore.v1.QueueService" })).status, Status.SERVING);
    assert.equal((await health.check({ service: "agentstore.v1.TaskService" })).status, Status.SERVING);
    assert.deepEqual(Object.keys(statuses).sort(), [
      "",
      "agentstore.v1.QueueService",
      "agentstore.v1.RunService",
      "agentstore.v1.RunnerService",
      "agentstore.v1.SessionService",
      "agentstore.v1.TaskService",
    ]);
    const watch = health.watch({ service: "nope.Service" })[Symbol.asyncIterator]();
    assert.equal((await watch.next()).value?.status, Status.SERVICE_UNKNOWN);
  });
});

const pg = await postgres();
describe("health on postgres when the database goes away", { skip: pg.skip }, () => {
  let db: TestDatabase;
  let proxy: TcpProxy;
  let server: TestServer;
  before(async () => {
    db = await pg.create();
    const direct = new URL(db.url ?? "");
    proxy = await startTcpProxy({ host: direct.hostname, port: Number(direct.port || 5432) });
    const viaProxy = new URL(direct);
    viaProxy.port = String(proxy.port);
    server = await startServer(db, { DATABASE_URL: viaProxy.toString() });
  });
  after(async () => {
    // Known defect, not hidden: about one close in six after these cuts never finishes (seen in
    // CI and reproduced alone, not yet traced; the server has no client-side query timeout, so a
    // statement on a connection cut mid-flight may wait forever). Bounded here so the suite ends;
    // the close is left to finish or not.
    const closing = server?.close();
    const bounded = await Promise.race([
      closing?.then(() => "closed"),
      new Promise((resolve) => setTimeout(resolve, 20_000, "timed out").unref()),
    ]);
    if (bounded !== "closed")
      console.error("health.test.ts: server.close() after the proxy cuts did not finish in 20 s");
    await proxy?.close();
    await db?.drop();
  });

  it("goes NOT_SERVING while PostgreSQL is unreachable and back to SERVING by itself", async () => {
    const health = healthClient(server.url);
    const client = createClient({ baseUrl: server.url });
    const watched: Status[] = [];
    const controller = new AbortController();
    const watching = (async () => {
      for await (const res of health.watch({ service: "" }, { signal: controller.signal }))
        watched.push(res.status);
    })().catch(() => {});
    try {
      const { run } = await client.runs.createRun({ run: {} });
      assert.equal((await health.check({ service: "" })).status, Status.SERVING);

      await proxy.cut();
      await eventually(async () =>
        assert.equal(
          (await health.check({ service: "agentstore.v1.RunService" })).status,
          Status.NOT_SERVING,
        ),
      );
      await rejectsWith(
        client.runs.getRun({ runId: run?.runId ?? "" }),
        Code.Unavailable,
        "DATABASE_UNAVAILABLE",
      );

      await proxy.restore();
      await eventually(async () =>
        assert.equal((await health.check({ service: "" })).status, Status.SERVING),
      );
      await eventually(async () => {
        const { run: again } = await client.runs.getRun({ runId: run?.runId ?? "" });
        assert.equal(again?.runId, run?.runId);
      });
      await eventually(() => assert.deepEqual(watched, [Status.SERVING, Status.NOT_SERVING, Status.SERVING]));
    } finally {
      controller.abort();
      await watching;
      client.close();
    }
  });

  it("a stream resumes live delivery after the change-feed connection comes back", async () => {
    const client = createClient({ baseUrl: server.url });
    try {
      const { run } = await client.runs.createRun({ run: {} });
      const runId = run?.runId ?? "";
      const seen: number[] = [];
      const following = (async () => {
        for await (const e of client.followRunEvents(runId)) seen.push(Number(e.seq));
      })();
      await client.runs.appendRunEvents({ runId, events: [{ type: "diff", payload: {} }] });
      await eventually(() => assert.deepEqual(seen, [1]));
      await proxy.cut();
      await proxy.restore();
      // Appended once the database is back; the stream must see it although the LISTEN
      // connection was cut and notifications sent meanwhile are lost.
      await eventually(async () => {
        await client.runs.appendRunEvents({ runId, events: [{ type: "diff", payload: {} }] });
      });
      await eventually(() => assert.deepEqual(seen, [1, 2]));
      await client.runs.finishRun({ runId, status: 4 });
      await following;
      assert.deepEqual(seen, [1, 2, 3]);
    } finally {
      client.close();
    }
  });
});
