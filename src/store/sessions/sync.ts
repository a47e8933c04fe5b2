import { DomainError } from "../../core/errors.ts";
import type { Notice, Tx, WorkHook } from "../../db/unit-of-work.ts";
import { COMMANDS_CHANGED } from "../commands/model.ts";
import { isTerminal, RUN_CREATED_IN_SESSION, SESSION_RUN_CHANGED } from "../runs/model.ts";
import { InterruptEntity, SessionReadCursorEntity } from "./entities.ts";
import { type ExecutionState, SESSIONS_STREAM, titleFromMetadata, titleFromPrompt } from "./model.ts";
import { applyDerived, deriveSessions, startSession } from "./sql.ts";

type Derived = ReturnType<typeof deriveSessions.decode>;

/**
 * The sessions work hook: after a write that created, ended or deleted a run of a session, or
 * changed a command, in its transaction, the sessions concerned are brought up to date (created
 * for their first run, execution fields re-derived from their runs and commands) and, when
 * anything a reader would notice changed, moved to the tenant's next sessions version. The run
 * and command stores only give notices (db/unit-of-work.ts), and only for runs with a session: a
 * run's end is noticed in terminate(), which every ending goes through (FinishRun, CancelRun, a
 * multitask interrupt, lease recovery). Claims, progress and releases keep a run active, which
 * changes nothing a session shows, and give no notice, so the claim path pays nothing for sessions.
 *
 * It reads without a lock of its own: every write of a tenant's runs, commands or sessions holds
 * the tenant's runs version lock (db/unit-of-work.ts; session writes take it too, see
 * lockSessions), so no other such write runs between its read and its update. It takes the
 * sessions version lock after that, through nextVersion, and only when something changed.
 */
export const syncSessions: WorkHook = async (tx, notices) => {
  for (const [tenant, touched] of touchedByTenant(notices)) {
    const rows = await tx.sql.all(deriveSessions, tenant, [...touched.runIds], [...touched.sessionIds]);
    for (const row of rows) await syncOne(tx, tenant, row, touched.createdRuns);
  }
};

interface Touched {
  runIds: Set<string>;
  sessionIds: Set<string>;
  createdRuns: Set<string>;
}

function touchedByTenant(notices: readonly Notice[]): Map<string, Touched> {
  const byTenant = new Map<string, Touched>();
  const of = (tenant: string) => {
    let touched = byTenant.get(tenant);
    if (touched === undefined) {
      touched = { runIds: new Set(), sessionIds: new Set(), createdRuns: new Set() };
      byTenant.set(tenant, touched);
    }
    return touched;
  };
  for (const notice of notices) {
    if (notice.topic === COMMANDS_CHANGED) of(notice.tenant).runIds.add(notice.key);
    else if (notice.topic === RUN_CREATED_IN_SESSION) {
      of(notice.tenant).runIds.add(notice.key);
      of(notice.tenant).createdRuns.add(notice.key);
    } else if (notice.topic === SESSION_RUN_CHANGED) of(notice.tenant).sessionIds.add(notice.key);
  }
  return byTenant;
}

async function syncOne(tx: Tx, tenant: string, row: Derived, createdRuns: Set<string>): Promise<void> {
  const joinedByNewRun = row.derivedLastRunId !== null && createdRuns.has(row.derivedLastRunId);
  if (!row.sessionExists || row.sessionGone) {
    // Only a new run starts a session; the later writes of a deleted session's old runs do not.
    if (!joinedByNewRun) return;
    if (row.sessionExists) {
      // A deleted or expired session starts afresh: what its readers and runs left goes.
      await tx.em.nativeDelete(SessionReadCursorEntity, { tenantId: tenant, sessionId: row.sessionId });
      await tx.em.nativeDelete(InterruptEntity, { tenantId: tenant, sessionId: row.sessionId });
    }
    const next = derive(row);
    const version = await tx.nextVersion(tenant, SESSIONS_STREAM);
    await tx.sql.all(
      startSession,
      tenant,
      row.sessionId,
      row.lastRunProfile,
      row.lastRunProject,
      version,
      next.executionState,
      next.activeRunId,
      next.lastRunId,
      next.activeCommandId,
      next.lastCommandId,
      next.terminalStatus,
      next.failureKind,
      next.threadId,
      next.title,
    );
    return;
  }
  if (joinedByNewRun && row.lastRunProfile !== row.sessionProfile) {
    throw new DomainError(
      "FAILED_PRECONDITION",
      "SESSION_PROFILE_MISMATCH",
      `session ${row.sessionId} belongs to backend profile "${row.sessionProfile ?? ""}", not "${row.lastRunProfile ?? ""}"`,
      {
        session_id: row.sessionId,
        session_backend_profile: row.sessionProfile ?? "",
        run_backend_profile: row.lastRunProfile ?? "",
      },
    );
  }
  const next = derive(row);
  const current = {
    executionState: row.executionState,
    activeRunId: row.activeRunId,
    lastRunId: row.lastRunId,
    activeCommandId: row.activeCommandId,
    lastCommandId: row.lastCommandId,
    terminalStatus: row.terminalStatus,
    failureKind: row.failureKind,
    threadId: row.threadId,
    title: row.title,
  };
  const title = row.titleSet ? row.title : next.title;
  const unchanged =
    current.executionState === next.executionState &&
    current.activeRunId === next.activeRunId &&
    current.lastRunId === next.lastRunId &&
    current.activeCommandId === next.activeCommandId &&
    current.lastCommandId === next.lastCommandId &&
    current.terminalStatus === next.terminalStatus &&
    current.failureKind === next.failureKind &&
    current.threadId === next.threadId &&
    current.title === title;
  if (unchanged) return;
  const version = await tx.nextVersion(tenant, SESSIONS_STREAM);
  await tx.sql.all(
    applyDerived,
    tenant,
    row.sessionId,
    version,
    next.executionState,
    next.activeRunId,
    next.lastRunId,
    next.activeCommandId,
    next.lastCommandId,
    next.terminalStatus,
    next.failureKind,
    next.threadId,
    next.title,
  );
}

/** The execution fields a session's runs and commands give it. */
function derive(row: Derived) {
  const lastEnded = row.lastRunStatus !== null && isTerminal(row.lastRunStatus);
  const executionState: ExecutionState =
    row.derivedActiveRunId !== null ? "running" : row.derivedLastRunId !== null ? "terminal" : "idle";
  const ended = executionState === "terminal" && lastEnded;
  return {
    executionState,
    activeRunId: row.derivedActiveRunId,
    lastRunId: row.derivedLastRunId,
    activeCommandId: row.derivedActiveCommandId,
    lastCommandId: row.derivedLastCommandId,
    terminalStatus: ended ? row.lastRunStatus : null,
    failureKind: ended ? row.lastRunFailureKind : null,
    threadId: row.derivedThreadId,
    title: titleFromMetadata({ title: row.firstRunTitle }) ?? titleFromPrompt(row.firstTurnPrompt),
  };
}
