import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { before, describe, it } from "node:test";
import { Code, RunStatus } from "../src/client/index.ts";
import { badFieldsOf, collect, rejectsWith } from "./helpers/assertions.ts";
import { backends } from "./helpers/databases.ts";
import { errorReason, type GrpcError, grpcRunService, struct, unary } from "./helpers/grpc-js.ts";
import { useServer } from "./helpers/servers.ts";

for (const backend of await backends()) {
  describe(`input validation on ${backend.name}`, { skip: backend.skip }, () => {
    const fx = useServer(backend);
    let runId: string;
    before(async () => {
      runId = (await fx.client.runs.createRun({ run: {} })).run?.runId ?? "";
    });

    const invalid = async (call: Promise<unknown>, field: string) => {
      const err = await rejectsWith(call, Code.InvalidArgument, "INVALID_ARGUMENT");
      assert.ok(badFieldsOf(err).includes(field), `BadRequest names ${field}: ${err.message}`);
      assert.match(err.message, new RegExp(field.replace(/[[\]]/g, "\\$&")));
    };

    it("names the field and rule of every bad input with INVALID_ARGUMENT", async () => {
      await invalid(fx.client.runs.getRun({ runId: "not-a-uuid" }), "run_id");
      await invalid(fx.client.runs.createRun({}), "run");
      await invalid(fx.client.runs.createRun({ run: { threadId: "x".repeat(300) } }), "run.thread_id");
      await invalid(fx.client.runs.listRuns({ pageSize: -1 }), "page_size");
      await invalid(fx.client.runs.finishRun({ runId, status: RunStatus.RUNNING }), "status");
      await invalid(fx.client.runs.appendRunEvents({ runId, events: [] }), "events");
      await invalid(
        fx.client.runs.appendRunEvents({ runId, events: [{ type: "Bad Type" }] }),
        "events[0].type",
      );
      await invalid(fx.client.runs.listRunEvents({ runId, afterSeq: -1n }), "after_seq");
      await invalid(fx.client.runs.getThreadUsage({ threadId: "" }), "thread_id");
      await invalid(collect(fx.client.runs.streamRunEvents({ runId, types: ["UPPER"] })), "types[0]");
    });

    it("a bad request changes nothing", async () => {
      await rejectsWith(
        fx.client.runs.appendRunEvents({
          runId,
          events: [
            { type: "diff", payload: {} },
            { type: "no spaces", payload: {} },
          ],
        }),
        Code.InvalidArgument,
      );
      const { run } = await fx.client.runs.getRun({ runId });
      assert.equal(run?.lastEventSeq, 0n);
    });

    it("grpc-js callers get the same code and reason", async () => {
      const grpc = grpcRunService(fx.server.app.port);
      try {
        const err = (await unary(grpc, "AppendRunEvents", {
          run_id: runId,
          events: [{ type: "", payload: struct({}) }],
        }).catch((e: GrpcError) => e)) as GrpcError;
        assert.equal(err.code, Code.InvalidArgument);
        assert.equal(errorReason(err), "INVALID_ARGUMENT");
        assert.match(err.details, /events\[0\]\.type/);
        const missing = (await unary(grpc, "GetRun", { run_id: randomUUID() }).catch(
          (e: GrpcError) => e,
        )) as GrpcError;
        assert.equal(missing.code, Code.NotFound);
      } finally {
        grpc.close();
      }
    });
  });
}
