import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, MultitaskStrategy, RunStatus } from "../src/client/index.ts";
import { rejectsWith } from "./helpers/assertions.ts";
import { backends } from "./helpers/databases.ts";
import { useServer } from "./helpers/servers.ts";

const usage = (total: number, model = 0) => ({
  inputTokens: BigInt(total - 10),
  outputTokens: 10n,
  totalTokens: BigInt(total),
  llmCallCount: 2n,
  leadAgentTokens: BigInt(total - model),
  subagentTokens: BigInt(model),
  middlewareTokens: 0n,
});

for (const backend of await backends()) {
  describe(`runs on ${backend.name}`, { skip: backend.skip }, () => {
    const fx = useServer(backend);

    it("creates a pending run and reads it back", async () => {
      const { run } = await fx.client.runs.createRun({
        run: {
          threadId: `t-${randomUUID()}`,
          sessionId: "s-1",
          assistantId: "a-1",
          userId: "u-1",
          project: "p",
          modelName: "m-1",
          backendProfile: "codex",
          metadata: { title: "hello", nested: { n: 1 } },
          input: { prompt: "do it" },
        },
      });
      assert.ok(run);
      assert.equal(run.status, RunStatus.PENDING);
      assert.equal(run.multitaskStrategy, MultitaskStrategy.REJECT);
      assert.deepEqual(run.metadata, { title: "hello", nested: { n: 1 } });
      assert.equal(run.lastEventSeq, 0n);
      const { run: read } = await fx.client.runs.getRun({ runId: run.runId });
      assert.deepEqual(read, run);
    });

    it("an unknown run is NOT_FOUND", async () => {
      await rejectsWith(fx.client.runs.getRun({ runId: randomUUID() }), Code.NotFound, "RUN_NOT_FOUND");
    });

    it("CreateRun is idempotent by request_id, and a reused id with another run is ALREADY_EXISTS", async () => {
      const requestId = randomUUID();
      const body = { threadId: `t-${randomUUID()}`, metadata: { a: 1, b: [1, 2] } };
      const first = await fx.client.runs.createRun({ run: body, requestId });
      const second = await fx.client.runs.createRun({
        run: { ...body, metadata: { b: [1, 2], a: 1 } },
        requestId,
      });
      assert.equal(second.run?.runId, first.run?.runId);
      await rejectsWith(
        fx.client.runs.createRun({ run: { ...body, metadata: { a: 2 } }, requestId }),
        Code.AlreadyExists,
        "REQUEST_ID_REUSED",
      );
    });

    it("racing creates with one request_id make one run", async () => {
      const requestId = randomUUID();
      const threadId = `t-${randomUUID()}`;
      const results = await Promise.all(
        Array.from({ length: 12 }, () => fx.client.runs.createRun({ run: { threadId }, requestId })),
      );
      assert.equal(new Set(results.map((r) => r.run?.runId)).size, 1);
      const { runs } = await fx.client.runs.listRuns({ threadId });
      assert.equal(runs.length, 1);
    });

    it("multitask REJECT refuses a second active run on a thread, even when creates race", async () => {
      const threadId = `t-${randomUUID()}`;
      const outcomes = await Promise.allSettled(
        Array.from({ length: 10 }, () => fx.client.runs.createRun({ run: { threadId } })),
      );
      assert.equal(outcomes.filter((o) => o.status === "fulfilled").length, 1);
      for (const o of outcomes) {
        if (o.status === "rejected")
          await rejectsWith(Promise.reject(o.reason), Code.FailedPrecondition, "THREAD_BUSY");
      }
    });

    it("multitask ENQUEUE adds a pending run beside the active one", async () => {
      const threadId = `t-${randomUUID()}`;
      await fx.client.runs.createRun({ run: { threadId } });
      const { run } = await fx.client.runs.createRun({
        run: { threadId, multitaskStrategy: MultitaskStrategy.ENQUEUE },
      });
      assert.equal(run?.status, RunStatus.PENDING);
      const { runs } = await fx.client.runs.listRuns({ threadId, status: RunStatus.PENDING });
      assert.equal(runs.length, 2);
    });

    it("multitask INTERRUPT cancels the active runs and publishes their terminal events", async () => {
      const threadId = `t-${randomUUID()}`;
      const { run: old } = await fx.client.runs.createRun({ run: { threadId } });
      assert.ok(old);
      await fx.client.runs.appendRunEvents({
        runId: old.runId,
        events: [{ type: "assistant_message", payload: {} }],
      });
      const { run: fresh } = await fx.client.runs.createRun({
        run: { threadId, multitaskStrategy: MultitaskStrategy.INTERRUPT },
      });
      const { run: interrupted } = await fx.client.runs.getRun({ runId: old.runId });
      assert.equal(interrupted?.status, RunStatus.CANCELLED);
      assert.equal(interrupted?.failureKind, "interrupted");
      assert.match(interrupted?.failureMessage ?? "", new RegExp(fresh?.runId ?? "none"));
      const { events } = await fx.client.runs.listRunEvents({ runId: old.runId });
      assert.deepEqual(
        events.map((e) => [e.seq, e.type]),
        [
          [1n, "assistant_message"],
          [2n, "terminal_status"],
        ],
      );
      assert.equal(fresh?.status, RunStatus.PENDING);
    });

    it("the first terminal status wins and later ones say they changed nothing", async () => {
      const { run } = await fx.client.runs.createRun({ run: {} });
      assert.ok(run);
      const done = await fx.client.runs.finishRun({
        runId: run.runId,
        status: RunStatus.COMPLETED,
        usage: usage(100),
        messageCount: 4n,
        lastAiMessage: "bye",
      });
      assert.equal(done.changed, true);
      assert.equal(done.run?.status, RunStatus.COMPLETED);
      assert.equal(done.run?.usage?.totalTokens, 100n);
      assert.equal(done.run?.lastAiMessage, "bye");
      assert.ok(done.run?.finishTime);
      const again = await fx.client.runs.finishRun({
        runId: run.runId,
        status: RunStatus.FAILED,
        failureKind: "x",
      });
      assert.equal(again.changed, false);
      assert.equal(again.run?.status, RunStatus.COMPLETED);
      const cancelled = await fx.client.runs.cancelRun({ runId: run.runId });
      assert.equal(cancelled.changed, false);
      const { events } = await fx.client.runs.listRunEvents({ runId: run.runId });
      assert.deepEqual(
        events.map((e) => [e.type, e.payload?.status]),
        [["terminal_status", "completed"]],
      );
    });

    it("racing terminal writes: exactly one wins and exactly one terminal event is written", async () => {
      const { run } = await fx.client.runs.createRun({ run: {} });
      assert.ok(run);
      const statuses = [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.BLOCKED, RunStatus.CANCELLED];
      const results = await Promise.all(
        Array.from({ length: 16 }, (_, i) =>
          i % 5 === 4
            ? fx.client.runs.cancelRun({ runId: run.runId, reason: "race" })
            : fx.client.runs.finishRun({ runId: run.runId, status: statuses[i % 4] ?? RunStatus.FAILED }),
        ),
      );
      assert.equal(results.filter((r) => r.changed).length, 1);
      const winner = results.find((r) => r.changed)?.run?.status;
      for (const r of results) assert.equal(r.run?.status, winner);
      const { events } = await fx.client.runs.listRunEvents({ runId: run.runId });
      assert.equal(events.filter((e) => e.type === "terminal_status").length, 1);
    });

    it("CancelRun cancels an active run with its reason, then appends are FAILED_PRECONDITION", async () => {
      const { run } = await fx.client.runs.createRun({ run: {} });
      assert.ok(run);
      const res = await fx.client.runs.cancelRun({ runId: run.runId, reason: "user pressed stop" });
      assert.equal(res.changed, true);
      assert.equal(res.run?.status, RunStatus.CANCELLED);
      assert.equal(res.run?.failureMessage, "user pressed stop");
      await rejectsWith(
        fx.client.runs.appendRunEvents({ runId: run.runId, events: [{ type: "diff", payload: {} }] }),
        Code.FailedPrecondition,
        "RUN_TERMINAL",
      );
      await rejectsWith(
        fx.client.runs.updateRunProgress({ runId: run.runId, messageCount: 1n }),
        Code.FailedPrecondition,
        "RUN_TERMINAL",
      );
    });

    it("DeleteRun refuses an active run, deletes a terminal one with its events, and honours allow_missing", async () => {
      const { run } = await fx.client.runs.createRun({ run: {} });
      assert.ok(run);
      await fx.client.runs.appendRunEvents({ runId: run.runId, events: [{ type: "diff", payload: {} }] });
      await rejectsWith(
        fx.client.runs.deleteRun({ runId: run.runId }),
        Code.FailedPrecondition,
        "RUN_ACTIVE",
      );
      await fx.client.runs.cancelRun({ runId: run.runId });
      await fx.client.runs.deleteRun({ runId: run.runId });
      await rejectsWith(fx.client.runs.getRun({ runId: run.runId }), Code.NotFound, "RUN_NOT_FOUND");
      await rejectsWith(fx.client.runs.listRunEvents({ runId: run.runId }), Code.NotFound, "RUN_NOT_FOUND");
      await rejectsWith(fx.client.runs.deleteRun({ runId: run.runId }), Code.NotFound, "RUN_NOT_FOUND");
      await fx.client.runs.deleteRun({ runId: run.runId, allowMissing: true });
    });

    it("ListRuns filters by thread, session, user and status and pages without gaps or repeats", async () => {
      const threadId = `t-${randomUUID()}`;
      const created: string[] = [];
      for (let i = 0; i < 7; i++) {
        const { run } = await fx.client.runs.createRun({
          run: {
            threadId,
            sessionId: i % 2 === 0 ? "even" : "odd",
            userId: `user-${i % 3}`,
            multitaskStrategy: MultitaskStrategy.ENQUEUE,
          },
        });
        created.push(run?.runId ?? "");
      }
      await fx.client.runs.finishRun({ runId: created[0] ?? "", status: RunStatus.COMPLETED });

      const seen: string[] = [];
      let pageToken = "";
      let pages = 0;
      do {
        const page = await fx.client.runs.listRuns({ threadId, pageSize: 3, pageToken });
        seen.push(...page.runs.map((r) => r.runId));
        pageToken = page.nextPageToken;
        pages++;
      } while (pageToken !== "");
      assert.equal(pages, 3);
      assert.deepEqual(seen, [...created].reverse(), "newest first, each run once");

      const bySession = await fx.client.runs.listRuns({ threadId, sessionId: "even" });
      assert.deepEqual(bySession.runs.map((r) => r.runId).sort(), [0, 2, 4, 6].map((i) => created[i]).sort());
      const byUser = await fx.client.runs.listRuns({ threadId, userId: "user-1" });
      assert.deepEqual(byUser.runs.map((r) => r.runId).sort(), [1, 4].map((i) => created[i]).sort());
      const completed = await fx.client.runs.listRuns({ threadId, status: RunStatus.COMPLETED });
      assert.deepEqual(
        completed.runs.map((r) => r.runId),
        [created[0]],
      );

      const firstPage = await fx.client.runs.listRuns({ threadId, pageSize: 2 });
      await rejectsWith(
        fx.client.runs.listRuns({ threadId, sessionId: "odd", pageToken: firstPage.nextPageToken }),
        Code.InvalidArgument,
        "PAGE_TOKEN_MISMATCH",
      );
      await rejectsWith(
        fx.client.runs.listRuns({ pageToken: "garbage" }),
        Code.InvalidArgument,
        "INVALID_PAGE_TOKEN",
      );
    });

    it("UpdateRunProgress stores the snapshot and marks the run RUNNING", async () => {
      const { run } = await fx.client.runs.createRun({ run: { modelName: "small" } });
      assert.ok(run);
      const { run: progressed } = await fx.client.runs.updateRunProgress({
        runId: run.runId,
        usage: usage(50),
        messageCount: 3n,
        firstHumanMessage: "hi",
        modelName: "large",
      });
      assert.equal(progressed?.status, RunStatus.RUNNING);
      assert.equal(progressed?.usage?.totalTokens, 50n);
      assert.equal(progressed?.messageCount, 3n);
      assert.equal(progressed?.firstHumanMessage, "hi");
      assert.equal(progressed?.modelName, "large");
      assert.ok(progressed?.startTime);
      const { run: partial } = await fx.client.runs.updateRunProgress({
        runId: run.runId,
        lastAiMessage: "working",
      });
      assert.equal(partial?.usage?.totalTokens, 50n, "fields left out keep their value");
      assert.equal(partial?.firstHumanMessage, "hi");
      assert.equal(partial?.lastAiMessage, "working");
    });

    it("GetThreadUsage sums terminal runs by model and caller, and active ones on request", async () => {
      const threadId = `t-${randomUUID()}`;
      const make = async (modelName: string) =>
        (
          await fx.client.runs.createRun({
            run: { threadId, modelName, multitaskStrategy: MultitaskStrategy.ENQUEUE },
          })
        ).run?.runId ?? "";
      const a = await make("alpha");
      const b = await make("beta");
      const c = await make("alpha");
      await fx.client.runs.finishRun({ runId: a, status: RunStatus.COMPLETED, usage: usage(100, 30) });
      await fx.client.runs.finishRun({ runId: b, status: RunStatus.FAILED, usage: usage(40) });
      await fx.client.runs.updateRunProgress({ runId: c, usage: usage(25, 5) });

      const done = await fx.client.runs.getThreadUsage({ threadId });
      assert.equal(done.totalRuns, 2n);
      assert.equal(done.usage?.totalTokens, 140n);
      assert.equal(done.usage?.subagentTokens, 30n);
      assert.equal(done.usage?.leadAgentTokens, 110n);
      assert.equal(done.byModel.alpha?.totalTokens, 100n);
      assert.equal(done.byModel.beta?.runs, 1n);

      const all = await fx.client.runs.getThreadUsage({ threadId, includeActive: true });
      assert.equal(all.totalRuns, 3n);
      assert.equal(all.usage?.totalTokens, 165n);
      assert.equal(all.byModel.alpha?.runs, 2n);
      assert.equal(all.byModel.alpha?.totalTokens, 125n);
    });

    it("ListInflightRuns without created_before pages from one fixed cut-off", async () => {
      const threadId = `t-${randomUUID()}`;
      for (let i = 0; i < 3; i++) {
        await fx.client.runs.createRun({ run: { threadId, multitaskStrategy: MultitaskStrategy.ENQUEUE } });
      }
      const seen: string[] = [];
      let pageToken = "";
      let pages = 0;
      do {
        const page = await fx.client.runs.listInflightRuns({ pageSize: 1, pageToken });
        seen.push(...page.runs.map((r) => r.runId));
        pageToken = page.nextPageToken;
        // A run created after the first page is after the cut-off and must not appear.
        if (pages++ === 0)
          await fx.client.runs.createRun({ run: { threadId, multitaskStrategy: MultitaskStrategy.ENQUEUE } });
      } while (pageToken !== "");
      assert.equal(seen.length, new Set(seen).size);
      const { runs } = await fx.client.runs.listRuns({ threadId });
      const newest = runs[0]?.runId;
      assert.ok(!seen.includes(newest ?? ""), "the run created while paging is past the cut-off");
      assert.ok(runs.slice(1).every((r) => seen.includes(r.runId)));
    });

    it("racing creates with one request_id and no thread make one run", async () => {
      // Without a thread there is no thread lock: the unique index and the retry settle the race.
      const requestId = randomUUID();
      const sessionId = `s-${requestId}`;
      const results = await Promise.all(
        Array.from({ length: 12 }, () => fx.client.runs.createRun({ run: { sessionId }, requestId })),
      );
      assert.equal(new Set(results.map((r) => r.run?.runId)).size, 1);
      const { runs } = await fx.client.runs.listRuns({ sessionId });
      assert.equal(runs.length, 1);
    });

    it("run ids are accepted in upper case and answered in canonical lower case", async () => {
      const { run } = await fx.client.runs.createRun({ run: {} });
      const upper = run?.runId.toUpperCase() ?? "";
      const { run: read } = await fx.client.runs.getRun({ runId: upper });
      assert.equal(read?.runId, run?.runId);
      await fx.client.runs.appendRunEvents({ runId: upper, events: [{ type: "diff", payload: {} }] });
      const { events } = await fx.client.runs.listRunEvents({ runId: upper });
      assert.equal(events[0]?.runId, run?.runId);
    });

    it("ListInflightRuns returns active runs created before a time, oldest first, page by page", async () => {
      const threadId = `t-${randomUUID()}`;
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) {
        const { run } = await fx.client.runs.createRun({
          run: { threadId, multitaskStrategy: MultitaskStrategy.ENQUEUE },
        });
        ids.push(run?.runId ?? "");
      }
      await fx.client.runs.updateRunProgress({ runId: ids[1] ?? "", messageCount: 1n });
      await fx.client.runs.finishRun({ runId: ids[2] ?? "", status: RunStatus.COMPLETED });
      const cutoff = new Date(Date.now() + 1);
      await new Promise((resolve) => setTimeout(resolve, 5));
      await fx.client.runs.createRun({ run: { threadId, multitaskStrategy: MultitaskStrategy.ENQUEUE } });

      const seen: string[] = [];
      let pageToken = "";
      do {
        const page = await fx.client.runs.listInflightRuns({
          createdBefore: timestampFromDate(cutoff),
          pageSize: 2,
          pageToken,
        });
        seen.push(...page.runs.map((r) => r.runId));
        pageToken = page.nextPageToken;
      } while (pageToken !== "");
      const mine = seen.filter((id) => ids.includes(id));
      assert.deepEqual(
        mine,
        [ids[0], ids[1], ids[3], ids[4]],
        "pending and running, not terminal, oldest first",
      );
      assert.equal(seen.length, new Set(seen).size);
    });
  });
}
