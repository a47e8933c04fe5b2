/**
 * Conversions between @a2a-js/sdk 1.3 objects (A2A v1.0 shapes, ts-proto style: ISO timestamps,
 * `{ $case, value }` oneofs, plain JSON metadata) and agentstore.v1 messages (protobuf-es).
 *
 * Both sides mirror A2A v1.0 field for field and number for number, so the mapping is one to one:
 * states and roles keep their numbers (the SDK's UNRECOGNIZED, -1, becomes UNSPECIFIED), ISO 8601
 * strings become Timestamps (millisecond precision), `raw` parts keep their bytes. Every function
 * returns new objects: nothing of the input is shared with the output.
 */
import type {
  Artifact as SdkArtifact,
  Message as SdkMessage,
  Part as SdkPart,
  Task as SdkTask,
  TaskArtifactUpdateEvent as SdkTaskArtifactUpdateEvent,
  TaskPushNotificationConfig as SdkTaskPushNotificationConfig,
  TaskStatus as SdkTaskStatus,
  TaskStatusUpdateEvent as SdkTaskStatusUpdateEvent,
} from "@a2a-js/sdk";
import { create, fromJson, type JsonObject, type JsonValue, toJson } from "@bufbuild/protobuf";
import { type Timestamp, timestampDate, timestampFromDate, ValueSchema } from "@bufbuild/protobuf/wkt";
import {
  type Artifact,
  ArtifactSchema,
  type Message,
  MessageSchema,
  type Part,
  PartSchema,
  type Role,
  type Task,
  type TaskArtifactUpdateEvent,
  TaskArtifactUpdateEventSchema,
  type TaskPushNotificationConfig,
  TaskPushNotificationConfigSchema,
  TaskSchema,
  type TaskState,
  type TaskStatus,
  TaskStatusSchema,
  type TaskStatusUpdateEvent,
  TaskStatusUpdateEventSchema,
} from "../../gen/agentstore/v1/a2a_task_pb.ts";

// The SDK's enums are TypeScript enums with the spec's numbers; agentstore's are the same numbers.
// Typed as numbers here so that this module needs no runtime import of the SDK.
type SdkTaskState = SdkTaskStatus["state"];
type SdkRole = SdkMessage["role"];

/** SDK TaskState (0..8; UNRECOGNIZED = -1) -> agentstore TaskState. */
export function stateToStore(state: SdkTaskState | undefined): TaskState {
  const n = Number(state ?? 0);
  return (Number.isInteger(n) && n >= 0 && n <= 8 ? n : 0) as TaskState;
}

/** agentstore TaskState -> SDK TaskState. */
export function stateFromStore(state: TaskState): SdkTaskState {
  const n = Number(state);
  return (n >= 0 && n <= 8 ? n : 0) as SdkTaskState;
}

function roleToStore(role: SdkRole | undefined): Role {
  const n = Number(role ?? 0);
  return (n === 1 || n === 2 ? n : 0) as Role;
}

function roleFromStore(role: Role): SdkRole {
  const n = Number(role);
  return (n === 1 || n === 2 ? n : 0) as SdkRole;
}

/** ISO 8601 -> Timestamp; undefined (or unparsable) -> undefined. */
export function isoToTimestamp(iso: string | undefined): Timestamp | undefined {
  if (iso === undefined || iso === "") return undefined;
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? undefined : timestampFromDate(date);
}

/** Timestamp -> ISO 8601 (UTC, milliseconds); undefined -> undefined. */
export function timestampToIso(ts: Timestamp | undefined): string | undefined {
  return ts === undefined ? undefined : timestampDate(ts).toISOString();
}

function jsonCopy<T>(value: T): T {
  return value === undefined ? value : structuredClone(value);
}

function metadataToStore(metadata: { [key: string]: unknown } | undefined): JsonObject | undefined {
  return metadata === undefined || metadata === null ? undefined : (jsonCopy(metadata) as JsonObject);
}

function metadataFromStore(metadata: JsonObject | undefined): { [key: string]: unknown } | undefined {
  return metadata === undefined ? undefined : jsonCopy(metadata);
}

export function partToStore(part: SdkPart): Part {
  const base = {
    metadata: metadataToStore(part.metadata),
    filename: part.filename ?? "",
    mediaType: part.mediaType ?? "",
  };
  const content = part.content;
  switch (content?.$case) {
    case "text":
      return create(PartSchema, { ...base, content: { case: "text", value: content.value } });
    case "raw":
      return create(PartSchema, { ...base, content: { case: "raw", value: new Uint8Array(content.value) } });
    case "url":
      return create(PartSchema, { ...base, content: { case: "url", value: content.value } });
    case "data":
      return create(PartSchema, {
        ...base,
        content: { case: "data", value: fromJson(ValueSchema, (content.value ?? null) as JsonValue) },
      });
    default:
      return create(PartSchema, base);
  }
}

export function partFromStore(part: Part): SdkPart {
  const base = {
    metadata: metadataFromStore(part.metadata),
    filename: part.filename,
    mediaType: part.mediaType,
  };
  const content = part.content;
  switch (content.case) {
    case "text":
      return { ...base, content: { $case: "text", value: content.value } };
    case "raw":
      return { ...base, content: { $case: "raw", value: Buffer.from(content.value) } };
    case "url":
      return { ...base, content: { $case: "url", value: content.value } };
    case "data":
      return { ...base, content: { $case: "data", value: toJson(ValueSchema, content.value) } };
    default:
      return { ...base, content: undefined };
  }
}

export function messageToStore(message: SdkMessage): Message {
  return create(MessageSchema, {
    messageId: message.messageId,
    contextId: message.contextId ?? "",
    taskId: message.taskId ?? "",
    role: roleToStore(message.role),
    parts: (message.parts ?? []).map(partToStore),
    metadata: metadataToStore(message.metadata),
    extensions: [...(message.extensions ?? [])],
    referenceTaskIds: [...(message.referenceTaskIds ?? [])],
  });
}

export function messageFromStore(message: Message): SdkMessage {
  return {
    messageId: message.messageId,
    contextId: message.contextId,
    taskId: message.taskId,
    role: roleFromStore(message.role),
    parts: message.parts.map(partFromStore),
    metadata: metadataFromStore(message.metadata),
    extensions: [...message.extensions],
    referenceTaskIds: [...message.referenceTaskIds],
  };
}

export function artifactToStore(artifact: SdkArtifact): Artifact {
  return create(ArtifactSchema, {
    artifactId: artifact.artifactId,
    name: artifact.name ?? "",
    description: artifact.description ?? "",
    parts: (artifact.parts ?? []).map(partToStore),
    metadata: metadataToStore(artifact.metadata),
    extensions: [...(artifact.extensions ?? [])],
  });
}

export function artifactFromStore(artifact: Artifact): SdkArtifact {
  return {
    artifactId: artifact.artifactId,
    name: artifact.name,
    description: artifact.description,
    parts: artifact.parts.map(partFromStore),
    metadata: metadataFromStore(artifact.metadata),
    extensions: [...artifact.extensions],
  };
}

export function statusToStore(status: SdkTaskStatus | undefined): TaskStatus {
  return create(TaskStatusSchema, {
    state: stateToStore(status?.state),
    message: status?.message === undefined ? undefined : messageToStore(status.message),
    timestamp: isoToTimestamp(status?.timestamp),
  });
}

export function statusFromStore(status: TaskStatus | undefined): SdkTaskStatus {
  return {
    state: stateFromStore(status?.state ?? 0),
    message: status?.message === undefined ? undefined : messageFromStore(status.message),
    timestamp: timestampToIso(status?.timestamp),
  };
}

/** An SDK task as agentstore stores it (the store-managed fields, 100 and up, left unset). */
export function taskToStore(task: SdkTask): Task {
  return create(TaskSchema, {
    id: task.id,
    contextId: task.contextId ?? "",
    status: statusToStore(task.status),
    artifacts: (task.artifacts ?? []).map(artifactToStore),
    history: (task.history ?? []).map(messageToStore),
    metadata: metadataToStore(task.metadata),
  });
}

/** A stored task as a new SDK task (the store-managed fields dropped). */
export function taskFromStore(task: Task): SdkTask {
  return {
    id: task.id,
    contextId: task.contextId,
    status: statusFromStore(task.status),
    artifacts: task.artifacts.map(artifactFromStore),
    history: task.history.map(messageFromStore),
    metadata: metadataFromStore(task.metadata),
  };
}

export function statusUpdateToStore(event: SdkTaskStatusUpdateEvent): TaskStatusUpdateEvent {
  return create(TaskStatusUpdateEventSchema, {
    taskId: event.taskId ?? "",
    contextId: event.contextId ?? "",
    status: statusToStore(event.status),
    metadata: metadataToStore(event.metadata),
  });
}

export function statusUpdateFromStore(event: TaskStatusUpdateEvent): SdkTaskStatusUpdateEvent {
  return {
    taskId: event.taskId,
    contextId: event.contextId,
    status: statusFromStore(event.status),
    metadata: metadataFromStore(event.metadata),
  };
}

export function artifactUpdateToStore(event: SdkTaskArtifactUpdateEvent): TaskArtifactUpdateEvent {
  return create(TaskArtifactUpdateEventSchema, {
    taskId: event.taskId ?? "",
    contextId: event.contextId ?? "",
    artifact: event.artifact === undefined ? undefined : artifactToStore(event.artifact),
    append: event.append ?? false,
    lastChunk: event.lastChunk ?? false,
    metadata: metadataToStore(event.metadata),
  });
}

export function artifactUpdateFromStore(event: TaskArtifactUpdateEvent): SdkTaskArtifactUpdateEvent {
  return {
    taskId: event.taskId,
    contextId: event.contextId,
    artifact: event.artifact === undefined ? undefined : artifactFromStore(event.artifact),
    append: event.append,
    lastChunk: event.lastChunk,
    metadata: metadataFromStore(event.metadata),
  };
}

/** The SDK's tenant is not kept: agentstore names the tenant from the caller's credentials. */
export function pushConfigToStore(
  taskId: string,
  config: SdkTaskPushNotificationConfig,
): TaskPushNotificationConfig {
  return create(TaskPushNotificationConfigSchema, {
    id: config.id ?? "",
    taskId,
    url: config.url,
    token: config.token ?? "",
    authentication:
      config.authentication === undefined || config.authentication.scheme === ""
        ? undefined
        : { scheme: config.authentication.scheme, credentials: config.authentication.credentials ?? "" },
  });
}

export function pushConfigFromStore(
  config: TaskPushNotificationConfig,
  tenant = "",
): SdkTaskPushNotificationConfig {
  return {
    tenant,
    id: config.id,
    taskId: config.taskId,
    url: config.url,
    token: config.token,
    authentication:
      config.authentication === undefined
        ? undefined
        : { scheme: config.authentication.scheme, credentials: config.authentication.credentials },
  };
}
