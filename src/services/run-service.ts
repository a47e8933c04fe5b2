import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type { RunEvent } from "../../gen/agentstore/v1/run_event_pb.ts";
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
  StreamRunEventsResponseSchema,
  UpdateRunProgressResponseSchema,
} from "../../gen/agentstore/v1/run_service_pb.ts";
import { DomainError, invalidArgument } from "../errors.ts";
import type { LogHub } from "../feed/hub.ts";
import { tenantOf } from "../server/auth.ts";
import { clampPageSize, decodePageToken, encodePageToken } from "../store/page-token.ts";
import { isTerminal, type RunStore, type TerminalStatus } from "../store/runs.ts";
import {
  dateFromProto,
  emptyToNull,
  eventToProto,
  runToProto,
  statusFromProto,
  strategyFromProto,
  usageFromProto,
  usageToProto,
} from "./convert.ts";

const isSeq = (p: unknown): p is number => typeof p === "number" && Number.isSafeInteger(p) && p >= 0;

/**
 * Run ids are UUIDs, which protovalidate accepts in either case. The store and the change feed key
 * runs by the canonical lower-case form, so every request's id is folded once, here.
 */
const runIdOf = (req: { runId: string }) => req.runId.toLowerCase();

/** One ListRunEvents page carries about this much payload, below gRPC's common 4 MiB limit. */
const EVENT_PAGE_BYTES = 3 * 1024 * 1024;

/**
 * RunService: validate (protovalidate already ran in the interceptor) -> map -> store -> map.
 * The tenant always comes from the caller's credentials (tenantOf), never from the request.
 */
export function createRunService(store: RunStore, events: LogHub<RunEvent>): ServiceImpl<typeof RunService> {
  return {
    async createRun(req, ctx) {
      const run = req.run;
      if (run === undefined) throw invalidArgument("INVALID_ARGUMENT", "run is required");
      const created = await store.createRun(
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
        run: runToProto(await store.getRun(tenantOf(ctx), runIdOf(req))),
      });
    },

    async listRuns(req, ctx) {
      const page = await store.listRuns(
        tenantOf(ctx),
        {
          threadId: req.threadId || undefined,
          sessionId: req.sessionId || undefined,
          userId: req.userId || undefined,
          status: statusFromProto(req.status),
        },
        req.pageSize,
        req.pageToken,
      );
      return create(ListRunsResponseSchema, {
        runs: page.items.map(runToProto),
        nextPageToken: page.nextPageToken,
      });
    },

    async cancelRun(req, ctx) {
      const { run, changed } = await store.cancelRun(tenantOf(ctx), runIdOf(req), req.reason);
      return create(CancelRunResponseSchema, { run: runToProto(run), changed });
    },

    async deleteRun(req, ctx) {
      await store.deleteRun(tenantOf(ctx), runIdOf(req), req.allowMissing);
      return create(DeleteRunResponseSchema, {});
    },

    async finishRun(req, ctx) {
      const { run, changed } = await store.finishRun(tenantOf(ctx), runIdOf(req), {
        status: statusFromProto(req.status) as TerminalStatus,
        failureKind: emptyToNull(req.failureKind),
        failureMessage: emptyToNull(req.failureMessage),
        usage: usageFromProto(req.usage),
        messageCount: req.messageCount === undefined ? undefined : Number(req.messageCount),
        firstHumanMessage: req.firstHumanMessage,
        lastAiMessage: req.lastAiMessage,
      });
      return create(FinishRunResponseSchema, { run: runToProto(run), changed });
    },

    async updateRunProgress(req, ctx) {
      const run = await store.updateRunProgress(tenantOf(ctx), runIdOf(req), {
        usage: usageFromProto(req.usage),
        messageCount: req.messageCount === undefined ? undefined : Number(req.messageCount),
        firstHumanMessage: req.firstHumanMessage,
        lastAiMessage: req.lastAiMessage,
        modelName: req.modelName,
      });
      return create(UpdateRunProgressResponseSchema, { run: runToProto(run) });
    },

    async getThreadUsage(req, ctx) {
      const usage = await store.getThreadUsage(tenantOf(ctx), req.threadId, req.includeActive);
      return create(GetThreadUsageResponseSchema, {
        threadId: req.threadId,
        totalRuns: BigInt(usage.totalRuns),
        usage: usageToProto(usage.usage),
        byModel: Object.fromEntries(
          [...usage.byModel].map(([model, u]) => [
            model,
            create(ModelUsageSchema, {
              runs: BigInt(u.runs),
              inputTokens: BigInt(u.inputTokens),
              outputTokens: BigInt(u.outputTokens),
              totalTokens: BigInt(u.totalTokens),
            }),
          ]),
        ),
      });
    },

    async listInflightRuns(req, ctx) {
      const page = await store.listInflightRuns(
        tenantOf(ctx),
        dateFromProto(req.createdBefore),
        req.pageSize,
        req.pageToken,
      );
      return create(ListInflightRunsResponseSchema, {
        runs: page.items.map(runToProto),
        nextPageToken: page.nextPageToken,
      });
    },

    async appendRunEvents(req, ctx) {
      const result = await store.appendEvents(
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
      const runId = runIdOf(req);
      const filters = { runId, afterSeq: String(req.afterSeq), types: [...req.types].sort() };
      const after = decodePageToken("run_events", filters, req.pageToken, isSeq) ?? Number(req.afterSeq);
      const { events, more } = await store.listEvents(
        tenantOf(ctx),
        runId,
        after,
        { limit: clampPageSize(req.pageSize, 100, 1000), maxBytes: EVENT_PAGE_BYTES },
        req.types,
      );
      const last = events.at(-1);
      return create(ListRunEventsResponseSchema, {
        events: events.map(eventToProto),
        nextPageToken: more && last !== undefined ? encodePageToken("run_events", filters, last.seq) : "",
      });
    },

    async *streamRunEvents(req, ctx: HandlerContext) {
      const tenant = tenantOf(ctx);
      const run = await store.getRun(tenant, runIdOf(req));
      const afterSeq = Number(req.afterSeq);
      if (afterSeq > run.lastSeq) {
        throw new DomainError(
          "OUT_OF_RANGE",
          "SEQ_OUT_OF_RANGE",
          `after_seq ${afterSeq} is beyond the run's last seq ${run.lastSeq}`,
          { run_id: run.id, last_seq: String(run.lastSeq) },
        );
      }
      if (isTerminal(run.status) && afterSeq >= run.lastSeq) return;
      const types = req.types.length > 0 ? new Set(req.types) : undefined;
      for await (const entry of events.follow(tenant, run.id, afterSeq, ctx.signal)) {
        if (types === undefined || entry.terminal || types.has(entry.value.type)) {
          yield create(StreamRunEventsResponseSchema, { event: entry.value });
        }
      }
    },
  };
}
