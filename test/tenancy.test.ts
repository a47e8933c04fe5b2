import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type AgentStoreClient, Code, createClient, RunStatus } from "../src/client/index.ts";
import { collect, eventually, rejectsWith } from "./helpers/assertions.ts";
import { backends, type TestDatabase } from "./helpers/databases.ts";
import { errorReason, type GrpcError, grpcHealth, grpcRunService, unary } from "./helpers/grpc-js.ts";
import { API_KEYS_ENV, KEYS, startServer, type TestServer } from "./helpers/servers.ts";

for (const backend of await backends()) {
  describe(`tenant isolation on ${backend.name}`, { skip: backend.skip }, () => {
    let db: TestDatabase;
    let server: TestServer;
    let alpha: AgentStoreClient;
    let beta: AgentStoreClient;
    let runId: string;
    let finishedRunId: string;
    const threadId = "shared-thread-name";

    before(async () => {
      db = await backend.create();
      server = await startServer(db, { AGENTSTORE_API_KEYS: API_KEYS_ENV });
      alpha = createClient({ baseUrl: server.url, apiKey: KEYS.alpha });
      beta = createClient({ baseUrl: server.url, apiKey: KEYS.beta });
      runId =
        (await alpha.runs.createRun({ run: { threadId, userId: "u" }, requestId: "same-request" })).run
          ?.runId ?? "";
      await alpha.runs.appendRunEvents({ runId, events: [{ type: "diff", payload: { secret_plan: 1 } }] });
      await alpha.runs.updateRunProgress({ runId, usage: { totalTokens: 99n } });
      const other = (await alpha.runs.createRun({ run: {} })).run?.runId ?? "";
      await alpha.runs.finishRun({ runId: other, status: RunStatus.COMPLETED, usage: { totalTokens: 7n } });
      finishedRunId = other;
    });
    after(async () => {
      alpha?.close();
      beta?.close();
      await server?.close();
      await db?.drop();
    });

    it("another tenant's run is NOT_FOUND on every run RPC", async () => {
      const notFound = (call: Promise<unknown>) => rejectsWith(call, Code.NotFound, "RUN_NOT_FOUND");
      await notFound(beta.runs.getRun({ runId }));
      await notFound(beta.runs.cancelRun({ runId }));
      await notFound(beta.runs.deleteRun({ runId }));
      await notFound(beta.runs.deleteRun({ runId: finishedRunId }));
      await notFound(beta.runs.finishRun({ runId, status: RunStatus.FAILED }));
      await notFound(beta.runs.updateRunProgress({ runId, messageCount: 1n }));
      await notFound(beta.runs.appendRunEvents({ runId, events: [{ type: "diff", payload: {} }] }));
      await notFound(beta.runs.listRunEvents({ runId }));
      await notFound(collect(beta.runs.streamRunEvents({ runId })));
      // Nothing of alpha's changed.
      const { run } = await alpha.runs.getRun({ runId });
      assert.equal(run?.status, RunStatus.RUNNING);
      assert.equal(run?.lastEventSeq, 1n);
    });

    it("lists, usage and inflight runs show only the caller's tenant", async () => {
      assert.deepEqual((await beta.runs.listRuns({})).runs, []);
      assert.deepEqual((await beta.runs.listRuns({ threadId })).runs, []);
      assert.deepEqual(
        (
          await beta.runs.listInflightRuns({
            createdBefore: timestampFromDate(new Date(Date.now() + 60_000)),
          })
        ).runs,
        [],
      );
      const usage = await beta.runs.getThreadUsage({ threadId, includeActive: true });
      assert.equal(usage.totalRuns, 0n);
      assert.equal((await alpha.runs.getThreadUsage({ threadId, includeActive: true })).totalRuns, 1n);
      assert.equal((await alpha.runs.listRuns({})).runs.length, 2);
    });

    it("WatchRuns streams only the caller's runs, and page tokens do not cross tenants", async () => {
      const controller = new AbortController();
      const seen: string[] = [];
      const watching = (async () => {
        for await (const { run } of beta.runs.watchRuns({}, { signal: controller.signal })) {
          if (run !== undefined) seen.push(run.runId);
        }
      })().catch((err: unknown) => {
        if (!controller.signal.aborted) throw err;
      });
      const marker = (await beta.runs.createRun({ run: {} })).run?.runId ?? "";
      await alpha.runs.createRun({ run: {} });
      await eventually(() => assert.ok(seen.includes(marker)));
      const markerAgain = (await beta.runs.createRun({ run: {} })).run?.runId ?? "";
      await eventually(() => assert.ok(seen.includes(markerAgain)));
      controller.abort();
      await watching;
      const { runs: alphaRuns } = await alpha.runs.listRuns({});
      for (const run of alphaRuns) assert.ok(!seen.includes(run.runId), "no run of alpha reaches beta");

      const page = await alpha.runs.listRuns({ pageSize: 1 });
      assert.notEqual(page.nextPageToken, "");
      await rejectsWith(
        beta.runs.listRuns({ pageSize: 1, pageToken: page.nextPageToken }),
        Code.InvalidArgument,
        "INVALID_PAGE_TOKEN",
      );
    });

    it("runners, claims, commands and jobs of another tenant are NOT_FOUND or invisible", async () => {
      const runnerId = "shared-runner-name";
      await alpha.runners.registerRunner({ runnerId, labels: { team: "a" } });
      await alpha.runs.claimRun({ runId, runnerId });
      const { command } = await alpha.runs.createCommand({ runId, type: 1, payload: { prompt: "secret" } });
      const commandId = command?.commandId ?? "";
      await alpha.runners.recordRunnerJob({ runId, runnerId, jobName: "j", idempotencyKey: "k" });

      await rejectsWith(beta.runners.getRunner({ runnerId }), Code.NotFound, "RUNNER_NOT_FOUND");
      await rejectsWith(beta.runners.heartbeatRunner({ runnerId }), Code.NotFound, "RUNNER_NOT_FOUND");
      await rejectsWith(beta.runners.deregisterRunner({ runnerId }), Code.NotFound, "RUNNER_NOT_FOUND");
      assert.deepEqual((await beta.runners.listRunners({})).runners, []);
      // The same runner id in beta is beta's own runner; it still cannot reach alpha's run.
      await beta.runners.registerRunner({ runnerId });
      const notFound = (call: Promise<unknown>, reason: string) => rejectsWith(call, Code.NotFound, reason);
      await notFound(beta.runs.claimRun({ runId, runnerId }), "RUN_NOT_FOUND");
      await notFound(beta.runs.renewRunLease({ runId, runnerId }), "RUN_NOT_FOUND");
      await notFound(beta.runs.releaseRun({ runId, runnerId }), "RUN_NOT_FOUND");
      await notFound(beta.runs.createCommand({ runId, type: 1 }), "RUN_NOT_FOUND");
      await notFound(beta.runs.listCommands({ runId }), "RUN_NOT_FOUND");
      await notFound(beta.runs.getCommand({ commandId }), "COMMAND_NOT_FOUND");
      await notFound(beta.runs.ackCommand({ commandId }), "COMMAND_NOT_FOUND");
      await notFound(beta.runs.finishCommand({ commandId, state: 3 }), "COMMAND_NOT_FOUND");
      await notFound(beta.runs.cancelCommand({ commandId }), "COMMAND_NOT_FOUND");
      await notFound(collect(beta.runs.streamCommands({ runId, runnerId })), "RUN_NOT_FOUND");
      await notFound(beta.runners.recordRunnerJob({ runId, runnerId, jobName: "j" }), "RUN_NOT_FOUND");
      await notFound(beta.runners.listRunnerJobs({ runId }), "RUN_NOT_FOUND");
      const pendingOfAlpha = (await alpha.runs.createRun({ run: { assistantId: "only-alpha" } })).run?.runId;
      const { run: offered } = await beta.runs.claimNextRun({
        runnerId,
        filter: { assistantId: "only-alpha" },
      });
      assert.equal(offered, undefined, "beta's dispatch never offers alpha's pending runs");
      assert.equal((await alpha.runs.getRun({ runId: pendingOfAlpha ?? "" })).run?.status, RunStatus.PENDING);
      // Nothing of alpha's changed.
      assert.equal((await alpha.runs.getCommand({ commandId })).command?.state, 1);
      assert.equal((await alpha.runs.getRun({ runId })).run?.runnerId, runnerId);
    });

    it("the same request_id and thread in another tenant are independent", async () => {
      const { run } = await beta.runs.createRun({
        run: { threadId, userId: "u" },
        requestId: "same-request",
      });
      assert.notEqual(run?.runId, runId);
      assert.equal((await beta.runs.listRuns({ userId: "u" })).runs.length, 1);
    });

    it("calls without a key or with a wrong key are UNAUTHENTICATED", async () => {
      const anonymous = createClient({ baseUrl: server.url });
      const wrong = createClient({ baseUrl: server.url, apiKey: "not-a-key-0123456789" });
      try {
        await rejectsWith(anonymous.runs.getRun({ runId }), Code.Unauthenticated, "MISSING_API_KEY");
        await rejectsWith(wrong.runs.listRuns({}), Code.Unauthenticated, "INVALID_API_KEY");
        await rejectsWith(
          collect(wrong.runs.streamRunEvents({ runId })),
          Code.Unauthenticated,
          "INVALID_API_KEY",
        );
      } finally {
        anonymous.close();
        wrong.close();
      }
    });

    it("grpc-js callers are isolated the same way, and health needs no key", async () => {
      const grpcBeta = grpcRunService(server.app.port, KEYS.beta);
      const grpcAlpha = grpcRunService(server.app.port, KEYS.alpha);
      const grpcNone = grpcRunService(server.app.port);
      const health = grpcHealth(server.app.port);
      try {
        const denied = await unary(grpcBeta, "GetRun", { run_id: runId }).catch((e: GrpcError) => e);
        assert.equal((denied as GrpcError).code, Code.NotFound);
        assert.equal(errorReason(denied as GrpcError), "RUN_NOT_FOUND");
        const own = await unary<{ run: { run_id: string } }>(grpcAlpha, "GetRun", { run_id: runId });
        assert.equal(own.run.run_id, runId);
        const anonymous = await unary(grpcNone, "ListRuns", {}).catch((e: GrpcError) => e);
        assert.equal((anonymous as GrpcError).code, Code.Unauthenticated);
        const status = await unary<{ status: string }>(health, "Check", { service: "" });
        assert.equal(status.status, "SERVING");
      } finally {
        for (const c of [grpcBeta, grpcAlpha, grpcNone, health]) c.close();
      }
    });
  });
}
