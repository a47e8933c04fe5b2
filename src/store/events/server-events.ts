import type { Tx } from "../../db/unit-of-work.ts";
import { RUN_EVENTS_CHANNEL } from "./appends.ts";
import { appendServerEvent } from "./sql.ts";

/**
 * Event types the server writes into run logs. Clients cannot append them (RESERVED_EVENT_TYPE),
 * so a runner or a dashboard can trust what they say.
 */
export const SERVER_EVENT = {
  claim: "agentstore.claim",
  leaseRenewedLate: "agentstore.lease_renewed_late",
  release: "agentstore.release",
  leaseLost: "agentstore.lease_lost",
  command: "agentstore.command",
  commandStatus: "agentstore.command_status",
} as const;

/** Every type starting with this is the server's own. */
export const SERVER_EVENT_PREFIX = "agentstore.";

/** Appends a server event to a run the transaction holds active, and stages its feed change. */
export async function writeServerEvent(
  tx: Tx,
  tenant: string,
  runId: string,
  type: (typeof SERVER_EVENT)[keyof typeof SERVER_EVENT],
  payload: Record<string, unknown>,
): Promise<{ seq: number; createdAt: Date }> {
  const row = await tx.sql.first(appendServerEvent, tenant, runId, type, JSON.stringify(payload));
  if (row === undefined) throw new Error(`run ${runId} vanished while the transaction held it`);
  tx.publish({ channel: RUN_EVENTS_CHANNEL, tenant, key: runId, seq: row.seq });
  return row;
}
