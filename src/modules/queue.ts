import { randomUUID } from "node:crypto";
import { type Client, createClient } from "@connectrpc/connect";
import { QueueService } from "../../gen/agentstore/v1/queue_service_pb.ts";
import { Periodic } from "../core/periodic.ts";
import type { Database } from "../db/database.ts";
import { VersionHub } from "../feed/stream-hub.ts";
import { WakeSignal } from "../feed/wake-signal.ts";
import { WARMUP_TENANT } from "../server/auth.ts";
import { createQueueService } from "../services/queue-service.ts";
import { QueueScheduleEntity, QueueTaskEntity, queueEntities } from "../store/queue/entities.ts";
import { QUEUE_DUE_CHANNEL, type QueueTask } from "../store/queue/model.ts";
import { ScheduleStore } from "../store/queue/schedules.ts";
import { QueueStore } from "../store/queue/tasks.ts";
import { taskVersionSource } from "../store/queue/watch.ts";
import type { Module } from "./module.ts";

/** Task changes a WatchTasks topic buffers per tenant. */
const TASK_CHANGE_BUFFER = 1024;
const TASK_BUFFER_BYTES = 8 * 1024 * 1024;

/**
 * QueueService: the work queue (tasks with priority, lanes, leases, retries, dead tasks), its
 * schedules, and WatchTasks. Each replica runs two background loops: the sweeper that gives back
 * tasks whose lease expired, and the schedule ticker.
 */
export const queueModule: Module = {
  name: "queue",
  entities: queueEntities,
  mount({ config, db, uow, feed, paging, logger }) {
    const settings = config.queue;
    const due = new WakeSignal(feed, QUEUE_DUE_CHANNEL, settings.claimPollMs);
    // Payloads, results and attempt records are bounded like a run's metadata and input.
    const maxJsonBytes = config.runs.limits.maxRunJsonBytes;
    const queue = new QueueStore(db, uow, paging, due, maxJsonBytes);
    const schedules = new ScheduleStore(db, uow, paging, {
      catchUpMs: settings.scheduleCatchUpMs,
      maxJsonBytes,
    });
    const sweeper = new Periodic("queue lease sweep", () => queue.sweepExpired(), logger);
    const ticker = new Periodic("queue schedule tick", () => schedules.tick(), logger);
    sweeper.start(settings.sweepMs);
    ticker.start(settings.scheduleTickMs);
    const taskHub = new VersionHub<QueueTask>(
      taskVersionSource(db),
      feed,
      {
        bufferEntries: TASK_CHANGE_BUFFER,
        bufferBytes: TASK_BUFFER_BYTES,
        pageSize: 500,
        pollIntervalMs: config.runs.stream.pollIntervalMs,
      },
      logger,
    );
    return {
      services: [QueueService],
      routes: (router) => router.service(QueueService, createQueueService({ queue, schedules, taskHub })),
      hubs: new Map([["queue-tasks", taskHub as VersionHub<unknown>]]),
      gauges: () => ({ "queue.claims.waiting": due.waiting() }),
      async close() {
        due.close();
        await Promise.all([sweeper.stop(), ticker.stop()]);
      },
      warmUp: (transport) => cleaningUp(db, () => warmUpWorkerLoop(createClient(QueueService, transport))),
      warmUpRest: (transport) =>
        cleaningUp(db, () => warmUpQueueAdmin(createClient(QueueService, transport))),
    };
  },
};

/** Queue tasks have no delete: the warm-up's own rows go directly. */
async function cleaningUp(db: Database, warm: () => Promise<void>): Promise<void> {
  try {
    await warm();
  } finally {
    const em = db.orm.em.fork();
    await em.nativeDelete(QueueTaskEntity, { tenantId: WARMUP_TENANT });
    await em.nativeDelete(QueueScheduleEntity, { tenantId: WARMUP_TENANT });
  }
}

/** The worker loop: enqueue, claim, renew, complete, fail. */
async function warmUpWorkerLoop(client: Client<typeof QueueService>) {
  const queue = `warmup-${randomUUID()}`;
  const workerId = "warmup";
  await client.enqueueTasks({
    tasks: [
      { queue, payload: { n: 1 } },
      { queue, payload: { n: 2 }, idempotencyKey: "k" },
    ],
  });
  const { tasks } = await client.claimTasks({ workerId, queue, maxTasks: 2 });
  const [first, second] = tasks;
  if (first === undefined || second === undefined) return;
  await client.renewTaskLease({ taskId: first.taskId, workerId });
  await client.completeTasks({ workerId, completions: [{ taskId: first.taskId }] });
  await client.failTask({ taskId: second.taskId, workerId, noRetry: true });
}

/** Single enqueues and completions, attempt reports, dead tasks, cancels, reads, stats and schedules. */
async function warmUpQueueAdmin(client: Client<typeof QueueService>) {
  const queue = `warmup-${randomUUID()}`;
  const workerId = "warmup";
  const { task } = await client.enqueueTask({ task: { queue, payload: { n: 1 }, idempotencyKey: "k" } });
  const taskId = task?.taskId ?? "";
  const { tasks } = await client.claimTasks({ workerId, queue, maxTasks: 1 });
  if (tasks[0] !== undefined) {
    await client.updateTaskAttempt({ taskId, workerId, latestAttempt: { runId: "" } });
    await client.completeTask({ taskId, workerId });
  }
  await client.listDeadTasks({ queue, pageSize: 1 });
  await client.redriveTasks({ queue });
  await client.cancelQueueTask({ taskId });
  await client.getQueueTask({ taskId, readerId: workerId });
  await client.markTaskRead({ taskId, readerId: workerId });
  await client.listQueueTasks({ queue, pageSize: 1, readerId: workerId });
  await client.getQueueStats({ queue });
  await client.getQueueSnapshot({ queue });
  await client.createSchedule({ schedule: { queue, cron: "0 0 1 1 *" } });
  await client.listSchedules({ queue, pageSize: 1 });
}
