import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import type { ClientReadableStream } from "@grpc/grpc-js";
import { Code, createClient, type RunEvent, RunStatus } from "../src/client/index.ts";
import { collect, eventually, range, rejectsWith } from "./helpers/assertions.ts";
import { backends } from "./helpers/databases.ts";
import { grpcRunService } from "./helpers/grpc-js.ts";
import { type ServerFixture, useServer } from "./helpers/servers.ts";

const runEventHub = (fx: ServerFixture) => {
  const hub = fx.server.app.hubs.get("run-events");
  if (hub === undefined) throw new Error("the runs module mounts a run-events hub");
  return hub;
};

const seqsOf = (events: RunEvent[]) => events.map((e) => Number(e.seq));

for (const backend of await backends()) {
  describe(`StreamRunEvents on ${backend.name}`, { skip: backend.skip }, () => {
    const fx = useServer(backend, { AGENTSTORE_STREAM_BUFFER_EVENTS: "8" });
    const newRun = async () =>
      (await fx.client.runs.createRun({ run: {} })).run?.runId ?? assert.fail("no run");
    const append = (runId: string, n: number, type = "assistant_message") =>
      fx.client.runs.appendRunEvents({ runId, events: range(1, n).map((i) => ({ type, payload: { i } })) });
    /** Reads a stream in the background; `events` fills as they arrive. */
    const follow = (runId: string, afterSeq = 0n, types: string[] = []) => {
      const controller = new AbortController();
      const events: RunEvent[] = [];
      const done = (async () => {
        for await (const res of fx.client.runs.streamRunEvents(
          { runId, afterSeq, types },
          { signal: controller.signal },
        )) {
          if (res.event) events.push(res.event);
        }
      })();
      done.catch(() => {});
      return { events, done, stop: () => controller.abort() };
    };

    it("sends the stored backlog, then live events, and ends after the terminal event", async () => {
      const runId = await newRun();
      await append(runId, 3);
      const stream = follow(runId);
      await eventually(() => assert.equal(stream.events.length, 3));
      await append(runId, 2, "diff");
      await eventually(() => assert.equal(stream.events.length, 5));
      await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
      await stream.done;
      assert.deepEqual(seqsOf(stream.events), range(1, 6));
      assert.equal(stream.events.at(-1)?.type, "terminal_status");
      assert.equal(stream.events.at(-1)?.payload?.status, "completed");
    });

    it("resumes after a disconnect from the last seq with no gap and no duplicate", async () => {
      const runId = await newRun();
      await append(runId, 4);
      const first = follow(runId);
      await eventually(() => assert.equal(first.events.length, 4));
      first.stop();
      await first.done.catch(() => {});
      // Events committed while nobody listens.
      await append(runId, 3);
      const last = first.events.at(-1)?.seq ?? 0n;
      const second = follow(runId, last);
      await eventually(() => assert.equal(second.events.length, 3));
      await append(runId, 2);
      await fx.client.runs.cancelRun({ runId, reason: "done" });
      await second.done;
      assert.deepEqual([...seqsOf(first.events), ...seqsOf(second.events)], range(1, 10));
    });

    it("an after_seq past the end is OUT_OF_RANGE; a finished log at its end ends at once", async () => {
      const runId = await newRun();
      await append(runId, 2);
      await rejectsWith(
        collect(fx.client.runs.streamRunEvents({ runId, afterSeq: 3n })),
        Code.OutOfRange,
        "SEQ_OUT_OF_RANGE",
      );
      await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
      assert.deepEqual(await collect(fx.client.runs.streamRunEvents({ runId, afterSeq: 3n })), []);
      const tail = await collect(fx.client.runs.streamRunEvents({ runId, afterSeq: 2n }));
      assert.deepEqual(
        tail.map((r) => r.event?.type),
        ["terminal_status"],
      );
      await rejectsWith(
        collect(fx.client.runs.streamRunEvents({ runId: randomUUID() })),
        Code.NotFound,
        "RUN_NOT_FOUND",
      );
    });

    it("filters by type but always sends the terminal event", async () => {
      const runId = await newRun();
      await fx.client.runs.appendRunEvents({
        runId,
        events: [
          { type: "assistant_message", payload: {} },
          { type: "diff", payload: {} },
          { type: "error", payload: {} },
        ],
      });
      const stream = follow(runId, 0n, ["diff"]);
      await eventually(() => assert.equal(stream.events.length, 1));
      await fx.client.runs.finishRun({ runId, status: RunStatus.FAILED, failureKind: "x" });
      await stream.done;
      assert.deepEqual(
        stream.events.map((e) => [Number(e.seq), e.type]),
        [
          [2, "diff"],
          [4, "terminal_status"],
        ],
      );
    });

    it("fans out to many followers with one database read per change, not one per follower", async () => {
      const runId = await newRun();
      const followers = range(1, 20).map(() => follow(runId));
      await eventually(() => assert.equal(runEventHub(fx).stats().followers >= 20, true));
      const readsBefore = runEventHub(fx).stats().databaseReads;
      const appends = 10;
      for (let i = 0; i < appends; i++) {
        await append(runId, 1);
        await eventually(() => {
          for (const f of followers) assert.equal(f.events.length, i + 1);
        });
      }
      const reads = runEventHub(fx).stats().databaseReads - readsBefore;
      assert.ok(reads <= appends + 2, `expected about ${appends} reads for ${appends} changes, got ${reads}`);
      await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
      await Promise.all(followers.map((f) => f.done));
      for (const f of followers) assert.deepEqual(seqsOf(f.events), range(1, appends + 1));
      await eventually(() => assert.equal(runEventHub(fx).stats().topics, 0, "topics are released"));
    });

    it("a follower that stops reading for a while still gets every event in order", async () => {
      const runId = await newRun();
      const live = follow(runId);
      // A raw iterator we do not pull from while the log grows far past the 8-entry topic buffer.
      // (Whether the server then reads from the database depends on how much the transport
      // buffers; test/hub.test.ts pins that behaviour down without a transport.)
      const slow = fx.client.runs.streamRunEvents({ runId })[Symbol.asyncIterator]();
      const pending = slow.next();
      const early = await Promise.race([
        pending,
        new Promise((resolve) => setTimeout(() => resolve("none"), 300)),
      ]);
      assert.equal(early, "none", "nothing to read yet");
      const blob = "b".repeat(4096);
      for (let i = 0; i < 40; i++) {
        await fx.client.runs.appendRunEvents({
          runId,
          events: range(1, 5).map((n) => ({ type: "command_output", payload: { n, blob } })),
        });
      }
      await eventually(() => assert.equal(live.events.length, 200));
      assert.ok(runEventHub(fx).stats().bufferedEntries <= 8, "the topic buffer stays within its bound");
      await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
      await live.done;
      const slowSeqs: number[] = [];
      for (let r = await pending; !r.done; r = await slow.next()) slowSeqs.push(Number(r.value.event?.seq));
      assert.deepEqual(slowSeqs, range(1, 201));
      assert.deepEqual(seqsOf(live.events), range(1, 201));
    });

    it("a run id in upper case still gets live delivery", async () => {
      const runId = await newRun();
      const stream = follow(runId);
      const started = Date.now();
      await fx.client.runs.appendRunEvents({
        runId: runId.toUpperCase(),
        events: [{ type: "diff", payload: {} }],
      });
      await eventually(() => assert.equal(stream.events.length, 1), 3_000);
      assert.ok(Date.now() - started < 3_000, "delivered by the change feed, not the safety poll");
      await fx.client.runs.cancelRun({ runId: runId.toUpperCase() });
      await stream.done;
    });

    it("concurrent appenders: every follower sees 1..N in order, each once", async () => {
      const runId = await newRun();
      const followers = range(1, 3).map(() => follow(runId));
      await Promise.all(
        range(1, 8).map(async () => {
          for (let i = 0; i < 10; i++) await append(runId, 2);
        }),
      );
      await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
      await Promise.all(followers.map((f) => f.done));
      for (const f of followers) assert.deepEqual(seqsOf(f.events), range(1, 161));
    });

    it("JSON and binary Connect clients stream the same events as gRPC (each message encoded once)", async () => {
      const runId = await newRun();
      await append(runId, 2);
      await fx.client.runs.appendRunEvents({
        runId,
        events: [{ type: "diff", payload: { nested: { list: [1, "a"] } } }],
      });
      const live = follow(runId);
      await eventually(() => assert.equal(live.events.length, 3));
      await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
      await live.done;
      const expected = live.events.map((e) => [Number(e.seq), e.type, e.payload]);
      // Connect JSON: streamed envelopes of JSON messages, read straight off the wire.
      const body = Buffer.from(JSON.stringify({ runId }));
      const frame = Buffer.concat([Buffer.from([0, 0, 0, 0, 0]), body]);
      frame.writeUInt32BE(body.length, 1);
      const res = await fetch(`${fx.server.url}/agentstore.v1.RunService/StreamRunEvents`, {
        method: "POST",
        headers: { "content-type": "application/connect+json" },
        body: frame,
      });
      const bytes = Buffer.from(await res.arrayBuffer());
      const messages: Array<{ event?: { seq: string; type: string; payload: unknown } }> = [];
      for (let at = 0; at < bytes.length; ) {
        const flags = bytes[at] ?? 0;
        const length = bytes.readUInt32BE(at + 1);
        const json = JSON.parse(bytes.subarray(at + 5, at + 5 + length).toString("utf8"));
        if ((flags & 2) === 0) messages.push(json);
        else assert.deepEqual(json, {}, "the stream ends without an error");
        at += 5 + length;
      }
      assert.deepEqual(
        messages.map((m) => [Number(m.event?.seq), m.event?.type, m.event?.payload]),
        expected,
      );
      const connect = createClient({ baseUrl: fx.server.url, protocol: "connect" });
      try {
        const viaConnect = await collect(connect.runs.streamRunEvents({ runId }));
        assert.deepEqual(
          viaConnect.map((r) => [Number(r.event?.seq), r.event?.type, r.event?.payload]),
          expected,
        );
      } finally {
        connect.close();
      }
    });

    it("a plain grpc-js client streams the same events", async () => {
      const runId = await newRun();
      await append(runId, 2);
      await fx.client.runs.finishRun({ runId, status: RunStatus.BLOCKED, failureKind: "needs_approval" });
      const grpc = grpcRunService(fx.server.app.port);
      try {
        const call = (
          grpc.StreamRunEvents as (
            req: unknown,
          ) => ClientReadableStream<{ event: { seq: string; type: string } }>
        )({ run_id: runId, after_seq: "0" });
        const got: Array<[string, string]> = [];
        for await (const msg of call) got.push([msg.event.seq, msg.event.type]);
        assert.deepEqual(got, [
          ["1", "assistant_message"],
          ["2", "assistant_message"],
          ["3", "terminal_status"],
        ]);
      } finally {
        grpc.close();
      }
    });
  });
}
