import { create } from "@bufbuild/protobuf";
import { type Timestamp, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type RunEvent, RunEventSchema } from "../../gen/agentstore/v1/run_event_pb.ts";
import {
  MultitaskStrategy,
  type Run,
  RunSchema,
  RunStatus,
  type TokenUsage,
  TokenUsageSchema,
} from "../../gen/agentstore/v1/run_pb.ts";
import type * as store from "../store/runs.ts";

const STATUS_TO_PROTO: Record<store.RunStatus, RunStatus> = {
  pending: RunStatus.PENDING,
  claimed: RunStatus.CLAIMED,
  running: RunStatus.RUNNING,
  completed: RunStatus.COMPLETED,
  failed: RunStatus.FAILED,
  blocked: RunStatus.BLOCKED,
  cancelled: RunStatus.CANCELLED,
};
const STATUS_FROM_PROTO = new Map(Object.entries(STATUS_TO_PROTO).map(([k, v]) => [v, k as store.RunStatus]));

const STRATEGY_TO_PROTO: Record<store.MultitaskStrategy, MultitaskStrategy> = {
  reject: MultitaskStrategy.REJECT,
  enqueue: MultitaskStrategy.ENQUEUE,
  interrupt: MultitaskStrategy.INTERRUPT,
};

export function statusFromProto(status: RunStatus): store.RunStatus | undefined {
  return STATUS_FROM_PROTO.get(status);
}

export function strategyFromProto(strategy: MultitaskStrategy): store.MultitaskStrategy {
  if (strategy === MultitaskStrategy.ENQUEUE) return "enqueue";
  if (strategy === MultitaskStrategy.INTERRUPT) return "interrupt";
  return "reject";
}

/** proto3 strings are never absent; the store keeps "" as NULL so that filters and indexes see no value. */
export const emptyToNull = (value: string): string | null => (value === "" ? null : value);

const ts = (date: Date | null | undefined): Timestamp | undefined =>
  date === null || date === undefined ? undefined : timestampFromDate(date);

export function dateFromProto(value: Timestamp | undefined): Date | undefined {
  return value === undefined ? undefined : timestampDate(value);
}

export function usageToProto(usage: store.TokenUsage): TokenUsage {
  return create(TokenUsageSchema, {
    inputTokens: BigInt(usage.inputTokens),
    outputTokens: BigInt(usage.outputTokens),
    totalTokens: BigInt(usage.totalTokens),
    llmCallCount: BigInt(usage.llmCallCount),
    leadAgentTokens: BigInt(usage.leadAgentTokens),
    subagentTokens: BigInt(usage.subagentTokens),
    middlewareTokens: BigInt(usage.middlewareTokens),
  });
}

export function usageFromProto(usage: TokenUsage | undefined): store.TokenUsage | undefined {
  if (usage === undefined) return undefined;
  return {
    inputTokens: Number(usage.inputTokens),
    outputTokens: Number(usage.outputTokens),
    totalTokens: Number(usage.totalTokens),
    llmCallCount: Number(usage.llmCallCount),
    leadAgentTokens: Number(usage.leadAgentTokens),
    subagentTokens: Number(usage.subagentTokens),
    middlewareTokens: Number(usage.middlewareTokens),
  };
}

export function runToProto(row: store.RunRow): Run {
  return create(RunSchema, {
    runId: row.id,
    threadId: row.threadId ?? "",
    sessionId: row.sessionId ?? "",
    assistantId: row.assistantId ?? "",
    userId: row.userId ?? "",
    project: row.project ?? "",
    modelName: row.modelName ?? "",
    backendProfile: row.backendProfile ?? "",
    metadata: row.metadata as Run["metadata"],
    input: row.input as Run["input"],
    multitaskStrategy: STRATEGY_TO_PROTO[row.multitaskStrategy as store.MultitaskStrategy],
    status: STATUS_TO_PROTO[row.status as store.RunStatus],
    failureKind: row.failureKind ?? "",
    failureMessage: row.failureMessage ?? "",
    runnerId: row.runnerId ?? "",
    leaseExpireTime: ts(row.leaseExpiresAt),
    usage: usageToProto(row),
    messageCount: BigInt(row.messageCount),
    firstHumanMessage: row.firstHumanMessage ?? "",
    lastAiMessage: row.lastAiMessage ?? "",
    lastEventSeq: BigInt(row.lastSeq),
    requestId: row.requestId ?? "",
    createTime: ts(row.createdAt),
    updateTime: ts(row.updatedAt),
    startTime: ts(row.startedAt),
    finishTime: ts(row.finishedAt),
  });
}

export function eventToProto(event: store.StoredEvent): RunEvent {
  return create(RunEventSchema, {
    runId: event.runId,
    seq: BigInt(event.seq),
    type: event.type,
    payload: event.payload as RunEvent["payload"],
    createTime: timestampFromDate(event.createdAt),
  });
}
