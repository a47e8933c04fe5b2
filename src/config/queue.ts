import { type GroupValues, positiveInt, setting } from "./settings.ts";

/** Background work and waits of QueueService. */
export const queueSettings = {
  queueSweepMs: setting({
    env: "AGENTSTORE_QUEUE_SWEEP_MS",
    flag: "queue-sweep-ms",
    help: "how often each replica gives back queue tasks whose lease expired or attempt timed out",
    schema: positiveInt,
    fallback: "1000",
  }),
  scheduleTickMs: setting({
    env: "AGENTSTORE_SCHEDULE_TICK_MS",
    flag: "schedule-tick-ms",
    help: "how often each replica looks for due queue schedules",
    schema: positiveInt,
    fallback: "1000",
  }),
  scheduleCatchUpMs: setting({
    env: "AGENTSTORE_SCHEDULE_CATCH_UP_MS",
    flag: "schedule-catch-up-ms",
    help: "schedule ticks late by less than this are all enqueued; older missed ticks are skipped but the latest",
    schema: positiveInt,
    fallback: "60000",
  }),
  queueClaimPollMs: setting({
    env: "AGENTSTORE_QUEUE_CLAIM_POLL_MS",
    flag: "queue-claim-poll-ms",
    help: "safety re-look of a waiting ClaimTasks, in case a notification was lost",
    schema: positiveInt,
    fallback: "2000",
  }),
};

export interface QueueConfig {
  sweepMs: number;
  scheduleTickMs: number;
  scheduleCatchUpMs: number;
  claimPollMs: number;
}

export function queueConfig(values: GroupValues<typeof queueSettings>): QueueConfig {
  return {
    sweepMs: values.queueSweepMs,
    scheduleTickMs: values.scheduleTickMs,
    scheduleCatchUpMs: values.scheduleCatchUpMs,
    claimPollMs: values.queueClaimPollMs,
  };
}
