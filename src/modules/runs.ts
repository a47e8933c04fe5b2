import { randomUUID } from "node:crypto";
import { type Client, createClient } from "@connectrpc/connect";
import { CommandType } from "../../gen/agentstore/v1/command_pb.ts";
import type { RunEvent } from "../../gen/agentstore/v1/run_event_pb.ts";
import { type Run as RunProto, RunStatus } from "../../gen/agentstore/v1/run_pb.ts";
import { RunService } from "../../gen/agentstore/v1/run_service_pb.ts";
import { RunnerService } from "../../gen/agentstore/v1/runner_service_pb.ts";
import { createRedactor } from "../core/redact.ts";
import { LogHub, VersionHub } from "../feed/stream-hub.ts";
import { eventToProto, runToProto } from "../services/run-convert.ts";
import { createRunService } from "../services/run-service.ts";
import { CommandStore } from "../store/commands/commands.ts";
import { commandEntities } from "../store/commands/entities.ts";
import { eventEntities } from "../store/events/entities.ts";
import { EventStore } from "../store/events/events.ts";
import { runEventSource } from "../store/events/stream.ts";
import { ClaimStore } from "../store/runs/claims.ts";
import { PendingRunSignal } from "../store/runs/dispatch.ts";
import { runEntities } from "../store/runs/entities.ts";
import { LeaseRecovery } from "../store/runs/recovery.ts";
import { RunStore } from "../store/runs/runs.ts";
import { UsageStore } from "../store/runs/usage.ts";
import { runVersionSource } from "../store/runs/watch.ts";
import type { Module } from "./module.ts";

/** Most bytes a run-event topic buffers, whatever AGENTSTORE_STREAM_BUFFER_EVENTS says. */
const EVENT_BUFFER_BYTES = 8 * 1024 * 1024;
/** Run changes a WatchRuns topic buffers per tenant. */
const RUN_CHANGE_BUFFER = 256;

/** RunService: runs, their event logs and token usage; StreamRunEvents and WatchRuns. */
export const runsModule: Module = {
  name: "runs",
  entities: [...runEntities, ...eventEntities, ...commandEntities],
  mount({ config, db, uow, feed, paging, logger }) {
    const settings = config.runs;
    const events = new EventStore(db, uow, paging, {
      limits: settings.limits,
      redact: createRedactor(settings.extraRedactKeys),
      writeSlots: config.database.writeGroups,
    });
    const runs = new RunStore(db, uow, paging, settings.limits);
    const usage = new UsageStore(db);
    const pending = new PendingRunSignal(feed, settings.dispatchPollMs);
    const claims = new ClaimStore(db, uow, pending);
    const commands = new CommandStore(db, uow, paging, settings.limits.maxEventBytes);
    const recovery = new LeaseRecovery(
      uow,
      { graceMs: settings.leases.graceMs, intervalMs: settings.leases.sweepMs },
      logger,
    );
    recovery.start();
    const eventHub = new LogHub<RunEvent>(
      runEventSource(events, eventToProto),
      feed,
      {
        bufferEntries: settings.stream.bufferEvents,
        bufferBytes: EVENT_BUFFER_BYTES,
        pageSize: 500,
        pollIntervalMs: settings.stream.pollIntervalMs,
      },
      logger,
    );
    const runHub = new VersionHub<RunProto>(
      runVersionSource(db, runToProto),
      feed,
      {
        bufferEntries: RUN_CHANGE_BUFFER,
        bufferBytes: EVENT_BUFFER_BYTES,
        pageSize: 500,
        pollIntervalMs: settings.stream.pollIntervalMs,
      },
      logger,
    );
    return {
      services: [RunService],
      routes: (router) =>
        router.service(
          RunService,
          createRunService({ runs, events, usage, claims, commands, eventHub, runHub }),
        ),
      async close() {
        pending.close();
        await recovery.stop();
      },
      hubs: new Map<string, LogHub<unknown> | VersionHub<unknown>>([
        ["run-events", eventHub as LogHub<unknown>],
        ["runs", runHub as VersionHub<unknown>],
      ]),
      writeStats: () => ({ appends: events.appendStats() }),
      gauges: () => ({ "claims.waiting": pending.waiting() }),
      warmUp: (transport) =>
        warmUpRuns(createClient(RunService, transport), createClient(RunnerService, transport)),
      warmUpRest: (transport) => warmUpRunReads(createClient(RunService, transport)),
    };
  },
};

/** One run's whole life through every RunService path, leaving nothing behind but its versions. */
async function warmUpRuns(
  client: Client<typeof RunService>,
  runners: Client<typeof RunnerService>,
): Promise<void> {
  const threadId = `warmup-${randomUUID()}`;
  const runnerId = `warmup-${randomUUID()}`;
  await runners.registerRunner({ runnerId });
  const { run } = await client.createRun({
    run: { threadId, metadata: { warmup: true }, input: { warmup: true } },
    requestId: randomUUID(),
  });
  const runId = run?.runId ?? "";
  await client.claimRun({ runId, runnerId });
  await client.renewRunLease({ runId, runnerId });
  const { command } = await client.createCommand({
    runId,
    type: CommandType.TURN,
    payload: { warmup: true },
  });
  await client.ackCommand({ commandId: command?.commandId ?? "" });
  await client.appendRunEvents({ runId, events: [{ type: "warmup", payload: { n: 1 } }] });
  await client.updateRunProgress({ runId, usage: { totalTokens: 1n }, messageCount: 1n });
  await client.getRun({ runId });
  await client.finishRun({ runId, status: RunStatus.COMPLETED });
  // Streamed whole, to its terminal event: the in-process transport does not pass a client's
  // cancel on to the handler, so a stream left open would keep a follower in the hub. (WatchRuns
  // never ends, and is left cold for that reason.)
  for await (const _ of client.streamRunEvents({ runId })) {
  }
  for await (const _ of client.streamCommands({ runId, runnerId })) {
  }
  await runners.deregisterRunner({ runnerId });
  await client.deleteRun({ runId });
}

/** The run reads a takeover does not need at once: lists, a run's event pages, thread usage. */
async function warmUpRunReads(client: Client<typeof RunService>): Promise<void> {
  const threadId = `warmup-${randomUUID()}`;
  const { run } = await client.createRun({ run: { threadId }, requestId: randomUUID() });
  const runId = run?.runId ?? "";
  try {
    await client.listRuns({ threadId, pageSize: 1 });
    await client.listInflightRuns({ pageSize: 1 });
    await client.listRunEvents({ runId, pageSize: 1 });
    await client.getThreadUsage({ threadId });
  } finally {
    await client.cancelRun({ runId });
    await client.deleteRun({ runId });
  }
}
