import { create } from "@bufbuild/protobuf";
import { type Timestamp, timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  type Command as CommandProto,
  CommandSchema,
  CommandState as CommandStateProto,
  CommandType as CommandTypeProto,
} from "../../gen/agentstore/v1/command_pb.ts";
import { type RunEvent, RunEventSchema } from "../../gen/agentstore/v1/run_event_pb.ts";
import {
  LeaseLostPolicy,
  MultitaskStrategy,
  type Run,
  RunSchema,
  RunStatus,
  type TokenUsage,
  TokenUsageSchema,
} from "../../gen/agentstore/v1/run_pb.ts";
import { DomainError, invalidArgument } from "../core/errors.ts";
import type * as commands from "../store/commands/model.ts";
import type { StoredEvent } from "../store/events/events.ts";
import type * as runs from "../store/runs/model.ts";

/** Proto ⇄ domain for RunService: the only place that knows both shapes of a run and an event. */

const STATUS_TO_PROTO: Record<runs.RunStatus, RunStatus> = {
  pending: RunStatus.PENDING,
  claimed: RunStatus.CLAIMED,
  running: RunStatus.RUNNING,
  completed: RunStatus.COMPLETED,
  failed: RunStatus.FAILED,
  blocked: RunStatus.BLOCKED,
  cancelled: RunStatus.CANCELLED,
};
const STATUS_FROM_PROTO = new Map(Object.entries(STATUS_TO_PROTO).map(([k, v]) => [v, k as runs.RunStatus]));

const STRATEGY_TO_PROTO: Record<runs.MultitaskStrategy, MultitaskStrategy> = {
  reject: MultitaskStrategy.REJECT,
  enqueue: MultitaskStrategy.ENQUEUE,
  interrupt: MultitaskStrategy.INTERRUPT,
};

export function statusFromProto(status: RunStatus): runs.RunStatus | undefined {
  return STATUS_FROM_PROTO.get(status);
}

export function terminalStatusFromProto(status: RunStatus): runs.TerminalStatus {
  const value = STATUS_FROM_PROTO.get(status);
  // protovalidate admits only the four terminal values; anything else is a bug upstream.
  if (
    value === undefined ||
    !(["completed", "failed", "blocked", "cancelled"] as const).some((s) => s === value)
  ) {
    throw new Error(`status ${status} is not terminal`);
  }
  return value as runs.TerminalStatus;
}

export function leasePolicyFromProto(policy: LeaseLostPolicy): runs.LeaseLostPolicy {
  return policy === LeaseLostPolicy.REQUEUE ? "requeue" : "fail";
}

export function strategyFromProto(strategy: MultitaskStrategy): runs.MultitaskStrategy {
  if (strategy === MultitaskStrategy.ENQUEUE) return "enqueue";
  if (strategy === MultitaskStrategy.INTERRUPT) return "interrupt";
  return "reject";
}

/** proto3 strings are never absent; the store keeps "" as NULL so that filters and indexes see no value. */
export const emptyToNull = (value: string): string | null => (value === "" ? null : value);
export const emptyToUndefined = (value: string): string | undefined => (value === "" ? undefined : value);

const ts = (date: Date | null | undefined): Timestamp | undefined =>
  date === null || date === undefined ? undefined : timestampFromDate(date);

/**
 * Timestamps are truncated to the millisecond the store keeps; rounding would turn
 * 9999-12-31T23:59:59.999999999Z into year 10000, which the database refuses.
 */
export function dateFromProto(value: Timestamp | undefined): Date | undefined {
  return value === undefined
    ? undefined
    : new Date(Number(value.seconds) * 1000 + Math.floor(value.nanos / 1e6));
}

/**
 * Seqs and versions are int64 on the wire but never leave the safe-integer range in the store;
 * a larger request value (a client's 2^63 - 1) means "after everything" and is clamped, not
 * rounded into a different number.
 */
export const positionFromProto = (value: bigint): number =>
  value > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(value);

export function usageToProto(usage: runs.TokenUsage): TokenUsage {
  return create(TokenUsageSchema, usage);
}

export function usageFromProto(usage: TokenUsage | undefined): runs.TokenUsage | undefined {
  if (usage === undefined) return undefined;
  return {
    inputTokens: usage.inputTokens,
    outputTokens: usage.outputTokens,
    totalTokens: usage.totalTokens,
    llmCallCount: usage.llmCallCount,
    leadAgentTokens: usage.leadAgentTokens,
    subagentTokens: usage.subagentTokens,
    middlewareTokens: usage.middlewareTokens,
  };
}

export function runToProto(run: runs.Run): Run {
  return create(RunSchema, {
    runId: run.id,
    threadId: run.threadId ?? "",
    sessionId: run.sessionId ?? "",
    assistantId: run.assistantId ?? "",
    userId: run.userId ?? "",
    project: run.project ?? "",
    modelName: run.modelName ?? "",
    backendProfile: run.backendProfile ?? "",
    metadata: run.metadata as Run["metadata"],
    input: run.input as Run["input"],
    multitaskStrategy: STRATEGY_TO_PROTO[run.multitaskStrategy],
    status: STATUS_TO_PROTO[run.status],
    failureKind: run.failureKind ?? "",
    failureMessage: run.failureMessage ?? "",
    runnerId: run.runnerId ?? "",
    leaseExpireTime: ts(run.leaseExpiresAt),
    usage: usageToProto(run.usage),
    messageCount: run.messageCount,
    firstHumanMessage: run.firstHumanMessage ?? "",
    lastAiMessage: run.lastAiMessage ?? "",
    lastEventSeq: BigInt(run.lastSeq),
    requestId: run.requestId ?? "",
    createTime: ts(run.createdAt),
    updateTime: ts(run.updatedAt),
    startTime: ts(run.startedAt),
    finishTime: ts(run.finishedAt),
    version: BigInt(run.version),
    labels: run.labels,
    leaseLostPolicy: run.leaseLostPolicy === "requeue" ? LeaseLostPolicy.REQUEUE : LeaseLostPolicy.FAIL,
    lastCommandSeq: BigInt(run.lastCommandSeq),
  });
}

const COMMAND_TYPE_TO_PROTO: Record<commands.CommandType, CommandTypeProto> = {
  turn: CommandTypeProto.TURN,
  steer: CommandTypeProto.STEER,
  cancel: CommandTypeProto.CANCEL,
  custom: CommandTypeProto.CUSTOM,
};
const COMMAND_TYPE_FROM_PROTO = new Map(
  Object.entries(COMMAND_TYPE_TO_PROTO).map(([k, v]) => [v, k as commands.CommandType]),
);

const COMMAND_STATE_TO_PROTO: Record<commands.CommandState, CommandStateProto> = {
  pending: CommandStateProto.PENDING,
  acknowledged: CommandStateProto.ACKNOWLEDGED,
  completed: CommandStateProto.COMPLETED,
  failed: CommandStateProto.FAILED,
  cancelled: CommandStateProto.CANCELLED,
};
const COMMAND_STATE_FROM_PROTO = new Map(
  Object.entries(COMMAND_STATE_TO_PROTO).map(([k, v]) => [v, k as commands.CommandState]),
);

export function commandTypeFromProto(type: CommandTypeProto): commands.CommandType {
  const value = COMMAND_TYPE_FROM_PROTO.get(type);
  // protovalidate admits only defined, non-zero types.
  if (value === undefined) throw new Error(`command type ${type} is not defined`);
  return value;
}

export function commandStateFromProto(state: CommandStateProto): commands.CommandState | undefined {
  return COMMAND_STATE_FROM_PROTO.get(state);
}

export function commandToProto(command: commands.Command): CommandProto {
  return create(CommandSchema, {
    commandId: command.id,
    runId: command.runId,
    seq: BigInt(command.seq),
    type: COMMAND_TYPE_TO_PROTO[command.type],
    customType: command.customType ?? "",
    payload: command.payload as CommandProto["payload"],
    idempotencyKey: command.idempotencyKey ?? "",
    state: COMMAND_STATE_TO_PROTO[command.state],
    result: (command.result ?? undefined) as CommandProto["result"],
    failureKind: command.failureKind ?? "",
    failureMessage: command.failureMessage ?? "",
    createTime: ts(command.createdAt),
    ackTime: ts(command.ackedAt),
    finishTime: ts(command.finishedAt),
    updateTime: ts(command.updatedAt),
  });
}

export function eventToProto(event: StoredEvent): RunEvent {
  return create(RunEventSchema, {
    runId: event.runId,
    seq: BigInt(event.seq),
    type: event.type,
    payload: event.payload as RunEvent["payload"],
    createTime: timestampFromDate(event.createdAt),
  });
}

/**
 * Where a Watch* stream starts: after `after_version`, or at the head with `from_now` (then
 * after_version must be 0). A version beyond the head is OUT_OF_RANGE (VERSION_OUT_OF_RANGE): it
 * was never handed out, so resuming there would wait for changes the client has not seen as seen.
 */
export async function watchStart(
  request: { fromNow: boolean; afterVersion: bigint },
  head: () => Promise<number>,
): Promise<number | "now"> {
  if (request.fromNow && request.afterVersion !== 0n) {
    throw invalidArgument("INVALID_ARGUMENT", "after_version must be 0 when from_now is set", {
      field: "after_version",
    });
  }
  if (request.fromNow) return "now";
  const start = positionFromProto(request.afterVersion);
  if (start > 0) {
    const newest = await head();
    if (start > newest) {
      throw new DomainError(
        "OUT_OF_RANGE",
        "VERSION_OUT_OF_RANGE",
        `after_version ${request.afterVersion} is beyond the newest version ${newest}`,
        { version: String(newest) },
      );
    }
  }
  return start;
}
