import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type Duration, durationFromMs } from "@bufbuild/protobuf/wkt";
import pg from "pg";
import {
  type AgentStoreClient,
  Code,
  ConnectError,
  createClient,
  LeaseLostPolicy,
  MultitaskStrategy,
  type Run,
  type RunEvent,
  RunnerState,
  type RunSchema,
  RunStatus,
} from "../src/client/index.ts";
import { collect, eventually, range, reasonOf, rejectsWith } from "./helpers/assertions.ts";
import { backends } from "./helpers/databases.ts";
import { errorReason, type GrpcError, grpcRunnerService, grpcRunService, unary } from "./helpers/grpc-js.ts";
import { startServer, useServer } from "./helpers/servers.ts";

const lease = (ms: number): Duration => durationFromMs(ms);

/** The types of a run's log, in order. */
async function logTypes(client: AgentStoreClient, runId: string): Promise<string[]> {
  const { events } = await client.runs.listRunEvents({ runId, pageSize: 1000 });
  return events.map((e) => e.type);
}

async function logOf(client: AgentStoreClient, runId: string): Promise<RunEvent[]> {
  return (await client.runs.listRunEvents({ runId, pageSize: 1000 })).events;
}

for (const backend of await backends()) {
  describe(`runners, claims and leases on ${backend.name}`, { skip: backend.skip }, () => {
    // The dispatch safety poll is ten minutes away: a waiting claim is woken by the feed or not at all.
    const fx = useServer(backend, {
      AGENTSTORE_LEASE_GRACE_MS: "200",
      AGENTSTORE_LEASE_SWEEP_MS: "100",
      AGENTSTORE_DISPATCH_POLL_MS: "600000",
    });
    const waitingClaims = () => fx.server.app.gauges()["claims.waiting"] ?? 0;
    const register = async (labels: Record<string, string> = {}, runnerId = `r-${randomUUID()}`) =>
      (await fx.client.runners.registerRunner({ runnerId, labels, capabilities: ["shell"], version: "1.0" }))
        .runner?.runnerId ?? assert.fail("no runner");
    const newRun = async (init: MessageInitShape<typeof RunSchema> = {}) =>
      (await fx.client.runs.createRun({ run: init })).run ?? assert.fail("no run");

    it("registers runners (chosen or assigned ids), registers them again, gets and lists them", async () => {
      const project = `p-${randomUUID()}`;
      const { runner: assigned } = await fx.client.runners.registerRunner({ labels: { project } });
      assert.match(assigned?.runnerId ?? "", /^runner-/);
      const chosen = await register({ project, pool: "gpu" });
      const { runner: again } = await fx.client.runners.registerRunner({
        runnerId: chosen,
        labels: { project, pool: "cpu" },
        version: "2.0",
      });
      assert.equal(again?.labels.pool, "cpu");
      assert.equal(again?.version, "2.0");
      assert.equal(again?.state, RunnerState.LIVE);
      const { runner: got } = await fx.client.runners.getRunner({ runnerId: chosen });
      assert.equal(got?.labels.pool, "cpu");
      const { runners } = await fx.client.runners.listRunners({ labels: { project } });
      assert.deepEqual(
        runners.map((r) => r.runnerId),
        [assigned?.runnerId, chosen].sort(),
      );
      const page1 = await fx.client.runners.listRunners({ labels: { project }, pageSize: 1 });
      const page2 = await fx.client.runners.listRunners({
        labels: { project },
        pageSize: 1,
        pageToken: page1.nextPageToken,
      });
      assert.deepEqual(
        [...page1.runners, ...page2.runners].map((r) => r.runnerId),
        runners.map((r) => r.runnerId),
      );
      await rejectsWith(
        fx.client.runners.getRunner({ runnerId: "nobody" }),
        Code.NotFound,
        "RUNNER_NOT_FOUND",
      );
    });

    it("a runner that stops heartbeating turns STALE; a heartbeat makes it LIVE again", async () => {
      const project = `p-${randomUUID()}`;
      const runnerId = await register({ project });
      const staleAfter = lease(1_000);
      await eventually(async () => {
        const { runners } = await fx.client.runners.listRunners({
          labels: { project },
          staleAfter,
          state: RunnerState.STALE,
        });
        assert.deepEqual(
          runners.map((r) => r.runnerId),
          [runnerId],
        );
      }, 15_000);
      await fx.client.runners.heartbeatRunner({ runnerId });
      const { runners: live } = await fx.client.runners.listRunners({
        labels: { project },
        staleAfter,
        state: RunnerState.LIVE,
      });
      assert.deepEqual(
        live.map((r) => r.runnerId),
        [runnerId],
      );
      await rejectsWith(
        fx.client.runners.heartbeatRunner({ runnerId: "nobody" }),
        Code.NotFound,
        "RUNNER_NOT_FOUND",
      );
    });

    it("ClaimRun: one holder; another runner is RUN_LEASED with the holder; an expired lease is taken over", async () => {
      const [a, b] = [await register(), await register()];
      const run = await newRun();
      const { run: claimed, takeover } = await fx.client.runs.claimRun({
        runId: run.runId,
        runnerId: a,
        lease: lease(1_500),
      });
      assert.equal(claimed?.status, RunStatus.CLAIMED);
      assert.equal(claimed?.runnerId, a);
      assert.equal(takeover, false);
      const err = await rejectsWith(
        fx.client.runs.claimRun({ runId: run.runId, runnerId: b, lease: lease(1_000) }),
        Code.Aborted,
        "RUN_LEASED",
      );
      assert.match(err.message, new RegExp(`held by runner ${a}`));
      await rejectsWith(
        fx.client.runs.claimRun({ runId: run.runId, runnerId: "nobody" }),
        Code.NotFound,
        "RUNNER_NOT_FOUND",
      );
      // Once a's lease has run out (and before recovery, which waits the grace), b takes over.
      let taken: { run?: Run; takeover: boolean } | undefined;
      await eventually(async () => {
        taken = await fx.client.runs.claimRun({ runId: run.runId, runnerId: b, lease: lease(60_000) });
      }, 15_000);
      assert.equal(taken?.takeover, true);
      assert.equal(taken?.run?.runnerId, b);
      const claims = (await logOf(fx.client, run.runId)).filter((e) => e.type === "agentstore.claim");
      assert.deepEqual(
        claims.map((e) => [e.payload?.runner_id, e.payload?.takeover, e.payload?.previous_runner_id]),
        [
          [a, false, ""],
          [b, true, a],
        ],
      );
      const ended = await newRun();
      await fx.client.runs.finishRun({ runId: ended.runId, status: RunStatus.COMPLETED });
      await rejectsWith(
        fx.client.runs.claimRun({ runId: ended.runId, runnerId: a }),
        Code.FailedPrecondition,
        "RUN_TERMINAL",
      );
    });

    it("RenewRunLease extends only the holder's lease; ReleaseRun gives it back", async () => {
      const [a, b] = [await register(), await register()];
      const run = await newRun({ leaseLostPolicy: LeaseLostPolicy.REQUEUE });
      const { run: claimed } = await fx.client.runs.claimRun({
        runId: run.runId,
        runnerId: a,
        lease: lease(60_000),
      });
      await rejectsWith(
        fx.client.runs.renewRunLease({ runId: run.runId, runnerId: b, lease: lease(60_000) }),
        Code.FailedPrecondition,
        "NOT_LEASE_HOLDER",
      );
      const { run: renewed } = await fx.client.runs.renewRunLease({
        runId: run.runId,
        runnerId: a,
        lease: lease(120_000),
      });
      assert.ok((renewed?.leaseExpireTime?.seconds ?? 0n) > (claimed?.leaseExpireTime?.seconds ?? 0n));
      await rejectsWith(
        fx.client.runs.releaseRun({ runId: run.runId, runnerId: b }),
        Code.FailedPrecondition,
        "NOT_LEASE_HOLDER",
      );
      const { run: released } = await fx.client.runs.releaseRun({
        runId: run.runId,
        runnerId: a,
        reason: "done for now",
      });
      assert.equal(released?.status, RunStatus.PENDING);
      assert.equal(released?.runnerId, "");
      await rejectsWith(
        fx.client.runs.renewRunLease({ runId: run.runId, runnerId: a }),
        Code.FailedPrecondition,
        "NOT_LEASE_HOLDER",
      );

      assert.deepEqual(
        (await logTypes(fx.client, run.runId)).filter((t) => t.startsWith("agentstore.")),
        ["agentstore.claim", "agentstore.release"],
      );
    });

    it("ClaimNextRun takes the oldest matching pending run, in thread order, and waits when there is none", async () => {
      const runner = await register();
      const assistantId = `asst-${randomUUID()}`;
      const threadId = `t-${randomUUID()}`;
      const other = await newRun({ assistantId: "someone-else" });
      const first = await newRun({ assistantId, threadId, labels: { gpu: "yes" } });
      const queued = await newRun({
        assistantId,
        threadId,
        multitaskStrategy: MultitaskStrategy.ENQUEUE,
        labels: { gpu: "yes" },
      });
      const filter = { assistantId, labels: { gpu: "yes" } };
      const { run: got } = await fx.client.runs.claimNextRun({
        runnerId: runner,
        filter,
        lease: lease(60_000),
      });
      assert.equal(got?.runId, first.runId);
      // The second run of the thread waits while the first is active.
      const { run: none } = await fx.client.runs.claimNextRun({ runnerId: runner, filter });
      assert.equal(none, undefined);
      await fx.client.runs.finishRun({ runId: first.runId, status: RunStatus.COMPLETED });
      const { run: next } = await fx.client.runs.claimNextRun({ runnerId: runner, filter });
      assert.equal(next?.runId, queued.runId);
      assert.notEqual(next?.runId, other.runId);
      const { run: noLabel } = await fx.client.runs.claimNextRun({
        runnerId: runner,
        filter: { assistantId, labels: { gpu: "no" } },
      });
      assert.equal(noLabel, undefined);

      // A waiting claim is woken by a run created after it started waiting (the poll is 10 min off).
      const waitFor = `asst-${randomUUID()}`;
      const waiting = fx.client.runs.claimNextRun({
        runnerId: runner,
        filter: { assistantId: waitFor },
        lease: lease(60_000),
        wait: lease(120_000),
      });
      await eventually(() => assert.equal(waitingClaims(), 1));
      const created = await newRun({ assistantId: waitFor });
      const { run: woken } = await waiting;
      assert.equal(woken?.runId, created.runId);
      // A wait that ends empty answers with no run.
      const { run: empty } = await fx.client.runs.claimNextRun({
        runnerId: runner,
        filter: { assistantId: waitFor },
        wait: lease(300),
      });
      assert.equal(empty, undefined);

      // A run queued behind an active run of its thread can be claimed neither next nor by id; the
      // end of the run ahead wakes a claim waiting for it.
      const queuedFor = `q-${randomUUID()}`;
      const thread = `t-${randomUUID()}`;
      const head = await newRun({ threadId: thread, assistantId: queuedFor });
      await fx.client.runs.claimRun({ runId: head.runId, runnerId: runner, lease: lease(60_000) });
      const behind = await newRun({
        threadId: thread,
        assistantId: queuedFor,
        multitaskStrategy: MultitaskStrategy.ENQUEUE,
      });
      await rejectsWith(
        fx.client.runs.claimRun({ runId: behind.runId, runnerId: runner }),
        Code.FailedPrecondition,
        "RUN_QUEUED",
      );
      const forBehind = fx.client.runs.claimNextRun({
        runnerId: runner,
        filter: { assistantId: queuedFor },
        lease: lease(60_000),
        wait: lease(120_000),
      });
      await eventually(() => assert.equal(waitingClaims(), 1));
      await fx.client.runs.finishRun({ runId: head.runId, status: RunStatus.COMPLETED });
      assert.equal((await forBehind).run?.runId, behind.runId);
    });

    it("ClaimNextRun with a request id: a retry gets the run the first call claimed", async () => {
      const runner = await register();
      const assistantId = `retry-${randomUUID()}`;
      await newRun({ assistantId });
      await newRun({ assistantId });
      const requestId = randomUUID();
      const first = await fx.client.runs.claimNextRun({
        runnerId: runner,
        filter: { assistantId },
        requestId,
      });
      const retried = await fx.client.runs.claimNextRun({
        runnerId: runner,
        filter: { assistantId },
        requestId,
      });
      assert.equal(retried.run?.runId, first.run?.runId);
      const other = await fx.client.runs.claimNextRun({
        runnerId: runner,
        filter: { assistantId },
        requestId: randomUUID(),
      });
      assert.notEqual(other.run?.runId, first.run?.runId);
      assert.notEqual(other.run, undefined);
    });

    it("writes fenced to a runner fail once another runner holds the run", async () => {
      const [a, b] = [await register(), await register()];
      const run = await newRun();
      await fx.client.runs.claimRun({ runId: run.runId, runnerId: a, lease: lease(60_000) });
      await fx.client.runs.appendRunEvents({ runId: run.runId, runnerId: a, events: [{ type: "x" }] });
      await fx.client.runs.updateRunProgress({ runId: run.runId, runnerId: a, messageCount: 1n });
      const notHolder = (call: Promise<unknown>) =>
        rejectsWith(call, Code.FailedPrecondition, "NOT_LEASE_HOLDER");
      await notHolder(
        fx.client.runs.appendRunEvents({ runId: run.runId, runnerId: b, events: [{ type: "x" }] }),
      );
      await notHolder(fx.client.runs.updateRunProgress({ runId: run.runId, runnerId: b, messageCount: 2n }));
      await notHolder(
        fx.client.runs.finishRun({ runId: run.runId, runnerId: b, status: RunStatus.COMPLETED }),
      );
      const { run: still } = await fx.client.runs.getRun({ runId: run.runId });
      assert.equal(still?.messageCount, 1n, "the fenced-out writes changed nothing");
      assert.equal(still?.status, RunStatus.RUNNING);
      const { changed } = await fx.client.runs.finishRun({
        runId: run.runId,
        runnerId: a,
        status: RunStatus.COMPLETED,
      });
      assert.equal(changed, true);
    });

    it("a timely heartbeat writes no late-renewal event", async () => {
      const runnerId = await register();
      const run = await newRun();
      await fx.client.runs.claimRun({ runId: run.runId, runnerId, lease: lease(60_000) });
      await fx.client.runners.heartbeatRunner({ runnerId, lease: lease(60_000) });
      assert.ok(!(await logTypes(fx.client, run.runId)).includes("agentstore.lease_renewed_late"));
    });

    it("64 runners racing ClaimRun on one run: exactly one holds it", async () => {
      const runners = await Promise.all(range(1, 64).map(() => register()));
      const run = await newRun();
      const outcomes = await Promise.all(
        runners.map((runnerId) =>
          fx.client.runs.claimRun({ runId: run.runId, runnerId, lease: lease(60_000) }).then(
            (res) => res.run?.runnerId ?? "",
            (err: unknown) => reasonOf(err) ?? ConnectError.from(err).message,
          ),
        ),
      );
      const winners = outcomes.filter((o) => runners.includes(o));
      assert.equal(
        winners.length,
        1,
        `one winner, got ${JSON.stringify(outcomes.filter((o) => !o.startsWith("RUN_")))}`,
      );
      assert.deepEqual(new Set(outcomes.filter((o) => !runners.includes(o))), new Set(["RUN_LEASED"]));
      const { run: held } = await fx.client.runs.getRun({ runId: run.runId });
      assert.equal(held?.runnerId, winners[0]);
    });

    it("64 runners racing ClaimNextRun over 1,000 runs: every run claimed once, never by two", async () => {
      const assistantId = `race-${randomUUID()}`;
      const created = new Set<string>();
      for (const batch of range(1, 20)) {
        const runs = await Promise.all(range(1, 50).map(() => newRun({ assistantId, metadata: { batch } })));
        for (const r of runs) created.add(r.runId);
      }
      const runners = await Promise.all(range(1, 64).map(() => register()));
      const claims = new Map<string, string[]>();
      await Promise.all(
        runners.map(async (runnerId) => {
          for (;;) {
            const { run } = await fx.client.runs.claimNextRun({
              runnerId,
              filter: { assistantId },
              lease: lease(120_000),
            });
            if (run === undefined) return;
            claims.set(run.runId, [...(claims.get(run.runId) ?? []), runnerId]);
          }
        }),
      );
      assert.equal(claims.size, 1_000, "every run was claimed");
      for (const [runId, by] of claims) {
        assert.ok(created.has(runId));
        assert.equal(by.length, 1, `run ${runId} claimed by ${by.join(", ")}`);
      }
      const held = new Set<string>();
      let pageToken = "";
      do {
        const page = await fx.client.runs.listRuns({ status: RunStatus.CLAIMED, pageSize: 500, pageToken });
        for (const r of page.runs)
          if (created.has(r.runId)) {
            held.add(r.runId);
            assert.deepEqual([r.runnerId], claims.get(r.runId), "the database agrees on the holder");
          }
        pageToken = page.nextPageToken;
      } while (pageToken !== "");
      assert.equal(held.size, 1_000);
    });

    it("a silent runner loses its runs after lease + grace: FAIL ends the run (and its streams), REQUEUE frees it", async () => {
      const [silent, rescuer] = [await register(), await register()];
      const failing = await newRun({ leaseLostPolicy: LeaseLostPolicy.FAIL });
      const requeued = await newRun({ leaseLostPolicy: LeaseLostPolicy.REQUEUE });
      await fx.client.runs.claimRun({ runId: failing.runId, runnerId: silent, lease: lease(1_000) });
      await fx.client.runs.claimRun({ runId: requeued.runId, runnerId: silent, lease: lease(1_000) });
      await fx.client.runs.appendRunEvents({
        runId: failing.runId,
        events: [{ type: "progress", payload: { step: 1 } }],
      });
      const stream = collect(fx.client.runs.streamRunEvents({ runId: failing.runId }));
      const events = await stream;
      const terminal = events.at(-1)?.event;
      assert.equal(terminal?.type, "terminal_status");
      assert.equal(terminal?.payload?.failure_kind, "runner_lost");
      const { run: failed } = await fx.client.runs.getRun({ runId: failing.runId });
      assert.equal(failed?.status, RunStatus.FAILED);
      assert.equal(failed?.failureKind, "runner_lost");
      await eventually(async () => {
        const { run } = await fx.client.runs.getRun({ runId: requeued.runId });
        assert.equal(run?.status, RunStatus.PENDING);
      }, 15_000);
      const { run: rescued } = await fx.client.runs.claimRun({
        runId: requeued.runId,
        runnerId: rescuer,
        lease: lease(60_000),
      });
      assert.equal(rescued?.runnerId, rescuer);
      const lost = (await logOf(fx.client, requeued.runId)).find((e) => e.type === "agentstore.lease_lost");
      assert.equal(lost?.payload?.runner_id, silent);
      assert.equal(lost?.payload?.policy, "requeue");
    });

    it("heartbeats with a lease keep a runner's runs; deregistering releases them at once", async () => {
      const runnerId = await register();
      const runs = [await newRun(), await newRun()];
      for (const run of runs)
        await fx.client.runs.claimRun({ runId: run.runId, runnerId, lease: lease(2_000) });
      // A runner's heartbeat loop, well inside the lease, for twice its length: the runs stay held.
      const until = Date.now() + 4_000;
      while (Date.now() < until) {
        const { renewedRunCount } = await fx.client.runners.heartbeatRunner({
          runnerId,
          lease: lease(2_000),
        });
        assert.equal(renewedRunCount, 2n);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
      for (const run of runs) {
        const { run: held } = await fx.client.runs.getRun({ runId: run.runId });
        assert.equal(held?.runnerId, runnerId, "heartbeats kept the lease");
      }
      const { releasedRunCount } = await fx.client.runners.deregisterRunner({ runnerId });
      assert.equal(releasedRunCount, 2n);
      for (const run of runs) {
        const { run: free } = await fx.client.runs.getRun({ runId: run.runId });
        assert.equal(free?.status, RunStatus.PENDING);
        assert.ok((await logTypes(fx.client, run.runId)).includes("agentstore.release"));
      }
      await rejectsWith(fx.client.runners.getRunner({ runnerId }), Code.NotFound, "RUNNER_NOT_FOUND");
      await rejectsWith(fx.client.runners.deregisterRunner({ runnerId }), Code.NotFound, "RUNNER_NOT_FOUND");
      await fx.client.runners.deregisterRunner({ runnerId, allowMissing: true });
    });

    it("RecordRunnerJob is idempotent by key; ListRunnerJobs pages a run's jobs, by command too", async () => {
      const runnerId = await register();
      const run = await newRun();
      const job = {
        runId: run.runId,
        runnerId,
        namespace: "agents",
        jobName: "job-1",
        image: "img:1",
        result: { exit: 0 },
        idempotencyKey: "k-1",
      };
      const first = await fx.client.runners.recordRunnerJob(job);
      const again = await fx.client.runners.recordRunnerJob(job);
      assert.equal(again.job?.jobId, first.job?.jobId);
      await rejectsWith(
        fx.client.runners.recordRunnerJob({ ...job, result: { exit: 1 } }),
        Code.AlreadyExists,
        "IDEMPOTENCY_KEY_REUSED",
      );
      const { command } = await fx.client.runs.createCommand({
        runId: run.runId,
        type: 1,
        payload: { prompt: "hi" },
      });
      await fx.client.runners.recordRunnerJob({
        ...job,
        idempotencyKey: "",
        jobName: "job-2",
        commandId: command?.commandId,
      });
      await fx.client.runners.recordRunnerJob({ ...job, idempotencyKey: "", jobName: "job-3" });
      const all = await fx.client.runners.listRunnerJobs({ runId: run.runId });
      assert.deepEqual(
        all.jobs.map((j) => j.jobName),
        ["job-1", "job-2", "job-3"],
      );
      const ofCommand = await fx.client.runners.listRunnerJobs({
        runId: run.runId,
        commandId: command?.commandId,
      });
      assert.deepEqual(
        ofCommand.jobs.map((j) => j.jobName),
        ["job-2"],
      );
      const p1 = await fx.client.runners.listRunnerJobs({ runId: run.runId, pageSize: 2 });
      const p2 = await fx.client.runners.listRunnerJobs({
        runId: run.runId,
        pageSize: 2,
        pageToken: p1.nextPageToken,
      });
      assert.deepEqual(
        [...p1.jobs, ...p2.jobs].map((j) => j.jobName),
        ["job-1", "job-2", "job-3"],
      );
      await rejectsWith(
        fx.client.runners.recordRunnerJob({ ...job, runId: randomUUID() }),
        Code.NotFound,
        "RUN_NOT_FOUND",
      );
    });

    it("clients cannot write the server's own event types", async () => {
      const run = await newRun();
      await rejectsWith(
        fx.client.runs.appendRunEvents({ runId: run.runId, events: [{ type: "agentstore.claim" }] }),
        Code.InvalidArgument,
        "RESERVED_EVENT_TYPE",
      );
    });

    it("a plain grpc-js runner registers, claims and renews", async () => {
      const runners = grpcRunnerService(fx.server.app.port);
      const grpcRuns = grpcRunService(fx.server.app.port);
      try {
        const runnerId = `grpc-${randomUUID()}`;
        await unary(runners, "RegisterRunner", { runner_id: runnerId, labels: { via: "grpc-js" } });
        const assistantId = `grpc-${randomUUID()}`;
        const run = await newRun({ assistantId });
        const claimed = await unary<{ run: { run_id: string; runner_id: string; status: string } }>(
          grpcRuns,
          "ClaimNextRun",
          { runner_id: runnerId, filter: { assistant_id: assistantId }, lease: { seconds: 30 } },
        );
        assert.equal(claimed.run.run_id, run.runId);
        assert.equal(claimed.run.status, "RUN_STATUS_CLAIMED");
        const created = await unary<{ command: { seq: string } }>(grpcRuns, "CreateCommand", {
          run_id: run.runId,
          type: "COMMAND_TYPE_TURN",
          payload: { fields: { prompt: { stringValue: "from grpc-js" } } },
        });
        assert.equal(created.command.seq, "1");
        await unary(grpcRuns, "FinishRun", {
          run_id: run.runId,
          status: "RUN_STATUS_COMPLETED",
          runner_id: runnerId,
        });
        const streamed: string[] = [];
        await new Promise<void>((resolve, reject) => {
          const call = grpcRuns.StreamCommands?.({
            run_id: run.runId,
            runner_id: runnerId,
          }) as NodeJS.EventEmitter;
          call.on("data", (res: { command: { seq: string } }) => streamed.push(res.command.seq));
          call.on("end", resolve);
          call.on("error", reject);
        });
        assert.deepEqual(streamed, ["1"]);
        const err = (await unary(grpcRuns, "RenewRunLease", { run_id: run.runId, runner_id: runnerId }).catch(
          (e: GrpcError) => e,
        )) as GrpcError;
        assert.equal(err.code, Code.FailedPrecondition, "a finished run has no holder");
        assert.equal(errorReason(err), "NOT_LEASE_HOLDER");
      } finally {
        runners.close();
        grpcRuns.close();
      }
    });
  });
}

const [, pgBackend] = await backends();
describe("dispatch across replicas", { skip: pgBackend?.skip }, () => {
  it("a ClaimNextRun waiting on one replica is woken by a run created on another", async () => {
    if (pgBackend === undefined) return;
    const db = await pgBackend.create();
    // The safety poll is ten minutes away: only a notification from B can wake A's claim.
    const a = await startServer(db, { AGENTSTORE_DISPATCH_POLL_MS: "600000" });
    const b = await startServer(db);
    const viaA = createClient({ baseUrl: a.url });
    const viaB = createClient({ baseUrl: b.url });
    try {
      const { runner } = await viaA.runners.registerRunner({});
      const assistantId = `x-${randomUUID()}`;
      const waiting = viaA.runs.claimNextRun({
        runnerId: runner?.runnerId ?? "",
        filter: { assistantId },
        wait: lease(120_000),
      });
      await eventually(() => assert.equal(a.app.gauges()["claims.waiting"], 1));
      const { run } = await viaB.runs.createRun({ run: { assistantId } });
      const { run: claimed } = await waiting;
      assert.equal(claimed?.runId, run?.runId);
    } finally {
      viaA.close();
      viaB.close();
      await a.close();
      await b.close();
      await db.drop();
    }
  });
});

for (const backend of await backends()) {
  describe(`late renewals on ${backend.name}`, { skip: backend.skip }, () => {
    // Recovery waits a minute here, so a lease that ran out stays with its runner meanwhile.
    const fx = useServer(backend, { AGENTSTORE_LEASE_GRACE_MS: "60000" });

    it("a renewal or heartbeat after the lease ran out keeps the run, on record", async () => {
      const { runner } = await fx.client.runners.registerRunner({});
      const runnerId = runner?.runnerId ?? "";
      const viaRenew = (await fx.client.runs.createRun({ run: {} })).run?.runId ?? "";
      const viaHeartbeat = (await fx.client.runs.createRun({ run: {} })).run?.runId ?? "";
      let expiry = 0;
      for (const runId of [viaRenew, viaHeartbeat]) {
        const { run } = await fx.client.runs.claimRun({ runId, runnerId, lease: lease(1_000) });
        expiry = Math.max(
          expiry,
          Number(run?.leaseExpireTime?.seconds ?? 0n) * 1000 + (run?.leaseExpireTime?.nanos ?? 0) / 1e6,
        );
      }
      await eventually(() => assert.ok(Date.now() > expiry + 50, "both leases ran out"), 10_000);
      await fx.client.runs.renewRunLease({ runId: viaRenew, runnerId, lease: lease(60_000) });
      const late = (await logOf(fx.client, viaRenew)).find((e) => e.type === "agentstore.lease_renewed_late");
      assert.ok(Number(late?.payload?.late_ms) > 0);
      // The heartbeat extends the other (and re-extends the first, which is no longer late).
      const { renewedRunCount } = await fx.client.runners.heartbeatRunner({ runnerId, lease: lease(60_000) });
      assert.equal(renewedRunCount, 2n);
      const lates = (await logOf(fx.client, viaHeartbeat)).filter(
        (e) => e.type === "agentstore.lease_renewed_late",
      );
      assert.equal(lates.length, 1);
      assert.equal(
        (await logOf(fx.client, viaRenew)).filter((e) => e.type === "agentstore.lease_renewed_late").length,
        1,
        "a timely renewal writes nothing",
      );
    });
  });
}

describe("lease recovery across replicas", { skip: pgBackend?.skip }, () => {
  it("two replicas sweeping one database recover a run once", async () => {
    if (pgBackend === undefined) return;
    const db = await pgBackend.create();
    const env = { AGENTSTORE_LEASE_GRACE_MS: "100", AGENTSTORE_LEASE_SWEEP_MS: "50" };
    const a = await startServer(db, env);
    const b = await startServer(db, env);
    const client = createClient({ baseUrl: a.url });
    try {
      const { runner } = await client.runners.registerRunner({});
      const runs = [];
      for (const _ of range(1, 20)) {
        const { run } = await client.runs.createRun({ run: {} });
        await client.runs.claimRun({
          runId: run?.runId ?? "",
          runnerId: runner?.runnerId ?? "",
          lease: lease(1_000),
        });
        runs.push(run?.runId ?? "");
      }
      for (const runId of runs) {
        const events = await collect(client.runs.streamRunEvents({ runId }));
        const types = events.map((e) => e.event?.type);
        assert.equal(
          types.filter((t) => t === "agentstore.lease_lost").length,
          1,
          `one recovery of ${runId}`,
        );
        assert.equal(types.filter((t) => t === "terminal_status").length, 1);
      }
    } finally {
      client.close();
      await a.close();
      await b.close();
      await db.drop();
    }
  });

  it("mixed writes of many calls never deadlock (lock order under group commit)", async () => {
    if (pgBackend === undefined) return;
    const db = await pgBackend.create();
    const server = await startServer(db);
    const client = createClient({ baseUrl: server.url });
    const deadlocks = async () => {
      const admin = new pg.Client({ connectionString: db.url });
      await admin.connect();
      try {
        const { rows } = await admin.query(
          "select deadlocks from pg_stat_database where datname = current_database()",
        );
        return Number(rows[0]?.deadlocks ?? 0);
      } finally {
        await admin.end();
      }
    };
    try {
      const { runner } = await client.runners.registerRunner({});
      const runnerId = runner?.runnerId ?? "";
      const runs: string[] = [];
      for (const _ of range(1, 20)) {
        const { run } = await client.runs.createRun({ run: {} });
        await client.runs.claimRun({ runId: run?.runId ?? "", runnerId, lease: lease(600_000) });
        runs.push(run?.runId ?? "");
      }
      const before = await deadlocks();
      let calls = 0;
      await Promise.all(
        range(1, 48).map(async (w) => {
          for (let i = 0; i < 15; i++) {
            const runId = runs[(w * 7 + i) % runs.length] ?? "";
            const kind = (w + i) % 4;
            if (kind === 0) await client.runs.createCommand({ runId, type: 2, payload: { w, i } });
            else if (kind === 1) await client.runs.updateRunProgress({ runId, messageCount: BigInt(i) });
            else if (kind === 2) await client.runs.renewRunLease({ runId, runnerId, lease: lease(600_000) });
            else await client.runners.heartbeatRunner({ runnerId, lease: lease(600_000) });
            calls++;
          }
        }),
      );
      assert.equal(calls, 48 * 15);
      assert.equal((await deadlocks()) - before, 0, "no deadlock among the combined calls");
    } finally {
      client.close();
      await server.close();
      await db.drop();
    }
  });
});
