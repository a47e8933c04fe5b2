import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fromBinary } from "@bufbuild/protobuf";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.ts";
import { Code, RunStatus } from "../src/client/index.ts";
import { rejectsWith } from "./helpers/assertions.ts";
import { backends } from "./helpers/databases.ts";
import {
  errorReason,
  type GrpcClient,
  type GrpcError,
  grpcRunService,
  struct,
  unary,
} from "./helpers/grpc-js.ts";
import { useServer } from "./helpers/servers.ts";

/**
 * The defects an outside probe found (issue #7), each over both wire protocols: Connect with JSON
 * (as curl or a browser sends it, POST with JSON text, so escapes like \u0000 reach the server
 * verbatim) and binary gRPC from a plain grpc-js client. Every one must be INVALID_ARGUMENT (or
 * the code named) with a reason, and store nothing.
 */

interface WireAnswer {
  code: string;
  reason: string | undefined;
  body: Record<string, unknown>;
}

/** A Connect unary call with a JSON body given as raw text. */
async function connectJson(baseUrl: string, method: string, jsonText: string): Promise<WireAnswer> {
  const res = await fetch(`${baseUrl}/agentstore.v1.RunService/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: jsonText,
  });
  const body = (await res.json()) as Record<string, unknown>;
  if (res.ok) return { code: "ok", reason: undefined, body };
  const details = (body.details ?? []) as Array<{ type: string; value: string }>;
  const info = details.find((d) => d.type === "google.rpc.ErrorInfo");
  const reason =
    info === undefined ? undefined : fromBinary(ErrorInfoSchema, Buffer.from(info.value, "base64")).reason;
  return { code: String(body.code), reason, body };
}

async function grpcCall(grpc: GrpcClient, method: string, request: unknown): Promise<WireAnswer> {
  try {
    const body = await unary(grpc, method, request);
    return { code: "ok", reason: undefined, body };
  } catch (err) {
    const e = err as GrpcError;
    return { code: Code[e.code] ?? String(e.code), reason: errorReason(e), body: {} };
  }
}

const expectInvalid = (answer: WireAnswer, reason: string, what: string) => {
  assert.equal(
    answer.code.toLowerCase().replace(/_/g, ""),
    "invalidargument",
    `${what}: ${JSON.stringify(answer)}`,
  );
  assert.equal(answer.reason, reason, `${what}: reason`);
};

for (const backend of await backends()) {
  describe(`bad input on ${backend.name}`, { skip: backend.skip }, () => {
    // The safety poll is an hour away, so that no test here can pass by waiting for it.
    const fx = useServer(backend, { AGENTSTORE_STREAM_POLL_MS: "3600000" });
    const withGrpc = async (use: (grpc: GrpcClient) => Promise<void>) => {
      const grpc = grpcRunService(fx.server.app.port);
      try {
        await use(grpc);
      } finally {
        grpc.close();
      }
    };
    const runCount = async () => {
      let count = 0;
      let pageToken = "";
      do {
        const page = await fx.client.runs.listRuns({ pageSize: 500, pageToken });
        count += page.runs.length;
        pageToken = page.nextPageToken;
      } while (pageToken !== "");
      return count;
    };

    it("1. forged page tokens are INVALID_PAGE_TOKEN, never INTERNAL", async () => {
      for (let i = 0; i < 3; i++) await fx.client.runs.createRun({ run: {} });
      const { nextPageToken } = await fx.client.runs.listRuns({ pageSize: 1 });
      const [body = "", mac = ""] = nextPageToken.split(".");
      const decoded = JSON.parse(Buffer.from(body, "base64url").toString("utf8"));
      const forge = (p: unknown) => Buffer.from(JSON.stringify({ ...decoded, p })).toString("base64url");
      const forgeries = [
        `${forge(["garbage", "zz"])}.${mac}`,
        forge(["garbage", "zz"]),
        `${forge(["garbage", "garbage", "x"])}.${mac}`,
        Buffer.from(
          JSON.stringify({ k: "runs", f: decoded.f, p: ["2026-01-01T00:00:00.000Z", "x"] }),
        ).toString("base64url"),
        "not a token",
      ];
      for (const token of forgeries) {
        expectInvalid(
          await connectJson(fx.server.url, "ListRuns", JSON.stringify({ pageSize: 1, pageToken: token })),
          "INVALID_PAGE_TOKEN",
          `ListRuns ${token}`,
        );
        expectInvalid(
          await connectJson(fx.server.url, "ListInflightRuns", JSON.stringify({ pageToken: token })),
          "INVALID_PAGE_TOKEN",
          `ListInflightRuns ${token}`,
        );
        await withGrpc(async (grpc) => {
          expectInvalid(
            await grpcCall(grpc, "ListRuns", { page_size: 1, page_token: token }),
            "INVALID_PAGE_TOKEN",
            "grpc",
          );
          expectInvalid(
            await grpcCall(grpc, "ListInflightRuns", { page_token: token }),
            "INVALID_PAGE_TOKEN",
            "grpc",
          );
        });
      }
      // The genuine token still works.
      const next = await fx.client.runs.listRuns({ pageSize: 1, pageToken: nextPageToken });
      assert.equal(next.runs.length, 1);
    });

    it("2. a NUL in any string field is INVALID_ARGUMENT, not UNAVAILABLE, and stores nothing", async () => {
      const before = await runCount();
      const { run } = await fx.client.runs.createRun({ run: {} });
      const runId = run?.runId ?? "";
      const cases: Array<[string, string]> = [
        ["ListRuns", '{"threadId":"a\\u0000b"}'],
        ["CreateRun", '{"run":{"threadId":"a\\u0000b"}}'],
        ["CreateRun", '{"run":{},"requestId":"r\\u0000"}'],
        ["CancelRun", `{"runId":"${runId}","reason":"x\\u0000y"}`],
        ["GetThreadUsage", '{"threadId":"t\\u0000"}'],
        ["UpdateRunProgress", `{"runId":"${runId}","modelName":"m\\u0000"}`],
      ];
      for (const [method, json] of cases) {
        expectInvalid(
          await connectJson(fx.server.url, method, json),
          "INVALID_ARGUMENT",
          `${method} ${json}`,
        );
      }
      await withGrpc(async (grpc) => {
        expectInvalid(
          await grpcCall(grpc, "ListRuns", { thread_id: "a\u0000b" }),
          "INVALID_ARGUMENT",
          "grpc ListRuns",
        );
        expectInvalid(
          await grpcCall(grpc, "CreateRun", { run: { thread_id: "a\u0000b" } }),
          "INVALID_ARGUMENT",
          "grpc",
        );
        expectInvalid(
          await grpcCall(grpc, "CancelRun", { run_id: runId, reason: "x\u0000" }),
          "INVALID_ARGUMENT",
          "grpc CancelRun",
        );
      });
      const { run: after } = await fx.client.runs.getRun({ runId });
      assert.equal(after?.status, RunStatus.PENDING, "the run was neither cancelled nor progressed");
      assert.equal(after?.modelName, "");
      assert.equal(await runCount(), before + 1, "no run was created by a refused request");
    });

    it("3 and 4. NUL characters and lone surrogates inside JSON payloads are INVALID_ARGUMENT", async () => {
      const { run } = await fx.client.runs.createRun({ run: {} });
      const runId = run?.runId ?? "";
      const payloads = [
        '{"a":"b\\u0000c"}',
        '{"a\\u0000":"b"}',
        '{"t":"\\udfff\\ud800"}',
        '{"nested":{"list":["ok","\\ud800"]}}',
      ];
      for (const payload of payloads) {
        expectInvalid(
          await connectJson(
            fx.server.url,
            "AppendRunEvents",
            `{"runId":"${runId}","events":[{"type":"diff","payload":${payload}}]}`,
          ),
          "INVALID_ARGUMENT",
          payload,
        );
      }
      expectInvalid(
        await connectJson(fx.server.url, "CreateRun", '{"run":{"metadata":{"k\\u0000":1}}}'),
        "INVALID_ARGUMENT",
        "metadata key with NUL",
      );
      await withGrpc(async (grpc) => {
        expectInvalid(
          await grpcCall(grpc, "AppendRunEvents", {
            run_id: runId,
            events: [{ type: "diff", payload: struct({ a: "b\u0000c" }) }],
          }),
          "INVALID_ARGUMENT",
          "grpc payload NUL",
        );
        // Binary protobuf can carry NaN, which JSON cannot.
        expectInvalid(
          await grpcCall(grpc, "AppendRunEvents", {
            run_id: runId,
            events: [{ type: "diff", payload: { fields: { n: { numberValue: Number.NaN } } } }],
          }),
          "INVALID_ARGUMENT",
          "grpc payload NaN",
        );
      });
      const { run: after } = await fx.client.runs.getRun({ runId });
      assert.equal(after?.lastEventSeq, 0n, "no event was stored");
    });

    it("5. int64 counters stay exact end to end; negative ones are refused", async () => {
      const { run } = await fx.client.runs.createRun({ run: { threadId: `t-${crypto.randomUUID()}` } });
      const runId = run?.runId ?? "";
      const progress = await connectJson(
        fx.server.url,
        "UpdateRunProgress",
        `{"runId":"${runId}","usage":{"inputTokens":"9007199254740993","totalTokens":"9223372036854775807"},"messageCount":"9007199254740993"}`,
      );
      assert.equal(progress.code, "ok", JSON.stringify(progress));
      const { run: read } = await fx.client.runs.getRun({ runId });
      assert.equal(read?.usage?.inputTokens, 9007199254740993n);
      assert.equal(read?.usage?.totalTokens, 9223372036854775807n);
      assert.equal(read?.messageCount, 9007199254740993n);
      await withGrpc(async (grpc) => {
        const finished = await grpcCall(grpc, "FinishRun", {
          run_id: runId,
          status: "RUN_STATUS_COMPLETED",
          usage: { output_tokens: "9223372036854775806", total_tokens: "9223372036854775807" },
          message_count: "9223372036854775807",
        });
        assert.equal(finished.code, "ok", JSON.stringify(finished));
        expectInvalid(
          await grpcCall(grpc, "UpdateRunProgress", { run_id: runId, usage: { input_tokens: "-1" } }),
          "INVALID_ARGUMENT",
          "negative tokens",
        );
      });
      const { run: done } = await fx.client.runs.getRun({ runId });
      assert.equal(done?.usage?.outputTokens, 9223372036854775806n);
      assert.equal(done?.messageCount, 9223372036854775807n);

      // Two runs whose totals sum past int64: OUT_OF_RANGE, not a wrapped or rounded number.
      const threadId = read?.threadId ?? "";
      const { run: second } = await fx.client.runs.createRun({ run: { threadId } });
      await fx.client.runs.finishRun({
        runId: second?.runId ?? "",
        status: RunStatus.COMPLETED,
        usage: { totalTokens: 9223372036854775807n },
      });
      await rejectsWith(fx.client.runs.getThreadUsage({ threadId }), Code.OutOfRange, "USAGE_OVERFLOW");
    });

    it("6. timestamps outside what the database holds are INVALID_ARGUMENT over binary gRPC", async () => {
      await withGrpc(async (grpc) => {
        for (const seconds of ["253402300800", String(2n ** 62n), "-62135596801"]) {
          expectInvalid(
            await grpcCall(grpc, "ListInflightRuns", { created_before: { seconds, nanos: 0 } }),
            "INVALID_ARGUMENT",
            `seconds ${seconds}`,
          );
        }
        expectInvalid(
          await grpcCall(grpc, "ListInflightRuns", { created_before: { seconds: "0", nanos: -1 } }),
          "INVALID_ARGUMENT",
          "negative nanos",
        );
        const edge = await grpcCall(grpc, "ListInflightRuns", {
          created_before: { seconds: "253402300799", nanos: 999_999_999 },
        });
        assert.equal(edge.code, "ok", `the last valid instant is accepted: ${JSON.stringify(edge)}`);
      });
      const json = await connectJson(
        fx.server.url,
        "ListInflightRuns",
        '{"createdBefore":"10000-01-01T00:00:00Z"}',
      );
      assert.equal(json.code, "invalid_argument");
    });

    it("8. a reader that fell behind catches up at database speed, not at the poll interval", async () => {
      const { run } = await fx.client.runs.createRun({ run: {} });
      const runId = run?.runId ?? "";
      await fx.client.runs.appendRunEvents({ runId, events: [{ type: "diff", payload: { first: true } }] });
      const stream = fx.client.runs.streamRunEvents({ runId })[Symbol.asyncIterator]();
      assert.equal((await stream.next()).value?.event?.seq, 1n);
      const blob = "x".repeat(200 * 1024);
      for (let b = 0; b < 6; b++) {
        await fx.client.runs.appendRunEvents({
          runId,
          events: Array.from({ length: 16 }, (_, i) => ({ type: "command_output", payload: { b, i, blob } })),
        });
      }
      await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
      // The poll is an hour away (see the fixture): a reader waiting for it would hang until the
      // test times out, so finishing at all proves it never waited for it.
      const seqs: number[] = [1];
      for (;;) {
        const next = await stream.next();
        if (next.done) break;
        seqs.push(Number(next.value.event?.seq));
      }
      assert.deepEqual(
        seqs,
        Array.from({ length: 98 }, (_, i) => i + 1),
      );
    });
  });
}
