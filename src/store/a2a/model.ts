import { clone, create, toBinary } from "@bufbuild/protobuf";
import { type Timestamp, timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  type Artifact,
  ArtifactSchema,
  type Message,
  MessageSchema,
  type Task,
  type TaskArtifactUpdateEvent,
  TaskArtifactUpdateEventSchema,
  TaskSchema,
  TaskState,
  TaskStateSchema,
  type TaskStatusUpdateEvent,
  TaskStatusUpdateEventSchema,
} from "../../../gen/agentstore/v1/a2a_task_pb.ts";
import { DomainError, invalidArgument } from "../../core/errors.ts";

/**
 * The A2A aggregate's model is the A2A Task itself (gen/agentstore/v1/a2a_task_pb.ts): the store
 * keeps it as the protobuf encoding of the spec's fields and folds updates into it here, so the
 * handlers, the store and the stream all speak the one shape an A2A server maps one to one.
 */

/** Feed channel of task update logs: key = task id, seq = the task's newest update seq. */
export const TASK_UPDATES_CHANNEL = "a2a-task-updates";

export const TERMINAL_STATES: ReadonlySet<TaskState> = new Set([
  TaskState.COMPLETED,
  TaskState.FAILED,
  TaskState.CANCELED,
  TaskState.REJECTED,
]);
export const isTerminal = (state: TaskState) => TERMINAL_STATES.has(state);
const stateName = (state: TaskState) =>
  TaskStateSchema.values.find((v) => v.number === state)?.name ?? String(state);

/** One update of PublishTaskUpdate (the proto's TaskUpdate oneof). */
export type TaskUpdateCase =
  | { case: "statusUpdate"; value: TaskStatusUpdateEvent }
  | { case: "artifactUpdate"; value: TaskArtifactUpdateEvent }
  | { case: "message"; value: Message };

/** An entry of a task's update log, as StreamTaskUpdates sends it. */
export type LogEntryCase = TaskUpdateCase | { case: "task"; value: Task };

export const a2aTaskNotFound = (taskId: string) =>
  new DomainError("NOT_FOUND", "A2A_TASK_NOT_FOUND", `task ${taskId} was not found`, { task_id: taskId });

export const generationMismatch = (taskId: string, expected: bigint, actual: number) =>
  new DomainError(
    "ABORTED",
    "GENERATION_MISMATCH",
    actual === 0
      ? `task ${taskId} does not exist, expected generation ${expected}`
      : `task ${taskId} is at generation ${actual}, expected ${expected}`,
    { task_id: taskId, expected_generation: String(expected), generation: String(actual) },
  );

export const a2aTaskTerminal = (taskId: string, state: TaskState) =>
  new DomainError(
    "FAILED_PRECONDITION",
    "TASK_TERMINAL",
    `task ${taskId} is ${stateName(state)}, a terminal state it never leaves`,
    { task_id: taskId, state: stateName(state) },
  );

export const taskTooLarge = (taskId: string, bytes: number, limit: number) =>
  new DomainError(
    "RESOURCE_EXHAUSTED",
    "PAYLOAD_TOO_LARGE",
    `task ${taskId} would take ${bytes} bytes, more than the limit of ${limit}`,
    { task_id: taskId, bytes: String(bytes), limit: String(limit) },
  );

/** The spec's part of a task (fields 1 to 6), as stored: the store's own fields are columns. */
export function specPart(task: Task): Task {
  return create(TaskSchema, {
    id: task.id,
    contextId: task.contextId,
    status: task.status,
    artifacts: task.artifacts,
    history: task.history,
    metadata: task.metadata,
  });
}

export const encodeTask = (task: Task) => toBinary(TaskSchema, specPart(task));

/** A status without a timestamp gets the write's time: status_timestamp_after then has a value. */
function stamped(status: TaskStatusUpdateEvent["status"], now: Timestamp) {
  if (status !== undefined && status.timestamp === undefined) status.timestamp = now;
  return status;
}

/** The ids an event carries, when set, must be the task's; unset, they become the task's. */
function ownedBy(task: Task, event: { taskId: string; contextId: string }, field: string): void {
  if (event.taskId !== "" && event.taskId !== task.id) {
    throw invalidArgument("TASK_ID_MISMATCH", `${field}.task_id ${event.taskId} is not the task ${task.id}`, {
      field: `${field}.task_id`,
    });
  }
  if (event.contextId !== "" && event.contextId !== task.contextId) {
    throw invalidArgument(
      "CONTEXT_ID_MISMATCH",
      `${field}.context_id ${event.contextId} is not the task's context ${task.contextId}`,
      { field: `${field}.context_id` },
    );
  }
  event.taskId = task.id;
  event.contextId = task.contextId;
}

/**
 * Folds one update into the task (in place) and returns the entry as the log keeps it (ids
 * filled in, the status stamped). Rules, as the A2A SDKs apply them: a status replaces the status
 * and the previous status message joins the history, the update's metadata merges into the task's
 * key by key; an artifact without `append` adds or replaces the artifact of its id, with `append`
 * adds its parts to it (or starts it); a message joins the history. A terminal task takes nothing.
 */
export function foldUpdate(task: Task, update: TaskUpdateCase, index: number, now: Date): TaskUpdateCase {
  const state = task.status?.state ?? TaskState.UNSPECIFIED;
  if (isTerminal(state)) throw a2aTaskTerminal(task.id, state);
  const field = `updates[${index}]`;
  switch (update.case) {
    case "statusUpdate": {
      const event = clone(TaskStatusUpdateEventSchema, update.value);
      ownedBy(task, event, `${field}.status_update`);
      event.status = stamped(event.status, timestampFromDate(now));
      const previous = task.status?.message;
      if (previous !== undefined) task.history.push(previous);
      task.status = event.status;
      if (event.metadata !== undefined) {
        task.metadata = { ...(task.metadata ?? {}), ...event.metadata };
      }
      return { case: "statusUpdate", value: event };
    }
    case "artifactUpdate": {
      const event = clone(TaskArtifactUpdateEventSchema, update.value);
      ownedBy(task, event, `${field}.artifact_update`);
      const artifact = event.artifact as Artifact;
      const at = task.artifacts.findIndex((a) => a.artifactId === artifact.artifactId);
      if (at < 0) task.artifacts.push(clone(ArtifactSchema, artifact));
      else if (event.append) task.artifacts[at]?.parts.push(...clone(ArtifactSchema, artifact).parts);
      else task.artifacts[at] = clone(ArtifactSchema, artifact);
      return { case: "artifactUpdate", value: event };
    }
    case "message": {
      const message = clone(MessageSchema, update.value);
      ownedBy(task, message, `${field}.message`);
      task.history.push(message);
      return { case: "message", value: message };
    }
  }
}

/** Only the last `length` history messages; undefined keeps them all. */
export function withHistory(task: Task, length: number | undefined): Task {
  if (length === undefined || task.history.length <= length) return task;
  return { ...task, history: length === 0 ? [] : task.history.slice(-length) };
}
