import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import { type AgentStoreClient, Code, MultitaskStrategy, type Run, RunStatus } from "../src/client/index.ts";
import { eventually, range, rejectsWith } from "./helpers/assertions.ts";
import { backends, pglite } from "./helpers/databases.ts";
import { useServer } from "./helpers/servers.ts";

interface Watcher {
  /** Every (run id, version) received, in arrival order. */
  seen: Array<{ runId: string; version: bigint; status: RunStatus }>;
  /** The latest state received per run. */
  latest: Map<string, Run>;
  stop(): Promise<void>;
}

/** Watches the tenant's runs in the background from `afterVersion`, recording everything. */
function watch(
  client: AgentStoreClient,
  request: { afterVersion?: bigint; fromNow?: boolean; threadId?: string } = {},
): Watcher {
  const controller = new AbortController();
  const seen: Watcher["seen"] = [];
  const latest = new Map<string, Run>();
  const done = (async () => {
    for await (const { run, version } of client.runs.watchRuns(request, { signal: controller.signal })) {
      if (run === undefined) continue;
      seen.push({ runId: run.runId, version, status: run.status });
      latest.set(run.runId, run);
    }
  })().catch((err: unknown) => {
    if (!controller.signal.aborted) throw err;
  });
  return {
    seen,
    latest,
    async stop() {
      controller.abort();
      await done;
    },
  };
}

const versionsOf = (w: Watcher) => w.seen.map((s) => s.version);
const strictlyIncreasing = (values: bigint[]) => values.every((v, i) => i === 0 || v > (values[i - 1] ?? 0n));

for (const backend of await backends()) {
  describe(`WatchRuns on ${backend.name}`, { skip: backend.skip }, () => {
    const fx = useServer(backend);

    it("sends existing runs in version order, then live changes, and resumes after a version", async () => {
      const threadId = `t-${randomUUID()}`;
      const created = [];
      for (const i of range(1, 3)) {
        const { run } = await fx.client.runs.createRun({
          run: { threadId, metadata: { i } },
          requestId: randomUUID(),
        });
        created.push(run as Run);
        await fx.client.runs.finishRun({ runId: (run as Run).runId, status: RunStatus.COMPLETED });
      }
      const watcher = watch(fx.client, { threadId });
      await eventually(() => assert.equal(watcher.latest.size, 3));
      assert.ok(strictlyIncreasing(versionsOf(watcher)), "in version order");
      for (const run of created) assert.equal(watcher.latest.get(run.runId)?.status, RunStatus.COMPLETED);
      assert.equal(watcher.seen.length, 3, "each run once, in its latest state");

      const { run: live } = await fx.client.runs.createRun({ run: { threadId } });
      const liveId = (live as Run).runId;
      await eventually(() => assert.equal(watcher.latest.get(liveId)?.status, RunStatus.PENDING));
      await fx.client.runs.updateRunProgress({ runId: liveId, messageCount: 3n });
      await eventually(() => assert.equal(watcher.latest.get(liveId)?.status, RunStatus.RUNNING));
      const resumeAt = versionsOf(watcher).at(-1) ?? 0n;
      await watcher.stop();

      await fx.client.runs.cancelRun({ runId: liveId, reason: "enough" });
      const resumed = watch(fx.client, { threadId, afterVersion: resumeAt });
      await eventually(() => assert.equal(resumed.latest.get(liveId)?.status, RunStatus.CANCELLED));
      assert.deepEqual(
        resumed.seen.map((s) => s.runId),
        [liveId],
        "only what changed after the version resumed from",
      );
      assert.ok((resumed.seen[0]?.version ?? 0n) > resumeAt);
      const { run: read } = await fx.client.runs.getRun({ runId: liveId });
      assert.equal(read?.version, resumed.seen[0]?.version, "the run carries its latest version");
      await resumed.stop();
    });

    it("from_now skips the past; from_now with a version is INVALID_ARGUMENT", async () => {
      const threadId = `t-${randomUUID()}`;
      await fx.client.runs.createRun({ run: { threadId } });
      const watcher = watch(fx.client, { threadId, fromNow: true });
      // A marker run on another thread, watched from now as well, tells when the stream is live.
      const marker = watch(fx.client, { fromNow: true });
      const markerThread = `m-${randomUUID()}`;
      await eventually(async () => {
        await fx.client.runs.createRun({
          run: { threadId: markerThread, multitaskStrategy: MultitaskStrategy.ENQUEUE },
        });
        assert.ok(marker.seen.length > 0);
      });
      const { run } = await fx.client.runs.createRun({
        run: { threadId, multitaskStrategy: MultitaskStrategy.ENQUEUE },
      });
      await eventually(() => assert.deepEqual([...watcher.latest.keys()], [(run as Run).runId]));
      await watcher.stop();
      await marker.stop();
      const stream = fx.client.runs.watchRuns({ fromNow: true, afterVersion: 3n });
      await rejectsWith(
        (async () => {
          for await (const _ of stream) break;
        })(),
        Code.InvalidArgument,
        "INVALID_ARGUMENT",
      );
    });

    it("8 concurrent writers: a live reader and a resuming reader miss no version", async () => {
      const threadPrefix = `w-${randomUUID()}`;
      const { run: first } = await fx.client.runs.createRun({ run: { threadId: `${threadPrefix}-start` } });
      const startAfter = (first?.version ?? 1n) - 1n;
      const live = watch(fx.client, { afterVersion: startAfter });
      // A reader that disconnects every few messages and resumes after the last version it got.
      const resumedSeen: Watcher["seen"] = [];
      const resumedLatest = new Map<string, bigint>();
      let resuming = true;
      const resumer = (async () => {
        let after = startAfter;
        while (resuming) {
          const controller = new AbortController();
          let taken = 0;
          try {
            for await (const { run, version } of fx.client.runs.watchRuns(
              { afterVersion: after },
              { signal: controller.signal },
            )) {
              if (run === undefined) continue;
              resumedSeen.push({ runId: run.runId, version, status: run.status });
              resumedLatest.set(run.runId, version);
              after = version;
              if (++taken >= 7 || !resuming) {
                controller.abort();
                break;
              }
            }
          } catch (err) {
            if (!controller.signal.aborted) throw err;
          }
        }
      })();

      const writers = range(1, 8).map(async (w) => {
        for (const i of range(1, 6)) {
          const { run } = await fx.client.runs.createRun({ run: { threadId: `${threadPrefix}-${w}-${i}` } });
          const runId = (run as Run).runId;
          await fx.client.runs.updateRunProgress({ runId, messageCount: BigInt(i) });
          if (i % 2 === 0) await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
        }
      });
      await Promise.all(writers);

      const { runs } = await fx.client.runs.listRuns({ pageSize: 500 });
      const expected = new Map(
        runs.filter((r) => r.threadId.startsWith(threadPrefix)).map((r) => [r.runId, r.version]),
      );
      assert.equal(expected.size, 1 + 8 * 6);
      await eventually(() => {
        for (const [runId, version] of expected) {
          assert.equal(
            live.latest.get(runId)?.version,
            version,
            `live reader has the final version of ${runId}`,
          );
          assert.equal(
            resumedLatest.get(runId),
            version,
            `resuming reader has the final version of ${runId}`,
          );
        }
      }, 20_000);
      resuming = false;
      await fx.client.runs.createRun({ run: { threadId: `${threadPrefix}-end` } });
      await resumer;
      await live.stop();
      assert.ok(strictlyIncreasing(versionsOf(live)), "the live reader saw versions in order");
      assert.ok(
        strictlyIncreasing(resumedSeen.map((s) => s.version)),
        "the resuming reader saw versions in order, none twice",
      );
    });
  });
}

describe("open streams per tenant", () => {
  const fx = useServer(pglite(), { AGENTSTORE_MAX_STREAMS_PER_TENANT: "2" });

  it("are capped; a closed stream frees its place", async () => {
    const first = watch(fx.client, { fromNow: true });
    const second = watch(fx.client, { fromNow: true });
    await eventually(() => assert.equal(fx.server.app.hubs.get("runs")?.stats().followers, 2));
    const third = fx.client.runs.watchRuns({ fromNow: true });
    await rejectsWith(
      (async () => {
        for await (const _ of third) break;
      })(),
      Code.ResourceExhausted,
      "TOO_MANY_STREAMS",
    );
    await first.stop();
    await eventually(async () => {
      const again = watch(fx.client, { fromNow: true });
      try {
        await eventually(() => assert.equal(fx.server.app.hubs.get("runs")?.stats().followers, 2), 2_000);
      } finally {
        await again.stop();
      }
    });
    await second.stop();
  });
});
