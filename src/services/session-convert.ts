import { create } from "@bufbuild/protobuf";
import { type Timestamp, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { RunStatus } from "../../gen/agentstore/v1/run_pb.ts";
import {
  AttentionState,
  type Interrupt as InterruptProto,
  InterruptSchema,
  InterruptState,
  type SessionBinding as SessionBindingProto,
  SessionBindingSchema,
  type SessionClaim as SessionClaimProto,
  SessionClaimSchema,
  SessionExecutionState,
  type Session as SessionProto,
  SessionSchema,
} from "../../gen/agentstore/v1/session_pb.ts";
import { SessionListFilter } from "../../gen/agentstore/v1/session_service_pb.ts";
import type * as sessions from "../store/sessions/model.ts";

/** Proto ⇄ domain for SessionService. */

const ts = (date: Date | null): Timestamp | undefined =>
  date === null ? undefined : timestampFromDate(date);

const EXECUTION_TO_PROTO: Record<sessions.ExecutionState, SessionExecutionState> = {
  idle: SessionExecutionState.IDLE,
  running: SessionExecutionState.RUNNING,
  terminal: SessionExecutionState.TERMINAL,
};

const ATTENTION_TO_PROTO: Record<sessions.Attention, AttentionState> = {
  active: AttentionState.ACTIVE,
  unread: AttentionState.UNREAD,
  read: AttentionState.READ,
};

const RUN_STATUS_TO_PROTO: Record<string, RunStatus> = {
  completed: RunStatus.COMPLETED,
  failed: RunStatus.FAILED,
  blocked: RunStatus.BLOCKED,
  cancelled: RunStatus.CANCELLED,
};

const FILTER_FROM_PROTO: Record<SessionListFilter, sessions.SessionListFilter> = {
  [SessionListFilter.UNSPECIFIED]: "default",
  [SessionListFilter.DEFAULT]: "default",
  [SessionListFilter.RUNNING]: "running",
  [SessionListFilter.UNREAD]: "unread",
  [SessionListFilter.TERMINAL]: "terminal",
  [SessionListFilter.IDLE]: "idle",
  [SessionListFilter.ALL]: "all",
};

export const listFilterFromProto = (filter: SessionListFilter): sessions.SessionListFilter =>
  FILTER_FROM_PROTO[filter] ?? "default";

export function sessionToProto(session: sessions.Session): SessionProto {
  return create(SessionSchema, {
    sessionId: session.id,
    backendProfile: session.backendProfile ?? "",
    project: session.project ?? "",
    threadId: session.threadId ?? "",
    title: session.title ?? "",
    summary: session.summary as SessionProto["summary"],
    metadata: session.metadata as SessionProto["metadata"],
    version: BigInt(session.version),
    executionState: EXECUTION_TO_PROTO[session.executionState],
    activeRunId: session.activeRunId ?? "",
    lastRunId: session.lastRunId ?? "",
    activeCommandId: session.activeCommandId ?? "",
    lastCommandId: session.lastCommandId ?? "",
    lastEventSeq: BigInt(session.lastEventSeq),
    terminalStatus:
      session.terminalStatus === null
        ? RunStatus.UNSPECIFIED
        : (RUN_STATUS_TO_PROTO[session.terminalStatus] ?? 0),
    failureKind: session.failureKind ?? "",
    lastActivityTime: ts(session.lastActivityAt),
    expireTime: ts(session.expiresAt),
    createTime: ts(session.createdAt),
    updateTime: ts(session.updatedAt),
    attentionState: ATTENTION_TO_PROTO[session.attention],
    readVersion: BigInt(session.readVersion),
    pendingInterruptCount: BigInt(session.pendingInterrupts),
  });
}

export function bindingToProto(binding: sessions.Binding): SessionBindingProto {
  return create(SessionBindingSchema, {
    identity: binding.identity,
    contextId: binding.contextId,
    sessionId: binding.sessionId,
    createTime: ts(binding.createdAt),
    updateTime: ts(binding.updatedAt),
  });
}

export function claimToProto(claim: sessions.Claim): SessionClaimProto {
  return create(SessionClaimSchema, {
    identity: claim.identity,
    contextId: claim.contextId,
    claimant: claim.claimant,
    expireTime: ts(claim.expiresAt),
    createTime: ts(claim.createdAt),
  });
}

export function interruptToProto(interrupt: sessions.Interrupt): InterruptProto {
  return create(InterruptSchema, {
    interruptId: interrupt.id,
    sessionId: interrupt.sessionId,
    runId: interrupt.runId ?? "",
    kind: interrupt.kind,
    payload: interrupt.payload as InterruptProto["payload"],
    state: interrupt.state === "pending" ? InterruptState.PENDING : InterruptState.RESOLVED,
    answer: (interrupt.answer ?? undefined) as InterruptProto["answer"],
    resolvedBy: interrupt.resolvedBy ?? "",
    expireTime: ts(interrupt.expiresAt),
    createTime: ts(interrupt.createdAt),
    resolveTime: ts(interrupt.resolvedAt),
  });
}
