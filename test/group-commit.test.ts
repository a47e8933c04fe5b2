import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import { ConnectError, RunStatus } from "../src/client/index.ts";
import { range, reasonOf } from "./helpers/assertions.ts";
import { backends } from "./helpers/databases.ts";
import { useServer } from "./helpers/servers.ts";

/**
 * Group commit of appends (store/events/appends.ts): calls that overlap are combined into one
 * statement, yet each keeps its own seqs and its own error. 64 appenders over 8 runs, with bad calls among them
 * that only the store can refuse (a terminal run, a missing run, a request id reused with other
 * events), must leave every good run gapless with each good event once, and fail only the bad.
 */
for (const backend of await backends()) {
  describe(`group commit on ${backend.name}`, { skip: backend.skip }, () => {
    const fx = useServer(backend);

    it("64 concurrent appenders over 8 runs keep gapless seqs and per-call errors", async () => {
      const runs = await Promise.all(
        range(1, 8).map(async () => (await fx.client.runs.createRun({ run: {} })).run?.runId ?? ""),
      );
      const { run: ended } = await fx.client.runs.createRun({ run: {} });
      const endedId = ended?.runId ?? "";
      await fx.client.runs.finishRun({ runId: endedId, status: RunStatus.COMPLETED });
      const reused = randomUUID();
      await fx.client.runs.appendRunEvents({
        runId: runs[0] ?? "",
        requestId: reused,
        events: [{ type: "a" }],
      });
      const groupsBefore = fx.server.app.writeStats().appends ?? { groups: 0, calls: 0 };

      type Outcome =
        | { ok: true; runId: string; first: bigint; last: bigint; writer: number }
        | { ok: false; reason: string };
      const outcomes = await Promise.all(
        range(1, 64).map(async (writer): Promise<Outcome[]> => {
          const runId = runs[writer % 8] ?? "";
          const results: Outcome[] = [];
          for (let i = 0; i < 5; i++) {
            // Every 8th writer sends a call the store must refuse, between good ones.
            const bad = writer % 8 === 0 && i === 2;
            try {
              if (bad) {
                const which = (writer / 8) % 3;
                if (which === 0)
                  await fx.client.runs.appendRunEvents({ runId: endedId, events: [{ type: "x" }] });
                else if (which === 1)
                  await fx.client.runs.appendRunEvents({ runId: randomUUID(), events: [{ type: "x" }] });
                else
                  await fx.client.runs.appendRunEvents({
                    runId: runs[0] ?? "",
                    requestId: reused,
                    events: [{ type: "other" }],
                  });
                results.push({ ok: false, reason: "no error" });
                continue;
              }
              const n = 1 + ((writer + i) % 3);
              const res = await fx.client.runs.appendRunEvents({
                runId,
                events: range(1, n).map((k) => ({ type: "w", payload: { writer, i, k } })),
              });
              results.push({ ok: true, runId, first: res.firstSeq, last: res.lastSeq, writer });
            } catch (err) {
              results.push({ ok: false, reason: reasonOf(err) ?? ConnectError.from(err).message });
            }
          }
          return results;
        }),
      );
      const all = outcomes.flat();
      const failures = all.filter((o) => !o.ok).map((o) => (o.ok ? "" : o.reason));
      const expectedFailures = range(1, 8).map(
        (k) => (["RUN_TERMINAL", "RUN_NOT_FOUND", "REQUEST_ID_REUSED"] as const)[k % 3],
      );
      assert.deepEqual(failures.sort(), expectedFailures.sort());
      for (const runId of runs) {
        const { events } = await fx.client.runs.listRunEvents({ runId, pageSize: 1000 });
        const expected = runId === runs[0] ? 1 : 0;
        const mine = all.filter((o) => o.ok && o.runId === runId);
        const total = mine.reduce((sum, o) => sum + (o.ok ? Number(o.last - o.first) + 1 : 0), 0) + expected;
        assert.deepEqual(
          events.map((e) => Number(e.seq)),
          range(1, total),
          "gapless, each event once",
        );
        // Each call's seqs hold exactly its own events, in its order.
        for (const o of mine) {
          if (!o.ok) continue;
          const held = events.filter((e) => e.seq >= o.first && e.seq <= o.last);
          assert.ok(
            held.every((e) => e.payload?.writer === o.writer),
            "a call's seqs are its own events",
          );
          assert.deepEqual(
            held.map((e) => e.payload?.k),
            range(1, held.length),
          );
        }
      }
      const { run: stillEnded } = await fx.client.runs.getRun({ runId: endedId });
      assert.equal(stillEnded?.lastEventSeq, 1n, "nothing reached the terminal run");
      const stats = fx.server.app.writeStats().appends ?? { groups: 0, calls: 0 };
      const groups = stats.groups - groupsBefore.groups;
      const calls = stats.calls - groupsBefore.calls;
      assert.ok(calls >= 64 * 5 - 8, `${calls} calls went through the combined append path`);
      // PGlite runs each transaction to its end without yielding to the network, so calls never
      // overlap there; on PostgreSQL they do, and must have been combined.
      if (backend.name === "postgres") {
        assert.ok(groups < calls, `calls were combined: ${calls} calls in ${groups} transactions`);
      }
    });
  });
}
