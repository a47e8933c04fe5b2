import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import type { JsonObject } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import {
  type AgentStoreClient,
  Code,
  type Command,
  CommandState,
  CommandType,
  createClient,
  RunStatus,
} from "../src/client/index.ts";
import { eventually, range, reasonOf, rejectsWith } from "./helpers/assertions.ts";
import { backends, type TestDatabase } from "./helpers/databases.ts";
import { startServer, type TestServer, useServer } from "./helpers/servers.ts";

/** Follows StreamCommands in the background; `commands` fills as they arrive, `done` settles at the end. */
function followCommands(client: AgentStoreClient, runId: string, runnerId: string, afterSeq = 0n) {
  const controller = new AbortController();
  const commands: Command[] = [];
  const done = (async () => {
    for await (const { command } of client.runs.streamCommands(
      { runId, runnerId, afterSeq },
      { signal: controller.signal },
    )) {
      if (command !== undefined) commands.push(command);
    }
  })();
  done.catch(() => {});
  return { commands, done, stop: () => controller.abort() };
}

const seqs = (commands: Command[]) => commands.map((c) => Number(c.seq));

for (const backend of await backends()) {
  describe(`commands on ${backend.name}`, { skip: backend.skip }, () => {
    const fx = useServer(backend);
    /** A run held by a fresh runner. */
    const heldRun = async () => {
      const { runner } = await fx.client.runners.registerRunner({ runnerId: `r-${randomUUID()}` });
      const runnerId = runner?.runnerId ?? "";
      const { run } = await fx.client.runs.createRun({ run: {} });
      const runId = run?.runId ?? "";
      await fx.client.runs.claimRun({ runId, runnerId, lease: durationFromMs(120_000) });
      return { runId, runnerId };
    };
    const turn = (runId: string, payload: JsonObject = {}, idempotencyKey = "") =>
      fx.client.runs.createCommand({ runId, type: CommandType.TURN, payload, idempotencyKey });

    it("numbers a run's commands 1, 2, 3 and announces each in the run's log", async () => {
      const { runId } = await heldRun();
      const created = [];
      for (const i of range(1, 3)) created.push((await turn(runId, { prompt: `p${i}` })).command);
      assert.deepEqual(
        created.map((c) => Number(c?.seq)),
        [1, 2, 3],
      );
      assert.ok(created.every((c) => c?.state === CommandState.PENDING));
      const { events } = await fx.client.runs.listRunEvents({ runId, types: ["agentstore.command"] });
      assert.deepEqual(
        events.map((e) => [e.payload?.command_seq, e.payload?.command_id, e.payload?.command_type]),
        created.map((c) => [Number(c?.seq), c?.commandId, "turn"]),
      );
      const { run } = await fx.client.runs.getRun({ runId });
      assert.equal(run?.lastCommandSeq, 3n);
      const { command: got } = await fx.client.runs.getCommand({ commandId: created[1]?.commandId ?? "" });
      assert.deepEqual(got?.payload, { prompt: "p2" });
      await rejectsWith(
        fx.client.runs.getCommand({ commandId: randomUUID() }),
        Code.NotFound,
        "COMMAND_NOT_FOUND",
      );
    });

    it("is idempotent by key: same command returns the first, another is IDEMPOTENCY_KEY_REUSED", async () => {
      const { runId } = await heldRun();
      const key = randomUUID();
      const first = await turn(runId, { prompt: "hi", n: [1, 2] }, key);
      const second = await turn(runId, { n: [1, 2], prompt: "hi" }, key);
      assert.equal(second.command?.commandId, first.command?.commandId);
      await rejectsWith(turn(runId, { prompt: "other" }, key), Code.AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
      // Concurrent creates with one key: one command.
      const raced = randomUUID();
      const results = await Promise.all(range(1, 16).map(() => turn(runId, { same: true }, raced)));
      assert.equal(new Set(results.map((r) => r.command?.commandId)).size, 1);
      const { commands } = await fx.client.runs.listCommands({ runId });
      assert.deepEqual(seqs(commands), [1, 2], "gapless: the races took no seq");
    });

    it("refuses commands to a missing or terminal run, and CUSTOM without its name", async () => {
      await rejectsWith(turn(randomUUID()), Code.NotFound, "RUN_NOT_FOUND");
      const { run } = await fx.client.runs.createRun({ run: {} });
      await fx.client.runs.finishRun({ runId: run?.runId ?? "", status: RunStatus.COMPLETED });
      await rejectsWith(turn(run?.runId ?? ""), Code.FailedPrecondition, "RUN_TERMINAL");
      const { runId } = await heldRun();
      await rejectsWith(
        fx.client.runs.createCommand({ runId, type: CommandType.CUSTOM }),
        Code.InvalidArgument,
      );
      await rejectsWith(
        fx.client.runs.createCommand({ runId, type: CommandType.TURN, customType: "x" }),
        Code.InvalidArgument,
      );
      const { command } = await fx.client.runs.createCommand({
        runId,
        type: CommandType.CUSTOM,
        customType: "resize",
      });
      assert.equal(command?.customType, "resize");
      await rejectsWith(
        fx.client.runs.createCommand({ runId, type: CommandType.UNSPECIFIED }),
        Code.InvalidArgument,
      );
    });

    it("ack, finish and cancel: the first terminal state wins and says so; lists filter by state", async () => {
      const { runId } = await heldRun();
      const a = (await turn(runId)).command?.commandId ?? "";
      const b = (await turn(runId)).command?.commandId ?? "";
      const c = (await turn(runId)).command?.commandId ?? "";
      assert.equal((await fx.client.runs.ackCommand({ commandId: a })).changed, true);
      assert.equal((await fx.client.runs.ackCommand({ commandId: a })).changed, false);
      const done = await fx.client.runs.finishCommand({
        commandId: a,
        state: CommandState.COMPLETED,
        result: { ok: 1 },
      });
      assert.equal(done.changed, true);
      assert.deepEqual(done.command?.result, { ok: 1 });
      const late = await fx.client.runs.finishCommand({
        commandId: a,
        state: CommandState.FAILED,
        failureKind: "x",
      });
      assert.equal(late.changed, false);
      assert.equal(late.command?.state, CommandState.COMPLETED);
      assert.equal((await fx.client.runs.cancelCommand({ commandId: a })).changed, false);
      const cancelled = await fx.client.runs.cancelCommand({ commandId: b, reason: "changed my mind" });
      assert.equal(cancelled.command?.state, CommandState.CANCELLED);
      assert.equal(cancelled.command?.failureMessage, "changed my mind");
      assert.equal((await fx.client.runs.ackCommand({ commandId: b })).changed, false);
      const pending = await fx.client.runs.listCommands({ runId, state: CommandState.PENDING });
      assert.deepEqual(
        pending.commands.map((x) => x.commandId),
        [c],
      );
      const after1 = await fx.client.runs.listCommands({ runId, afterSeq: 1n, pageSize: 1 });
      const rest = await fx.client.runs.listCommands({
        runId,
        afterSeq: 1n,
        pageSize: 1,
        pageToken: after1.nextPageToken,
      });
      assert.deepEqual(
        [...after1.commands, ...rest.commands].map((x) => x.commandId),
        [b, c],
      );
      const statuses = (await fx.client.runs.listRunEvents({ runId, types: ["agentstore.command_status"] }))
        .events;
      assert.deepEqual(
        statuses.map((e) => [e.payload?.command_id, e.payload?.state]),
        [
          [a, "acknowledged"],
          [a, "completed"],
          [b, "cancelled"],
        ],
      );
    });

    it("ending a run cancels its open commands in the same transaction", async () => {
      const { runId } = await heldRun();
      const open = (await turn(runId)).command?.commandId ?? "";
      const acked = (await turn(runId)).command?.commandId ?? "";
      await fx.client.runs.ackCommand({ commandId: acked });
      const finished = (await turn(runId)).command?.commandId ?? "";
      await fx.client.runs.finishCommand({ commandId: finished, state: CommandState.COMPLETED });
      await fx.client.runs.cancelRun({ runId, reason: "stop" });
      for (const id of [open, acked]) {
        const { command } = await fx.client.runs.getCommand({ commandId: id });
        assert.equal(command?.state, CommandState.CANCELLED);
        assert.equal(command?.failureKind, "run_ended");
      }
      assert.equal(
        (await fx.client.runs.getCommand({ commandId: finished })).command?.state,
        CommandState.COMPLETED,
      );
      assert.equal((await fx.client.runs.ackCommand({ commandId: open })).changed, false);
    });

    it("StreamCommands: the holder gets stored, then live commands, resumes exactly, and the stream ends with the run", async () => {
      const { runId, runnerId } = await heldRun();
      for (const i of range(1, 2)) await turn(runId, { i });
      const stream = followCommands(fx.client, runId, runnerId);
      await eventually(() => assert.deepEqual(seqs(stream.commands), [1, 2]));
      await turn(runId, { i: 3 });
      await fx.client.runs.appendRunEvents({ runId, events: [{ type: "progress" }] });
      await turn(runId, { i: 4 });
      await eventually(() => assert.deepEqual(seqs(stream.commands), [1, 2, 3, 4]));
      stream.stop();
      await turn(runId, { i: 5 });
      const resumed = followCommands(fx.client, runId, runnerId, 3n);
      await eventually(() => assert.deepEqual(seqs(resumed.commands), [4, 5]));
      assert.deepEqual(
        resumed.commands.map((c) => c.payload?.i),
        [4, 5],
      );
      await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
      await resumed.done;
      await rejectsWith(
        (async () => {
          for await (const _ of fx.client.runs.streamCommands({ runId, runnerId, afterSeq: 9n })) break;
        })(),
        Code.OutOfRange,
        "SEQ_OUT_OF_RANGE",
      );
    });

    it("StreamCommands refuses a runner that does not hold the run, and ends when the run is taken over", async () => {
      const { runId, runnerId } = await heldRun();
      const { runner: other } = await fx.client.runners.registerRunner({});
      const otherId = other?.runnerId ?? "";
      await rejectsWith(
        (async () => {
          for await (const _ of fx.client.runs.streamCommands({ runId, runnerId: otherId })) break;
        })(),
        Code.FailedPrecondition,
        "NOT_LEASE_HOLDER",
      );
      // The holder releases; another runner claims: the first runner's stream ends NOT_LEASE_HOLDER.
      const stream = followCommands(fx.client, runId, runnerId);
      await turn(runId);
      await eventually(() => assert.equal(stream.commands.length, 1));
      await fx.client.runs.releaseRun({ runId, runnerId });
      await fx.client.runs.claimRun({ runId, runnerId: otherId, lease: durationFromMs(60_000) });
      const ended = await stream.done.then(
        () => "ended cleanly",
        (err: unknown) => reasonOf(err),
      );
      assert.equal(ended, "NOT_LEASE_HOLDER");
      // The new holder streams from the beginning; the old hand-over is history to it.
      const mine = followCommands(fx.client, runId, otherId);
      await eventually(() => assert.deepEqual(seqs(mine.commands), [1]));
      mine.stop();
    });

    it("a takeover after the lease ran out ends the old holder's stream with NOT_LEASE_HOLDER", async () => {
      const { runner: a } = await fx.client.runners.registerRunner({});
      const { runner: b } = await fx.client.runners.registerRunner({});
      const { run } = await fx.client.runs.createRun({ run: {} });
      const runId = run?.runId ?? "";
      await fx.client.runs.claimRun({ runId, runnerId: a?.runnerId ?? "", lease: durationFromMs(1_000) });
      const stream = followCommands(fx.client, runId, a?.runnerId ?? "");
      await turn(runId);
      await eventually(() => assert.equal(stream.commands.length, 1));
      // b takes the run over as soon as a's lease has run out (recovery's grace is longer).
      await eventually(async () => {
        const { takeover } = await fx.client.runs.claimRun({
          runId,
          runnerId: b?.runnerId ?? "",
          lease: durationFromMs(60_000),
        });
        assert.equal(takeover, true);
      }, 15_000);
      assert.equal(
        await stream.done.then(
          () => "ended cleanly",
          (err: unknown) => reasonOf(err),
        ),
        "NOT_LEASE_HOLDER",
      );
    });

    it("an ended run's commands can be read by a runner that held it, and by no other", async () => {
      const { runId, runnerId } = await heldRun();
      await turn(runId, { i: 1 });
      await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
      const former = followCommands(fx.client, runId, runnerId);
      await former.done;
      assert.deepEqual(seqs(former.commands), [1]);
      const { runner: stranger } = await fx.client.runners.registerRunner({});
      await rejectsWith(
        (async () => {
          for await (const _ of fx.client.runs.streamCommands({ runId, runnerId: stranger?.runnerId ?? "" }))
            break;
        })(),
        Code.FailedPrecondition,
        "NOT_LEASE_HOLDER",
      );
    });

    it("a result larger than an event payload may be is RESOURCE_EXHAUSTED", async () => {
      const { runId } = await heldRun();
      const commandId = (await turn(runId)).command?.commandId ?? "";
      await rejectsWith(
        fx.client.runs.finishCommand({
          commandId,
          state: CommandState.COMPLETED,
          result: { blob: "x".repeat(300 * 1024) },
        }),
        Code.ResourceExhausted,
        "PAYLOAD_TOO_LARGE",
      );
      assert.equal((await fx.client.runs.getCommand({ commandId })).command?.state, CommandState.PENDING);
    });
  });
}

describe("StreamCommands across a server restart", () => {
  it("resumes after the last seq received with no gap and no duplicate", async () => {
    for (const backend of await backends()) {
      if (backend.skip !== undefined) continue;
      const db: TestDatabase = await backend.create();
      let server: TestServer = await startServer(db);
      let client = createClient({ baseUrl: server.url });
      try {
        const { runner } = await client.runners.registerRunner({});
        const runnerId = runner?.runnerId ?? "";
        const { run } = await client.runs.createRun({ run: {} });
        const runId = run?.runId ?? "";
        await client.runs.claimRun({ runId, runnerId, lease: durationFromMs(120_000) });
        for (const i of range(1, 3))
          await client.runs.createCommand({ runId, type: CommandType.STEER, payload: { i } });
        const before = followCommands(client, runId, runnerId);
        await eventually(() => assert.equal(before.commands.length, 3));
        before.stop();
        client.close();
        await server.close();
        server = await startServer(db);
        client = createClient({ baseUrl: server.url });
        for (const i of range(4, 5))
          await client.runs.createCommand({ runId, type: CommandType.STEER, payload: { i } });
        const after = followCommands(client, runId, runnerId, before.commands.at(-1)?.seq ?? 0n);
        await eventually(() => assert.equal(after.commands.length, 2));
        await client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
        await after.done;
        assert.deepEqual([...seqs(before.commands), ...seqs(after.commands)], [1, 2, 3, 4, 5], backend.name);
      } finally {
        client.close();
        await server.close();
        await db.drop();
      }
    }
  });
});
