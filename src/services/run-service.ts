import { create, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { type RunEvent, RunEventSchema } from "../../gen/agentstore/v1/run_event_pb.ts";
import type { Run as RunProto } from "../../gen/agentstore/v1/run_pb.ts";
import {
  AppendRunEventsResponseSchema,
  CancelRunResponseSchema,
  CreateRunResponseSchema,
  DeleteRunResponseSchema,
  FinishRunResponseSchema,
  GetRunResponseSchema,
  GetThreadUsageResponseSchema,
  ListInflightRunsResponseSchema,
  ListRunEventsResponseSchema,
  ListRunsResponseSchema,
  ModelUsageSchema,
  type RunService,
  type StreamRunEventsResponse,
  StreamRunEventsResponseSchema,
  UpdateRunProgressResponseSchema,
  WatchRunsResponseSchema,
} from "../../gen/agentstore/v1/run_service_pb.ts";
import { DomainError, invalidArgument } from "../core/errors.ts";
import type { LogHub, VersionHub } from "../feed/stream-hub.ts";
import { tenantOf } from "../server/auth.ts";
import type { EventStore } from "../store/events/events.ts";
import { isTerminal, RUNS_STREAM } from "../store/runs/model.ts";
import type { RunStore } from "../store/runs/runs.ts";
import type { UsageStore } from "../store/runs/usage.ts";
import {
  dateFromProto,
  emptyToNull,
  emptyToUndefined,
  eventToProto,
  positionFromProto,
  runToProto,
  statusFromProto,
  strategyFromProto,
  terminalStatusFromProto,
  usageFromProto,
  usageToProto,
} from "./run-convert.ts";

export interface RunServiceDeps {
  runs: RunStore;
  events: EventStore;
  usage: UsageStore;
  /** Live run event logs (StreamRunEvents). */
  eventHub: LogHub<RunEvent>;
  /** Live run changes in version order (WatchRuns). */
  runHub: VersionHub<RunProto>;
}

/**
 * Run ids are UUIDs, which protovalidate accepts in either case. The store and the change feed key
 * runs by the canonical lower-case form, so every request's id is folded once, here.
 */
const runIdOf = (req: { runId: string }) => req.runId.toLowerCase();

/** Binary protobuf on the wire (gRPC, gRPC-Web, Connect with proto), as opposed to JSON. */
const isBinaryCodec = (contentType: string | null) => contentType === null || !contentType.includes("json");

const encodedResponses = new WeakMap<RunEvent, StreamRunEventsResponse>();

/**
 * The stream message of an event, serialized once however many streams send it: its `event`
 * field is carried as a pre-encoded unknown field, which protobuf's writer copies verbatim, so
 * each further stream costs a copy instead of a serialization. (JSON streams cannot carry unknown
 * fields and are sent the ordinary message.) Events live in the hub's buffer, shared by every
 * follower of the run; the cache goes with them.
 */
function encodedOnce(event: RunEvent): StreamRunEventsResponse {
  let response = encodedResponses.get(event);
  if (response === undefined) {
    const field = new BinaryWriter().bytes(toBinary(RunEventSchema, event)).finish();
    response = create(StreamRunEventsResponseSchema);
    response.$unknown = [{ no: EVENT_FIELD_NUMBER, wireType: WireType.LengthDelimited, data: field }];
    encodedResponses.set(event, response);
  }
  return response;
}

/** StreamRunEventsResponse.event */
const EVENT_FIELD_NUMBER = 1;

/**
 * RunService: (protovalidate and the request guards already ran in the interceptors) map -> store
 * -> map. The tenant always comes from the caller's credentials (tenantOf), never from the request.
 */
export function createRunService(deps: RunServiceDeps): ServiceImpl<typeof RunService> {
  const { runs, events, usage, eventHub, runHub } = deps;
  return {
    async createRun(req, ctx) {
      const run = req.run;
      if (run === undefined) throw invalidArgument("INVALID_ARGUMENT", "run is required");
      const created = await runs.createRun(
        tenantOf(ctx),
        {
          threadId: emptyToNull(run.threadId),
          sessionId: emptyToNull(run.sessionId),
          assistantId: emptyToNull(run.assistantId),
          userId: emptyToNull(run.userId),
          project: emptyToNull(run.project),
          modelName: emptyToNull(run.modelName),
          backendProfile: emptyToNull(run.backendProfile),
          metadata: run.metadata ?? {},
          input: run.input ?? {},
          multitaskStrategy: strategyFromProto(run.multitaskStrategy),
        },
        emptyToNull(req.requestId),
      );
      return create(CreateRunResponseSchema, { run: runToProto(created) });
    },

    async getRun(req, ctx) {
      return create(GetRunResponseSchema, {
        run: runToProto(await runs.getRun(tenantOf(ctx), runIdOf(req))),
      });
    },

    async listRuns(req, ctx) {
      const page = await runs.listRuns(
        tenantOf(ctx),
        {
          threadId: emptyToUndefined(req.threadId),
          sessionId: emptyToUndefined(req.sessionId),
          userId: emptyToUndefined(req.userId),
          status: statusFromProto(req.status),
        },
        req,
      );
      return create(ListRunsResponseSchema, {
        runs: page.items.map(runToProto),
        nextPageToken: page.nextPageToken,
      });
    },

    async cancelRun(req, ctx) {
      const { run, changed } = await runs.cancelRun(tenantOf(ctx), runIdOf(req), req.reason);
      return create(CancelRunResponseSchema, { run: runToProto(run), changed });
    },

    async deleteRun(req, ctx) {
      await runs.deleteRun(tenantOf(ctx), runIdOf(req), req.allowMissing);
      return create(DeleteRunResponseSchema, {});
    },

    async finishRun(req, ctx) {
      const { run, changed } = await runs.finishRun(tenantOf(ctx), runIdOf(req), {
        status: terminalStatusFromProto(req.status),
        failureKind: emptyToNull(req.failureKind),
        failureMessage: emptyToNull(req.failureMessage),
        usage: usageFromProto(req.usage),
        messageCount: req.messageCount,
        firstHumanMessage: req.firstHumanMessage,
        lastAiMessage: req.lastAiMessage,
      });
      return create(FinishRunResponseSchema, { run: runToProto(run), changed });
    },

    async updateRunProgress(req, ctx) {
      const run = await runs.updateRunProgress(tenantOf(ctx), runIdOf(req), {
        usage: usageFromProto(req.usage),
        messageCount: req.messageCount,
        firstHumanMessage: req.firstHumanMessage,
        lastAiMessage: req.lastAiMessage,
        modelName: req.modelName,
      });
      return create(UpdateRunProgressResponseSchema, { run: runToProto(run) });
    },

    async getThreadUsage(req, ctx) {
      const totals = await usage.threadUsage(tenantOf(ctx), req.threadId, req.includeActive);
      return create(GetThreadUsageResponseSchema, {
        threadId: req.threadId,
        totalRuns: totals.totalRuns,
        usage: usageToProto(totals.usage),
        byModel: Object.fromEntries(
          [...totals.byModel].map(([model, u]) => [model, create(ModelUsageSchema, u)]),
        ),
      });
    },

    async listInflightRuns(req, ctx) {
      const page = await runs.listInflightRuns(tenantOf(ctx), dateFromProto(req.createdBefore), req);
      return create(ListInflightRunsResponseSchema, {
        runs: page.items.map(runToProto),
        nextPageToken: page.nextPageToken,
      });
    },

    async appendRunEvents(req, ctx) {
      const result = await events.append(
        tenantOf(ctx),
        runIdOf(req),
        req.events.map((e) => ({ type: e.type, payload: e.payload ?? {} })),
        emptyToNull(req.requestId),
      );
      return create(AppendRunEventsResponseSchema, {
        firstSeq: BigInt(result.firstSeq),
        lastSeq: BigInt(result.lastSeq),
        createTime: timestampFromDate(result.createdAt),
      });
    },

    async listRunEvents(req, ctx) {
      const page = await events.list(
        tenantOf(ctx),
        runIdOf(req),
        { afterSeq: positionFromProto(req.afterSeq), types: req.types },
        req,
      );
      return create(ListRunEventsResponseSchema, {
        events: page.items.map(eventToProto),
        nextPageToken: page.nextPageToken,
      });
    },

    async *streamRunEvents(req, ctx) {
      const tenant = tenantOf(ctx);
      const run = await runs.getRun(tenant, runIdOf(req));
      if (req.afterSeq > BigInt(run.lastSeq)) {
        throw new DomainError(
          "OUT_OF_RANGE",
          "SEQ_OUT_OF_RANGE",
          `after_seq ${req.afterSeq} is beyond the run's last seq ${run.lastSeq}`,
          { run_id: run.id, last_seq: String(run.lastSeq) },
        );
      }
      const afterSeq = Number(req.afterSeq);
      if (isTerminal(run.status) && afterSeq >= run.lastSeq) return;
      const types = req.types.length > 0 ? new Set(req.types) : undefined;
      const binary = isBinaryCodec(ctx.requestHeader.get("content-type"));
      for await (const entry of eventHub.follow(tenant, run.id, afterSeq, ctx.signal)) {
        if (types === undefined || entry.terminal || types.has(entry.value.type)) {
          yield binary
            ? encodedOnce(entry.value)
            : create(StreamRunEventsResponseSchema, { event: entry.value });
        }
      }
    },

    async *watchRuns(req, ctx) {
      const tenant = tenantOf(ctx);
      if (req.fromNow && req.afterVersion !== 0n) {
        throw invalidArgument("INVALID_ARGUMENT", "after_version must be 0 when from_now is set", {
          field: "after_version",
        });
      }
      const filter = {
        threadId: emptyToUndefined(req.threadId),
        sessionId: emptyToUndefined(req.sessionId),
        userId: emptyToUndefined(req.userId),
        assistantId: emptyToUndefined(req.assistantId),
        project: emptyToUndefined(req.project),
      };
      const start = req.fromNow ? "now" : positionFromProto(req.afterVersion);
      for await (const entry of runHub.follow(tenant, RUNS_STREAM, start, ctx.signal)) {
        const run = entry.value;
        if (
          (filter.threadId === undefined || run.threadId === filter.threadId) &&
          (filter.sessionId === undefined || run.sessionId === filter.sessionId) &&
          (filter.userId === undefined || run.userId === filter.userId) &&
          (filter.assistantId === undefined || run.assistantId === filter.assistantId) &&
          (filter.project === undefined || run.project === filter.project)
        ) {
          yield create(WatchRunsResponseSchema, { run, version: BigInt(entry.seq) });
        }
      }
    },
  };
}
