import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, type DescMessage, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { createClient as createConnectClient } from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { ClientReadableStream } from "@grpc/grpc-js";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.ts";
import {
  AppendRunEventsRequestSchema,
  Code,
  CreateRunRequestSchema,
  RunService,
  RunStatus,
} from "../src/client/index.ts";
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
function connectJson(baseUrl: string, method: string, jsonText: string): Promise<WireAnswer> {
  return connectPost(baseUrl, method, "application/json", jsonText);
}

/**
 * A Connect unary call with the body as given: JSON text, or binary protobuf bytes. An error is
 * JSON either way (the Connect protocol answers unary errors in JSON); a binary answer is not read.
 */
async function connectPost(
  baseUrl: string,
  method: string,
  contentType: "application/json" | "application/proto",
  requestBody: string | Uint8Array<ArrayBuffer>,
): Promise<WireAnswer> {
  const res = await fetch(`${baseUrl}/agentstore.v1.RunService/${method}`, {
    method: "POST",
    headers: { "content-type": contentType },
    body: requestBody,
  });
  if (res.ok && contentType === "application/proto") {
    await res.arrayBuffer();
    return { code: "ok", reason: undefined, body: {} };
  }
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

/** A binary gRPC unary call from grpc-js with the request bytes sent as given, unchecked. */
function grpcRawCall(grpc: GrpcClient, method: string, bytes: Buffer): Promise<WireAnswer> {
  return new Promise((resolve) => {
    grpc.makeUnaryRequest<Buffer, Buffer>(
      `/agentstore.v1.RunService/${method}`,
      (b) => b,
      (b) => b,
      bytes,
      (err) =>
        resolve(
          err === null
            ? { code: "ok", reason: undefined, body: {} }
            : { code: Code[err.code] ?? String(err.code), reason: errorReason(err), body: {} },
        ),
    );
  });
}

/** Where withRawBytes puts its bytes: three ASCII control characters, three bytes in UTF-8. */
const MARK = "\u0001\u0002\u0003";

/**
 * The message in binary protobuf with the UTF-8 of MARK (in one string, key or value) replaced by
 * three bytes given: the way to put invalid UTF-8 on the wire, which no protobuf library writes.
 */
function withRawBytes<Desc extends DescMessage>(
  schema: Desc,
  init: MessageInitShape<Desc>,
  bytes: [number, number, number],
): Buffer {
  const encoded = Buffer.from(toBinary(schema, create(schema, init)));
  const at = encoded.indexOf(MARK);
  assert.ok(at >= 0 && at === encoded.lastIndexOf(MARK), "the mark is in the encoded message once");
  encoded.set(bytes, at);
  return encoded;
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
    // The safety poll is an hour away, so that no test here can pass by waiting for it. A stream
    // buffer of 8 events makes a reader that stops for a few events fall behind it, onto the path
    // that catches up from the database, without appending tens of megabytes.
    const fx = useServer(backend, {
      AGENTSTORE_STREAM_POLL_MS: "3600000",
      AGENTSTORE_STREAM_BUFFER_EVENTS: "8",
    });
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
          await grpcCall(grpc, "CreateRun", { run: {}, request_id: "r\u0000" }),
          "INVALID_ARGUMENT",
          "grpc CreateRun request_id",
        );
        expectInvalid(
          await grpcCall(grpc, "CancelRun", { run_id: runId, reason: "x\u0000" }),
          "INVALID_ARGUMENT",
          "grpc CancelRun",
        );
        expectInvalid(
          await grpcCall(grpc, "GetThreadUsage", { thread_id: "t\u0000" }),
          "INVALID_ARGUMENT",
          "grpc GetThreadUsage",
        );
        expectInvalid(
          await grpcCall(grpc, "UpdateRunProgress", { run_id: runId, model_name: "m\u0000" }),
          "INVALID_ARGUMENT",
          "grpc UpdateRunProgress model_name",
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
      const before = await runCount();
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
        expectInvalid(
          await grpcCall(grpc, "CreateRun", { run: { metadata: struct({ "k\u0000": 1 }) } }),
          "INVALID_ARGUMENT",
          "grpc metadata key with NUL",
        );
      });
      const { run: after } = await fx.client.runs.getRun({ runId });
      assert.equal(after?.lastEventSeq, 0n, "no event was stored");
      assert.equal(await runCount(), before, "no run was created by a refused request");
    });

    it("4. invalid UTF-8 over binary protobuf is INVALID_ARGUMENT, not INTERNAL, and stores nothing", async () => {
      // Binary protobuf carries UTF-8, so a lone surrogate arrives as the three bytes UTF-8 forbids
      // for it (ED BF BF for U+DFFF), or as any other malformed sequence; a client that does not
      // check its strings, or a hostile one, sends them. Over gRPC and over Connect with
      // application/proto both.
      const { run } = await fx.client.runs.createRun({ run: {} });
      const runId = run?.runId ?? "";
      const before = await runCount();
      const append = (bytes: [number, number, number], payload: Record<string, string>) =>
        withRawBytes(AppendRunEventsRequestSchema, { runId, events: [{ type: "diff", payload }] }, bytes);
      const euro: [number, number, number] = [0xe2, 0x82, 0xac];
      const surrogate: [number, number, number] = [0xed, 0xbf, 0xbf];
      const refused: Array<[string, string, Buffer]> = [
        ["payload value U+DFFF", "AppendRunEvents", append(surrogate, { t: MARK })],
        ["payload value U+D800", "AppendRunEvents", append([0xed, 0xa0, 0x80], { t: MARK })],
        ["payload value with byte FF", "AppendRunEvents", append([0x61, 0xff, 0x62], { t: MARK })],
        ["payload key U+DFFF", "AppendRunEvents", append(surrogate, { [MARK]: "v" })],
        [
          "metadata value U+DFFF",
          "CreateRun",
          withRawBytes(CreateRunRequestSchema, { run: { metadata: { k: MARK } } }, surrogate),
        ],
        [
          "thread_id with byte FF",
          "CreateRun",
          withRawBytes(CreateRunRequestSchema, { run: { threadId: MARK } }, [0x61, 0xff, 0x62]),
        ],
      ];
      const wrong: string[] = [];
      await withGrpc(async (grpc) => {
        // The same encoding with valid UTF-8 in place of the mark is stored, over both protocols:
        // the refusals below are about the bytes, not about how the messages were made.
        const valid = append(euro, { t: MARK });
        assert.equal((await grpcRawCall(grpc, "AppendRunEvents", valid)).code, "ok", "grpc valid");
        const connectValid = await connectPost(
          fx.server.url,
          "AppendRunEvents",
          "application/proto",
          new Uint8Array(valid),
        );
        assert.equal(connectValid.code, "ok", "connect valid");
        for (const [what, method, bytes] of refused) {
          const answers = [
            ["grpc", await grpcRawCall(grpc, method, bytes)],
            ["connect", await connectPost(fx.server.url, method, "application/proto", new Uint8Array(bytes))],
          ] as const;
          for (const [protocol, { code, reason }] of answers) {
            // Any code but INVALID_ARGUMENT, or one without an ErrorInfo reason, is wrong.
            if (code.toLowerCase().replace(/_/g, "") !== "invalidargument" || !reason) {
              wrong.push(`${protocol} ${method} ${what}: ${code} ${reason ?? "(no reason)"}`);
            }
          }
        }
      });
      const { events } = await fx.client.runs.listRunEvents({ runId });
      assert.deepEqual(
        events.map((e) => [e.seq, e.payload]),
        [
          [1n, { t: "\u20ac" }],
          [2n, { t: "\u20ac" }],
        ],
        "only the two valid events were stored",
      );
      assert.equal(await runCount(), before, "no run was created by a refused request");
      assert.deepEqual(wrong, [], "every request with invalid UTF-8 is INVALID_ARGUMENT with a reason");
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

    it("8. over binary gRPC (grpc-js) and the Connect protocol too, readers that fell behind catch up", {
      timeout: 60_000,
    }, async () => {
      const { run } = await fx.client.runs.createRun({ run: {} });
      const runId = run?.runId ?? "";
      await fx.client.runs.appendRunEvents({ runId, events: [{ type: "diff", payload: { first: true } }] });
      // Two readers with HTTP/2's default 64 KiB windows, so that a reader that stops reading stops
      // the server's sender within an event of 240 KB: a plain grpc-js client, and Connect with JSON.
      const grpc = grpcRunService(fx.server.app.port);
      const sessionManager = new Http2SessionManager(fx.server.url);
      const connect = createConnectClient(
        RunService,
        createConnectTransport({
          baseUrl: fx.server.url,
          httpVersion: "2",
          useBinaryFormat: false,
          sessionManager,
        }),
      );
      try {
        // A cast of the member keeps `this` (the client) in the call.
        const grpcCallStream = (
          grpc.StreamRunEvents as (req: unknown) => ClientReadableStream<{ event: { seq: string } }>
        )({ run_id: runId });
        const readers = {
          grpc: (async function* () {
            for await (const message of grpcCallStream) yield Number(message.event.seq);
          })(),
          connect: (async function* () {
            for await (const message of connect.streamRunEvents({ runId })) yield Number(message.event?.seq);
          })(),
        };
        // Each reads the first event, then stops reading.
        for (const reader of Object.values(readers)) assert.equal((await reader.next()).value, 1);
        // 2 x 16 events of 240 KB: each append is more than one database read of the stream holds
        // (2 MiB), and all of it is far more than the 8 events the stream buffer keeps.
        const blob = "x".repeat(240 * 1024);
        for (let b = 0; b < 2; b++) {
          await fx.client.runs.appendRunEvents({
            runId,
            events: Array.from({ length: 16 }, (_, i) => ({
              type: "command_output",
              payload: { b, i, blob },
            })),
          });
        }
        await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
        // Both read on; with the poll an hour away, ending at all proves neither waited for it.
        const rest = async (reader: AsyncGenerator<number>) => {
          const seqs = [1];
          for await (const seq of reader) seqs.push(seq);
          return seqs;
        };
        const [grpcSeqs, connectSeqs] = await Promise.all([rest(readers.grpc), rest(readers.connect)]);
        const all = Array.from({ length: 34 }, (_, i) => i + 1);
        assert.deepEqual(grpcSeqs, all, "grpc-js");
        assert.deepEqual(connectSeqs, all, "Connect");
      } finally {
        grpc.close();
        sessionManager.abort();
      }
    });
  });
}
