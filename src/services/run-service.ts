import { create, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { CommandState } from "../../gen/agentstore/v1/command_pb.ts";
import { type RunEvent, RunEventSchema } from "../../gen/agentstore/v1/run_event_pb.ts";
import type { Run as RunProto } from "../../gen/agentstore/v1/run_pb.ts";
import {
  AckCommandResponseSchema,
  AppendRunEventsResponseSchema,
  CancelCommandResponseSchema,
  CancelRunResponseSchema,
  ClaimNextRunResponseSchema,
  ClaimRunResponseSchema,
  CreateCommandResponseSchema,
  CreateRunResponseSchema,
  DeleteRunResponseSchema,
  FinishCommandResponseSchema,
  FinishRunResponseSchema,
  GetCommandResponseSchema,
  GetRunResponseSchema,
  GetThreadUsageResponseSchema,
  ListCommandsResponseSchema,
  ListInflightRunsResponseSchema,
  ListRunEventsResponseSchema,
  ListRunsResponseSchema,
  ModelUsageSchema,
  ReleaseRunResponseSchema,
  RenewRunLeaseResponseSchema,
  type RunService,
  StreamCommandsResponseSchema,
  type StreamRunEventsResponse,
  StreamRunEventsResponseSchema,
  UpdateRunProgressResponseSchema,
  WatchRunsResponseSchema,
} from "../../gen/agentstore/v1/run_service_pb.ts";
import { DomainError, invalidArgument } from "../core/errors.ts";
import type { LogHub, VersionHub } from "../feed/stream-hub.ts";
import { tenantOf } from "../server/auth.ts";
import type { CommandStore } from "../store/commands/commands.ts";
import type { EventStore } from "../store/events/events.ts";
import { SERVER_EVENT } from "../store/events/server-events.ts";
import type { ClaimStore } from "../store/runs/claims.ts";
import { notLeaseHolder } from "../store/runs/errors.ts";
import { isTerminal, RUNS_STREAM } from "../store/runs/model.ts";
import type { RunStore } from "../store/runs/runs.ts";
import type { UsageStore } from "../store/runs/usage.ts";
import {
  commandStateFromProto,
  commandToProto,
  commandTypeFromProto,
  dateFromProto,
  emptyToNull,
  emptyToUndefined,
  eventToProto,
  leasePolicyFromProto,
  positionFromProto,
  runToProto,
  statusFromProto,
  strategyFromProto,
  terminalStatusFromProto,
  usageFromProto,
  usageToProto,
  watchStart,
} from "./run-convert.ts";
import { msFromDuration } from "./runner-convert.ts";

export interface RunServiceDeps {
  runs: RunStore;
  events: EventStore;
  usage: UsageStore;
  claims: ClaimStore;
  commands: CommandStore;
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

/** A claim lasts this long unless the request says otherwise. */
const DEFAULT_LEASE_MS = 30_000;

const commandIdOf = (req: { commandId: string }) => req.commandId.toLowerCase();

/** Whether an event of the run's log took the run away from the runner. */
function lostHold(type: string, payload: { [k: string]: unknown } | undefined, runnerId: string): boolean {
  if (type === SERVER_EVENT.claim) return payload?.runner_id !== runnerId;
  if (type === SERVER_EVENT.release || type === SERVER_EVENT.leaseLost)
    return payload?.runner_id === runnerId;
  return false;
}

/**
 * RunService: (protovalidate and the request guards already ran in the interceptors) map -> store
 * -> map. The tenant always comes from the caller's credentials (tenantOf), never from the request.
 */
export function createRunService(deps: RunServiceDeps): ServiceImpl<typeof RunService> {
  const { runs, events, usage, claims, commands, eventHub, runHub } = deps;
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
          labels: run.labels,
          leaseLostPolicy: leasePolicyFromProto(run.leaseLostPolicy),
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
      const { run, changed } = await runs.finishRun(
        tenantOf(ctx),
        runIdOf(req),
        {
          status: terminalStatusFromProto(req.status),
          failureKind: emptyToNull(req.failureKind),
          failureMessage: emptyToNull(req.failureMessage),
          usage: usageFromProto(req.usage),
          messageCount: req.messageCount,
          firstHumanMessage: req.firstHumanMessage,
          lastAiMessage: req.lastAiMessage,
        },
        emptyToNull(req.runnerId),
      );
      return create(FinishRunResponseSchema, { run: runToProto(run), changed });
    },

    async updateRunProgress(req, ctx) {
      const run = await runs.updateRunProgress(
        tenantOf(ctx),
        runIdOf(req),
        {
          usage: usageFromProto(req.usage),
          messageCount: req.messageCount,
          firstHumanMessage: req.firstHumanMessage,
          lastAiMessage: req.lastAiMessage,
          modelName: req.modelName,
        },
        emptyToNull(req.runnerId),
      );
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
        emptyToNull(req.runnerId),
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
      const filter = {
        threadId: emptyToUndefined(req.threadId),
        sessionId: emptyToUndefined(req.sessionId),
        userId: emptyToUndefined(req.userId),
        assistantId: emptyToUndefined(req.assistantId),
        project: emptyToUndefined(req.project),
      };
      const start = await watchStart(req, () => runs.watchHead(tenant));
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

    async claimRun(req, ctx) {
      const { run, takeover } = await claims.claim(
        tenantOf(ctx),
        runIdOf(req),
        req.runnerId,
        msFromDuration(req.lease, DEFAULT_LEASE_MS),
      );
      return create(ClaimRunResponseSchema, { run: runToProto(run), takeover });
    },

    async claimNextRun(req, ctx) {
      const filter = req.filter;
      const run = await claims.claimNextWaiting(
        tenantOf(ctx),
        req.runnerId,
        {
          assistantId: emptyToNull(filter?.assistantId ?? ""),
          backendProfile: emptyToNull(filter?.backendProfile ?? ""),
          project: emptyToNull(filter?.project ?? ""),
          labels: filter?.labels ?? {},
        },
        msFromDuration(req.lease, DEFAULT_LEASE_MS),
        msFromDuration(req.wait, 0),
        emptyToNull(req.requestId),
        ctx.signal,
      );
      return create(ClaimNextRunResponseSchema, { run: run === undefined ? undefined : runToProto(run) });
    },

    async renewRunLease(req, ctx) {
      const run = await claims.renew(
        tenantOf(ctx),
        runIdOf(req),
        req.runnerId,
        msFromDuration(req.lease, DEFAULT_LEASE_MS),
      );
      return create(RenewRunLeaseResponseSchema, { run: runToProto(run) });
    },

    async releaseRun(req, ctx) {
      const run = await claims.release(tenantOf(ctx), runIdOf(req), req.runnerId, req.reason);
      return create(ReleaseRunResponseSchema, { run: runToProto(run) });
    },

    async createCommand(req, ctx) {
      const type = commandTypeFromProto(req.type);
      if ((type === "custom") !== (req.customType !== "")) {
        throw invalidArgument(
          "INVALID_ARGUMENT",
          "custom_type names the kind of a CUSTOM command, and only of one",
          { field: "custom_type" },
        );
      }
      const command = await commands.create(tenantOf(ctx), runIdOf(req), {
        type,
        customType: emptyToNull(req.customType),
        payload: req.payload ?? {},
        idempotencyKey: emptyToNull(req.idempotencyKey),
      });
      return create(CreateCommandResponseSchema, { command: commandToProto(command) });
    },

    async getCommand(req, ctx) {
      const command = await commands.get(tenantOf(ctx), commandIdOf(req));
      return create(GetCommandResponseSchema, { command: commandToProto(command) });
    },

    async listCommands(req, ctx) {
      const page = await commands.list(
        tenantOf(ctx),
        runIdOf(req),
        { afterSeq: positionFromProto(req.afterSeq), state: commandStateFromProto(req.state) },
        req,
      );
      return create(ListCommandsResponseSchema, {
        commands: page.items.map(commandToProto),
        nextPageToken: page.nextPageToken,
      });
    },

    async ackCommand(req, ctx) {
      const { command, changed } = await commands.ack(tenantOf(ctx), commandIdOf(req));
      return create(AckCommandResponseSchema, { command: commandToProto(command), changed });
    },

    async finishCommand(req, ctx) {
      const { command, changed } = await commands.finish(tenantOf(ctx), commandIdOf(req), {
        state: req.state === CommandState.COMPLETED ? "completed" : "failed",
        result: req.result ?? null,
        failureKind: emptyToNull(req.failureKind),
        failureMessage: emptyToNull(req.failureMessage),
      });
      return create(FinishCommandResponseSchema, { command: commandToProto(command), changed });
    },

    async cancelCommand(req, ctx) {
      const { command, changed } = await commands.cancel(tenantOf(ctx), commandIdOf(req), req.reason);
      return create(CancelCommandResponseSchema, { command: commandToProto(command), changed });
    },

    async *streamCommands(req, ctx) {
      const tenant = tenantOf(ctx);
      const runId = runIdOf(req);
      const run = await claims.holds(
        tenant,
        runId,
        req.runnerId,
        async () => (await events.latestClaimBy(tenant, runId, req.runnerId)) !== undefined,
      );
      const afterSeq = positionFromProto(req.afterSeq);
      if (afterSeq > run.lastCommandSeq) {
        throw new DomainError(
          "OUT_OF_RANGE",
          "SEQ_OUT_OF_RANGE",
          `after_seq ${req.afterSeq} is beyond the run's last command seq ${run.lastCommandSeq}`,
          { run_id: runId, last_command_seq: String(run.lastCommandSeq) },
        );
      }
      // Commands are announced in the run's log: follow it from the announcement of after_seq.
      const fromEvent = afterSeq === 0 ? 0 : ((await commands.eventSeqOf(tenant, runId, afterSeq)) ?? 0);
      if (isTerminal(run.status) && fromEvent >= run.lastSeq) return;
      // Hand-overs before the runner's current claim are history; only later ones end its stream.
      const tenureFrom = isTerminal(run.status)
        ? Number.POSITIVE_INFINITY
        : ((await events.latestClaimBy(tenant, runId, req.runnerId)) ?? 0);
      for await (const entry of eventHub.follow(tenant, runId, fromEvent, ctx.signal)) {
        const { type, payload } = entry.value;
        if (type === SERVER_EVENT.command) {
          if (Number(payload?.command_seq) <= afterSeq) continue;
          const command = await commands.get(tenant, String(payload?.command_id));
          yield create(StreamCommandsResponseSchema, { command: commandToProto(command) });
        } else if (entry.seq > tenureFrom && lostHold(type, payload, req.runnerId)) {
          throw notLeaseHolder(
            runId,
            req.runnerId,
            type === SERVER_EVENT.claim ? String(payload?.runner_id) : null,
          );
        }
        if (entry.terminal) return;
      }
    },
  };
}
