import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { create, type DescMessage, type MessageInitShape, toJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import fc from "fast-check";
import { RunService } from "../gen/agentstore/v1/run_service_pb.ts";
import { RunStatus } from "../src/client/index.ts";
import { backends } from "./helpers/databases.ts";
import { useServer } from "./helpers/servers.ts";

/**
 * Property: no request, however hostile, makes the server answer INTERNAL, UNKNOWN, DATA_LOSS or
 * UNAVAILABLE (the database is up the whole time). Requests mix RunService's string, integer,
 * timestamp, page-token and JSON inputs, and go half over binary gRPC (the typed client), half as
 * Connect JSON (where lone surrogates and any escape reach the server verbatim).
 *
 * FUZZ_RUNS sets the requests per database (default 5,000: 10,000 over both); FUZZ_SEED replays a run.
 */
const RUNS = Number(process.env.FUZZ_RUNS ?? 5_000);
const SEED = process.env.FUZZ_SEED === undefined ? undefined : Number(process.env.FUZZ_SEED);
const FORBIDDEN = new Set([Code.Internal, Code.Unknown, Code.DataLoss, Code.Unavailable]);

const utf16Unit = fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c));
const hostileString = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.string({ unit: utf16Unit, maxLength: 20 }),
  fc.constantFrom(
    "",
    "\u0000",
    "a\u0000b",
    "\udfff\ud800",
    "\ud800",
    "x".repeat(300),
    "'; drop table runs; --",
    "\\",
    "%00",
  ),
);
const int64 = fc.oneof(
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
  fc.constantFrom(0n, -1n, 2n ** 53n + 1n, 2n ** 63n - 1n, -(2n ** 63n)),
);
const nonNegativeInt64 = fc.oneof(
  fc.bigInt({ min: 0n, max: 2n ** 63n - 1n }),
  fc.constantFrom(0n, 9007199254740993n, 2n ** 63n - 1n),
);
const int32 = fc.oneof(
  fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
  fc.constantFrom(0, -1, 1, 1000, 10_000),
);
const timestamp = fc.record({
  seconds: fc.oneof(int64, fc.bigInt({ min: -62_135_596_900n, max: 253_402_300_900n })),
  nanos: fc.oneof(
    fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
    fc.integer({ min: 0, max: 999_999_999 }),
  ),
});
const jsonObject = fc.dictionary(
  hostileString,
  fc.oneof(
    fc.jsonValue({ maxDepth: 3 }),
    hostileString,
    fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, -0, 1e308),
  ),
  { maxKeys: 4 },
) as fc.Arbitrary<Record<string, never>>;
const usage = fc.record(
  {
    inputTokens: int64,
    outputTokens: int64,
    totalTokens: nonNegativeInt64,
    llmCallCount: nonNegativeInt64,
    leadAgentTokens: int64,
    subagentTokens: nonNegativeInt64,
    middlewareTokens: nonNegativeInt64,
  },
  { requiredKeys: [] },
);

type Request = { method: keyof typeof RunService.method; init: Record<string, unknown> };

for (const backend of await backends()) {
  describe(`fuzzing RunService on ${backend.name}`, { skip: backend.skip }, () => {
    const fx = useServer(backend);
    const ids = { active: "", terminal: "", token: "" };

    before(async () => {
      ids.active = (await fx.client.runs.createRun({ run: { threadId: "fuzz" } })).run?.runId ?? "";
      ids.terminal = (await fx.client.runs.createRun({ run: {} })).run?.runId ?? "";
      await fx.client.runs.appendRunEvents({
        runId: ids.terminal,
        events: [{ type: "diff", payload: { a: 1 } }],
      });
      await fx.client.runs.finishRun({ runId: ids.terminal, status: RunStatus.COMPLETED });
      for (let i = 0; i < 3; i++) await fx.client.runs.createRun({ run: {} });
      ids.token = (await fx.client.runs.listRuns({ pageSize: 1 })).nextPageToken;
    });

    // Thousands of calls: on a loaded machine this takes minutes, more than the suite's default bound.
    it(`answers ${RUNS} hostile requests without INTERNAL or UNAVAILABLE`, { timeout: 900_000 }, async () => {
      const runId = fc.oneof(
        fc.constantFrom(ids.active, ids.terminal, ids.active.toUpperCase()),
        fc.uuid(),
        hostileString,
      );
      const pageToken = fc.oneof(
        fc.constant(""),
        fc.constant(ids.token),
        hostileString,
        fc.jsonValue().map((v) => Buffer.from(JSON.stringify(v)).toString("base64url")),
        fc
          .tuple(fc.jsonValue(), fc.constantFrom(...ids.token.split(".").slice(1)))
          .map(
            ([p, mac]) =>
              `${Buffer.from(JSON.stringify({ k: "runs", f: "x", p })).toString("base64url")}.${mac}`,
          ),
      );
      const status = fc.integer({ min: -1, max: 9 }) as fc.Arbitrary<RunStatus>;
      const types = fc.array(fc.oneof(hostileString, fc.constantFrom("diff", "terminal_status")), {
        maxLength: 3,
      });
      const request: fc.Arbitrary<Request> = fc.oneof(
        fc.record({
          method: fc.constant("createRun" as const),
          init: fc.record({
            run: fc.record(
              {
                threadId: hostileString,
                sessionId: hostileString,
                userId: hostileString,
                modelName: hostileString,
                metadata: jsonObject,
                input: jsonObject,
                multitaskStrategy: fc.integer({ min: 0, max: 5 }),
              },
              { requiredKeys: [] },
            ),
            requestId: hostileString,
          }),
        }),
        fc.record({ method: fc.constant("getRun" as const), init: fc.record({ runId }) }),
        fc.record({
          method: fc.constant("listRuns" as const),
          init: fc.record({
            threadId: hostileString,
            userId: hostileString,
            status,
            pageSize: int32,
            pageToken,
          }),
        }),
        fc.record({
          method: fc.constant("cancelRun" as const),
          init: fc.record({ runId, reason: hostileString }),
        }),
        fc.record({
          method: fc.constant("finishRun" as const),
          init: fc.record(
            {
              runId,
              status,
              usage,
              messageCount: int64,
              failureKind: hostileString,
              lastAiMessage: hostileString,
            },
            { requiredKeys: ["runId", "status"] },
          ),
        }),
        fc.record({
          method: fc.constant("updateRunProgress" as const),
          init: fc.record(
            { runId, usage, messageCount: int64, modelName: hostileString, firstHumanMessage: hostileString },
            { requiredKeys: ["runId"] },
          ),
        }),
        fc.record({
          method: fc.constant("getThreadUsage" as const),
          init: fc.record({ threadId: hostileString, includeActive: fc.boolean() }),
        }),
        fc.record({
          method: fc.constant("listInflightRuns" as const),
          init: fc.record({ createdBefore: timestamp, pageSize: int32, pageToken }, { requiredKeys: [] }),
        }),
        fc.record({
          method: fc.constant("appendRunEvents" as const),
          init: fc.record({
            runId,
            events: fc.array(
              fc.record({ type: fc.oneof(hostileString, fc.constant("diff")), payload: jsonObject }),
              {
                maxLength: 3,
              },
            ),
            requestId: hostileString,
          }),
        }),
        fc.record({
          method: fc.constant("listRunEvents" as const),
          init: fc.record({ runId, afterSeq: int64, pageSize: int32, pageToken, types }),
        }),
        fc.record({
          method: fc.constant("streamRunEvents" as const),
          init: fc.record({ runId, afterSeq: int64, types }),
        }),
        fc.record({
          method: fc.constant("watchRuns" as const),
          init: fc.record({ afterVersion: int64, fromNow: fc.boolean(), threadId: hostileString }),
        }),
      );

      const codes = new Map<string, number>();
      await fc.assert(
        fc.asyncProperty(request, fc.boolean(), async ({ method, init }, asJson) => {
          const code = asJson ? await callJson(fx.server.url, method, init) : await callGrpc(method, init);
          if (code === undefined) return; // the client itself refused to encode it
          const name = code === OK ? "Ok" : (Code[code] ?? String(code));
          codes.set(name, (codes.get(name) ?? 0) + 1);
          assert.ok(!FORBIDDEN.has(code), `${String(method)} answered ${Code[code]} for ${show(init)}`);
        }),
        { numRuns: RUNS, seed: SEED, endOnFailure: true },
      );
      console.log(`fuzz on ${backend.name}: ${JSON.stringify(Object.fromEntries(codes))}`);
      // The server is still sound: health SERVING and a normal call works.
      assert.equal(fx.server.app.health.serving, true);
      assert.ok((await fx.client.runs.createRun({ run: {} })).run?.runId);
    });

    /** The code a typed gRPC call ends with (OK included), or undefined if it could not be sent. */
    async function callGrpc(
      method: Request["method"],
      init: Record<string, unknown>,
    ): Promise<Code | undefined> {
      const rpc = fx.client.runs[method] as (req: unknown, options: unknown) => unknown;
      const signal = AbortSignal.timeout(
        RunService.method[method].methodKind === "server_streaming" ? 100 : 10_000,
      );
      try {
        const result = rpc.call(fx.client.runs, init, { signal });
        if (isAsyncIterable(result)) {
          // Streams: the first message (or the end, or an error) is enough.
          for await (const _ of result) break;
        } else {
          await result;
        }
        return OK;
      } catch (err) {
        if (signal.aborted) return Code.Canceled;
        return ConnectError.from(err).code;
      }
    }
  });
}

/** Connect's Code has no OK; 0 stands for it here. */
const OK = 0 as Code;

/** The code of a Connect JSON call, or undefined if the request has no JSON form. */
async function callJson(baseUrl: string, method: Request["method"], init: Record<string, unknown>) {
  const desc = RunService.method[method];
  let body: string;
  try {
    body = toJsonString(
      desc.input as DescMessage,
      create(desc.input as DescMessage, init as MessageInitShape<DescMessage>),
    );
  } catch {
    return undefined;
  }
  const streaming = desc.methodKind === "server_streaming";
  // A live stream has nothing to say yet; a moment is enough to see that it did not fail.
  const signal = AbortSignal.timeout(streaming ? 100 : 10_000);
  const res = await fetch(`${baseUrl}/agentstore.v1.RunService/${desc.name}`, {
    method: "POST",
    headers: { "content-type": streaming ? "application/connect+json" : "application/json" },
    body: streaming ? envelope(body) : body,
    signal,
  }).catch(() => undefined);
  if (res === undefined) return Code.Canceled;
  if (streaming) {
    // The end-of-stream envelope carries the error, if any; read until it or until one message.
    const text = await readSome(res);
    const match = /"code":"([a-z_]+)"/.exec(text);
    return match ? codeOf(match[1] ?? "") : OK;
  }
  if (res.ok) {
    await res.arrayBuffer();
    return OK;
  }
  const json = (await res.json().catch(() => ({}))) as { code?: string };
  return codeOf(json.code ?? "unknown");
}

function envelope(json: string): Uint8Array {
  const data = Buffer.from(json);
  const out = Buffer.alloc(5 + data.length);
  out.writeUInt32BE(data.length, 1);
  data.copy(out, 5);
  return out;
}

async function readSome(res: Response): Promise<string> {
  const reader = res.body?.getReader();
  if (reader === undefined) return "";
  let text = "";
  try {
    const { value } = await reader.read();
    text += Buffer.from(value ?? []).toString("latin1");
  } catch {
    // A timeout mid-stream: whatever arrived is enough.
  } finally {
    await reader.cancel().catch(() => {});
  }
  return text;
}

function codeOf(name: string): Code {
  const camel = name.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
  const key = camel.charAt(0).toUpperCase() + camel.slice(1);
  return (Code as unknown as Record<string, Code>)[key] ?? Code.Unknown;
}

function isAsyncIterable(value: unknown): value is AsyncIterable<unknown> {
  return typeof value === "object" && value !== null && Symbol.asyncIterator in value;
}

function show(init: unknown): string {
  return JSON.stringify(init, (_, v) => (typeof v === "bigint" ? `${v}n` : v)).slice(0, 500);
}
