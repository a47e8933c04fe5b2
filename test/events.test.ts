import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import type { JsonObject } from "@bufbuild/protobuf";
import { Code, RunStatus } from "../src/client/index.ts";
import { range, rejectsWith } from "./helpers/assertions.ts";
import { backends } from "./helpers/databases.ts";
import { errorReason, type GrpcError, grpcRunService, struct, unary, unstruct } from "./helpers/grpc-js.ts";
import { useServer } from "./helpers/servers.ts";

for (const backend of await backends()) {
  describe(`run events on ${backend.name}`, { skip: backend.skip }, () => {
    const fx = useServer(backend, {
      AGENTSTORE_MAX_EVENT_BYTES: String(128 * 1024),
      AGENTSTORE_MAX_BATCH_EVENTS: "50",
      AGENTSTORE_MAX_BATCH_BYTES: String(1024 * 1024),
      AGENTSTORE_REDACT_KEYS: "ssn",
    });
    const newRun = async () =>
      (await fx.client.runs.createRun({ run: {} })).run?.runId ?? assert.fail("no run");

    it("a batch gets consecutive seqs after the run's last one and reads back in order", async () => {
      const runId = await newRun();
      const first = await fx.client.runs.appendRunEvents({
        runId,
        events: [
          { type: "assistant_message", payload: { text: "a" } },
          { type: "command_output", payload: { line: 1 } },
        ],
      });
      assert.deepEqual([first.firstSeq, first.lastSeq], [1n, 2n]);
      const second = await fx.client.runs.appendRunEvents({
        runId,
        events: [{ type: "diff", payload: { files: ["x"] } }],
      });
      assert.deepEqual([second.firstSeq, second.lastSeq], [3n, 3n]);
      const { events } = await fx.client.runs.listRunEvents({ runId });
      assert.deepEqual(
        events.map((e) => [e.seq, e.type, e.payload]),
        [
          [1n, "assistant_message", { text: "a" }],
          [2n, "command_output", { line: 1 }],
          [3n, "diff", { files: ["x"] }],
        ],
      );
      const { run } = await fx.client.runs.getRun({ runId });
      assert.equal(run?.lastEventSeq, 3n);
    });

    it("ListRunEvents pages by after_seq and token and filters by type", async () => {
      const runId = await newRun();
      const types = ["assistant_message", "diff", "error"];
      await fx.client.runs.appendRunEvents({
        runId,
        events: range(1, 10).map((i) => ({ type: types[i % 3] ?? "diff", payload: { i } })),
      });
      const seqs: bigint[] = [];
      let pageToken = "";
      do {
        const page = await fx.client.runs.listRunEvents({ runId, afterSeq: 2n, pageSize: 3, pageToken });
        seqs.push(...page.events.map((e) => e.seq));
        pageToken = page.nextPageToken;
      } while (pageToken !== "");
      assert.deepEqual(seqs, range(3, 10).map(BigInt));
      const diffs = await fx.client.runs.listRunEvents({ runId, types: ["diff", "error"] });
      assert.deepEqual(
        diffs.events.map((e) => e.payload?.i),
        [1, 2, 4, 5, 7, 8, 10],
      );
      const page = await fx.client.runs.listRunEvents({ runId, pageSize: 2 });
      await rejectsWith(
        fx.client.runs.listRunEvents({ runId, types: ["diff"], pageToken: page.nextPageToken }),
        Code.InvalidArgument,
        "PAGE_TOKEN_MISMATCH",
      );
    });

    it("redacts values under secret-looking keys before storing, and keeps token counters", async () => {
      const runId = await newRun();
      await fx.client.runs.appendRunEvents({
        runId,
        events: [
          {
            type: "backend_status",
            payload: {
              api_key: "sk-live-1",
              nested: { Authorization: "Bearer abc", githubToken: "ghp_x", list: [{ password: "p" }] },
              input_tokens: 12,
              max_tokens: 100,
              ssn: "123-45-6789",
              note: "plain",
            },
          },
        ],
      });
      const { events } = await fx.client.runs.listRunEvents({ runId });
      assert.deepEqual(events[0]?.payload, {
        api_key: "[REDACTED]",
        nested: {
          Authorization: "[REDACTED]",
          githubToken: "[REDACTED]",
          list: [{ password: "[REDACTED]" }],
        },
        input_tokens: 12,
        max_tokens: 100,
        ssn: "[REDACTED]",
        note: "plain",
      });
    });

    it("over-size payloads and batches are RESOURCE_EXHAUSTED and store nothing", async () => {
      const runId = await newRun();
      await rejectsWith(
        fx.client.runs.appendRunEvents({
          runId,
          events: [{ type: "diff", payload: { blob: "x".repeat(140_000) } }],
        }),
        Code.ResourceExhausted,
        "PAYLOAD_TOO_LARGE",
      );
      await rejectsWith(
        fx.client.runs.appendRunEvents({
          runId,
          events: range(1, 9).map(() => ({ type: "diff", payload: { blob: "y".repeat(120_000) } })),
        }),
        Code.ResourceExhausted,
        "PAYLOAD_TOO_LARGE",
      );
      await rejectsWith(
        fx.client.runs.appendRunEvents({
          runId,
          events: range(1, 51).map(() => ({ type: "diff", payload: {} })),
        }),
        Code.ResourceExhausted,
        "TOO_MANY_EVENTS",
      );
      const { run } = await fx.client.runs.getRun({ runId });
      assert.equal(run?.lastEventSeq, 0n);
    });

    it("ListRunEvents cuts pages by size too, so a page stays under gRPC's 4 MiB message limit", async () => {
      const runId = await newRun();
      for (let batch = 0; batch < 5; batch++) {
        await fx.client.runs.appendRunEvents({
          runId,
          events: range(1, 8).map((i) => ({
            type: "diff",
            payload: { batch, i, blob: "z".repeat(120_000) },
          })),
        });
      }
      const pages: number[][] = [];
      let pageToken = "";
      do {
        const page = await fx.client.runs.listRunEvents({ runId, pageSize: 1000, pageToken });
        pages.push(page.events.map((e) => Number(e.seq)));
        pageToken = page.nextPageToken;
      } while (pageToken !== "");
      assert.ok(pages.length >= 2, `40 events of 120 kB take more than one page (got ${pages.length})`);
      assert.ok((pages[0]?.length ?? 0) <= 27, "a page holds about 3 MiB of payload");
      assert.deepEqual(pages.flat(), range(1, 40));
    });

    it("the terminal event type is reserved for the server", async () => {
      const runId = await newRun();
      await rejectsWith(
        fx.client.runs.appendRunEvents({ runId, events: [{ type: "terminal_status", payload: {} }] }),
        Code.InvalidArgument,
        "RESERVED_EVENT_TYPE",
      );
    });

    it("appending to a terminal run is FAILED_PRECONDITION; to an unknown run NOT_FOUND", async () => {
      const runId = await newRun();
      await fx.client.runs.finishRun({ runId, status: RunStatus.FAILED, failureKind: "boom" });
      await rejectsWith(
        fx.client.runs.appendRunEvents({ runId, events: [{ type: "diff", payload: {} }] }),
        Code.FailedPrecondition,
        "RUN_TERMINAL",
      );
      await rejectsWith(
        fx.client.runs.appendRunEvents({ runId: randomUUID(), events: [{ type: "diff", payload: {} }] }),
        Code.NotFound,
        "RUN_NOT_FOUND",
      );
    });

    it("32 concurrent appenders on one run get seqs 1..N with every event exactly once", async () => {
      const runId = await newRun();
      const appenders = 32;
      const batches = 4;
      const perBatch = 3;
      const results = await Promise.all(
        range(0, appenders - 1).map(async (a) => {
          const got: Array<{ first: bigint; last: bigint; b: number }> = [];
          for (let b = 0; b < batches; b++) {
            const res = await fx.client.runs.appendRunEvents({
              runId,
              events: range(0, perBatch - 1).map((i) => ({ type: "command_output", payload: { a, b, i } })),
            });
            got.push({ first: res.firstSeq, last: res.lastSeq, b });
          }
          return got;
        }),
      );
      const total = appenders * batches * perBatch;
      const events = [];
      let pageToken = "";
      do {
        const page = await fx.client.runs.listRunEvents({ runId, pageSize: 1000, pageToken });
        events.push(...page.events);
        pageToken = page.nextPageToken;
      } while (pageToken !== "");
      assert.deepEqual(
        events.map((e) => e.seq),
        range(1, total).map(BigInt),
        "gapless 1..N",
      );
      const keys = events.map((e) => `${e.payload?.a}/${e.payload?.b}/${e.payload?.i}`);
      assert.equal(new Set(keys).size, total, "each event once");
      // Each batch got a contiguous range holding exactly its own events, in order.
      for (const [a, got] of results.entries()) {
        for (const { first, last, b } of got) {
          assert.equal(last - first + 1n, BigInt(perBatch));
          for (let i = 0; i < perBatch; i++) {
            assert.deepEqual(events[Number(first) - 1 + i]?.payload, { a, b, i });
          }
        }
      }
    });

    it("AppendRunEvents with a request_id is idempotent, also when retries race", async () => {
      const runId = await newRun();
      const requestId = randomUUID();
      const events: Array<{ type: string; payload: JsonObject }> = [
        { type: "assistant_message", payload: { text: "once", meta: { x: 1, y: 2 } } },
        { type: "diff", payload: {} },
      ];
      const attempts = await Promise.all(
        range(1, 8).map(() => fx.client.runs.appendRunEvents({ runId, events, requestId })),
      );
      for (const res of attempts) assert.deepEqual([res.firstSeq, res.lastSeq], [1n, 2n]);
      const retry = await fx.client.runs.appendRunEvents({
        runId,
        requestId,
        events: [
          { type: "assistant_message", payload: { text: "once", meta: { y: 2, x: 1 } } },
          { type: "diff", payload: {} },
        ],
      });
      assert.deepEqual([retry.firstSeq, retry.lastSeq], [1n, 2n], "key order does not make a new request");
      await rejectsWith(
        fx.client.runs.appendRunEvents({
          runId,
          requestId,
          events: [{ type: "diff", payload: { other: true } }],
        }),
        Code.AlreadyExists,
        "REQUEST_ID_REUSED",
      );
      const { events: stored } = await fx.client.runs.listRunEvents({ runId });
      assert.equal(stored.length, 2);
    });

    it("a retried idempotent append answers with its first result even after the run ended", async () => {
      const runId = await newRun();
      const requestId = randomUUID();
      const events = [{ type: "diff", payload: { once: true } }];
      const first = await fx.client.runs.appendRunEvents({ runId, events, requestId });
      await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
      const retry = await fx.client.runs.appendRunEvents({ runId, events, requestId });
      assert.deepEqual([retry.firstSeq, retry.lastSeq], [first.firstSeq, first.lastSeq]);
      await rejectsWith(
        fx.client.runs.appendRunEvents({ runId, events, requestId: randomUUID() }),
        Code.FailedPrecondition,
        "RUN_TERMINAL",
      );
    });

    it("a plain grpc-js client appends and lists with the same semantics", async () => {
      const grpc = grpcRunService(fx.server.app.port);
      try {
        const created = await unary<{ run: { run_id: string } }>(grpc, "CreateRun", { run: {} });
        const runId = created.run.run_id;
        const appended = await unary<{ first_seq: string; last_seq: string }>(grpc, "AppendRunEvents", {
          run_id: runId,
          events: [{ type: "diff", payload: struct({ path: "a.ts", token: "t" }) }],
        });
        assert.deepEqual([appended.first_seq, appended.last_seq], ["1", "1"]);
        const listed = await unary<{ events: Array<{ seq: string; payload: unknown }> }>(
          grpc,
          "ListRunEvents",
          {
            run_id: runId,
          },
        );
        assert.equal(listed.events[0]?.seq, "1");
        assert.deepEqual(unstruct(listed.events[0]?.payload), { path: "a.ts", token: "[REDACTED]" });
        const err = await unary(grpc, "AppendRunEvents", {
          run_id: runId,
          events: [{ type: "terminal_status", payload: struct({}) }],
        }).then(
          () => assert.fail("expected an error"),
          (e: GrpcError) => e,
        );
        assert.equal(err.code, Code.InvalidArgument);
        assert.equal(errorReason(err), "RESERVED_EVENT_TYPE");
      } finally {
        grpc.close();
      }
    });
  });
}
