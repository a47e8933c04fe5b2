import { type GroupValues, nonNegativeInt, positiveInt, setting } from "./settings.ts";

/** TaskService: A2A tasks in cache mode, and conversations. */
export const tasksSettings = {
  taskTtlMs: setting({
    env: "AGENTSTORE_TASK_TTL_MS",
    flag: "task-ttl-ms",
    help: "default TTL of an A2A task saved without one (cache mode); 0 keeps tasks until deleted",
    schema: nonNegativeInt,
    fallback: "0",
  }),
  taskSweepMs: setting({
    env: "AGENTSTORE_TASK_SWEEP_MS",
    flag: "task-sweep-ms",
    help: "how often each replica deletes expired A2A tasks and idle conversations (they are invisible at once)",
    schema: positiveInt,
    fallback: "1000",
  }),
  maxTaskBytes: setting({
    env: "AGENTSTORE_MAX_TASK_BYTES",
    flag: "max-task-bytes",
    help: "largest A2A task (status, artifacts, history, metadata) a write may leave behind",
    schema: positiveInt,
    fallback: String(2 * 1024 * 1024),
  }),
  conversationMaxMessages: setting({
    env: "AGENTSTORE_CONVERSATION_MAX_MESSAGES",
    flag: "conversation-max-messages",
    help: "messages a conversation keeps (the oldest are dropped); 0 keeps all",
    schema: nonNegativeInt,
    fallback: "1000",
  }),
  conversationTtlMs: setting({
    env: "AGENTSTORE_CONVERSATION_TTL_MS",
    flag: "conversation-ttl-ms",
    help: "a conversation not read or written for this long is gone; 0 keeps conversations until deleted",
    schema: nonNegativeInt,
    fallback: "0",
  }),
};

export interface TasksConfig {
  /** null: tasks saved without a TTL never expire. */
  defaultTtlMs: number | null;
  sweepMs: number;
  maxTaskBytes: number;
  /** null: no maximum. */
  conversationMaxMessages: number | null;
  /** null: conversations never expire. */
  conversationTtlMs: number | null;
}

const zeroIsNone = (n: number) => (n === 0 ? null : n);

export function tasksConfig(values: GroupValues<typeof tasksSettings>): TasksConfig {
  return {
    defaultTtlMs: zeroIsNone(values.taskTtlMs),
    sweepMs: values.taskSweepMs,
    maxTaskBytes: values.maxTaskBytes,
    conversationMaxMessages: zeroIsNone(values.conversationMaxMessages),
    conversationTtlMs: zeroIsNone(values.conversationTtlMs),
  };
}
