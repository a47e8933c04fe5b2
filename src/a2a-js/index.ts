/**
 * agentstore behind an @a2a-js/sdk 1.3 server: its TaskStore, its PushNotificationStore and an
 * ExecutionEventBusManager, all over agentstore's TaskService, so that any replica of an a2a-js
 * server (behind a load balancer) sees the same tasks and can serve a resubscribe with replay.
 *
 *   import { createClient } from "agentstore/client";
 *   import { createAgentStoreA2A } from "agentstore/a2a-js";
 *   const store = createClient({ baseUrl, apiKey });
 *   const a2a = createAgentStoreA2A({ tasks: store.tasks });
 *   const handler = new DefaultRequestHandler(card, a2a.taskStore, executor, a2a.eventBusManager,
 *     a2a.pushNotificationStore, a2a.pushNotificationSender); // the sender: with push delivery on
 *
 * Tenancy: agentstore names the tenant from the API key, so `tasks` may be a function of the
 * call's ServerCallContext (its `tenant` and `user`) answering the client of that tenant (or owner).
 * A single client puts every caller in one scope.
 *
 * `@a2a-js/sdk` is an optional peer dependency: only this entry point imports it.
 */

import { randomUUID } from "node:crypto";
import type {
  ListTasksRequest,
  ListTasksResponse,
  Task as SdkTask,
  TaskPushNotificationConfig as SdkTaskPushNotificationConfig,
} from "@a2a-js/sdk";
import {
  type AgentExecutionEvent,
  DefaultExecutionEventBus,
  type ExecutionEventBus,
  type ExecutionEventBusManager,
  type PushNotificationSender,
  type PushNotificationStore,
  ServerCallContext,
  type StoredPushNotificationConfig,
  type TaskStore,
} from "@a2a-js/sdk/server";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import type { TaskService, TaskUpdateSchema } from "../../gen/agentstore/v1/task_service_pb.ts";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import {
  artifactUpdateFromStore,
  artifactUpdateToStore,
  isoToTimestamp,
  pushConfigFromStore,
  pushConfigToStore,
  stateToStore,
  statusUpdateFromStore,
  statusUpdateToStore,
  taskFromStore,
  taskToStore,
} from "./convert.ts";

export * from "./convert.ts";

/** The typed TaskService client (`createClient(...).tasks`). */
export type TaskServiceClient = Client<typeof TaskService>;
/** One client for every call, or the client of the call's tenant or owner. */
export type TaskServiceResolver = TaskServiceClient | ((context: ServerCallContext) => TaskServiceClient);

export interface AgentStoreA2AOptions {
  /** The TaskService client, or a function of the call's context answering one. */
  tasks: TaskServiceResolver;
  /**
   * The A2A wire version loadWithMetadata reports for every push config (agentstore keeps the
   * config, not the version it was registered over). Default "1.0".
   */
  pushWireVersion?: string;
  /**
   * How long a resubscribe waits for the handler's load of the task (whose update_seq is where
   * its replay starts) before starting from the task as it is then. Default 10 s.
   */
  snapshotWaitMs?: number;
  /** Called with errors that cannot be thrown to a caller (a failed publish, a broken stream). */
  onError?: (error: unknown, where: string) => void;
}

const UNSCOPED = new ServerCallContext();
/** The handler's default keepBusAliveStates: INPUT_REQUIRED, AUTH_REQUIRED. */
const KEEP_ALIVE_STATES = new Set([6, 8]);
const RETRYABLE = new Set([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Internal,
  Code.Unknown,
  Code.Canceled,
]);
const PUBLISH_ATTEMPTS = 4;

function resolve(tasks: TaskServiceResolver, context: ServerCallContext | undefined): TaskServiceClient {
  return typeof tasks === "function" ? tasks(context ?? UNSCOPED) : tasks;
}

function isNotFound(err: unknown): boolean {
  return err instanceof ConnectError && err.code === Code.NotFound;
}

/** NOT_FOUND because the task itself is missing (A2A_TASK_NOT_FOUND), not one of its parts. */
function isTaskNotFound(err: unknown): boolean {
  if (!(err instanceof ConnectError) || err.code !== Code.NotFound) return false;
  return err.findDetails(ErrorInfoSchema).some((info) => info.reason === "A2A_TASK_NOT_FOUND");
}

/** How long a push config given with message/send waits for its task's first save. */
const PENDING_CONFIG_TTL_MS = 10 * 60_000;

const pendingKey = (context: ServerCallContext | undefined, taskId: string) =>
  `${context?.tenant ?? ""}\u0000${context?.user?.userName ?? ""}\u0000${taskId}`;

/**
 * What the three parts share on one replica: the publish bookkeeping of the event-bus manager that
 * the task store reads, and the snapshot seqs that the task store's loads hand to resubscribes.
 */
class Coordination {
  /** Per task: events folded by PublishTaskUpdate whose ResultManager save is still to come. */
  readonly owed = new Map<string, number>();
  /** Per task: waiters for the next save (a task event's), so updates publish after the task exists. */
  readonly saveWaiters = new Map<string, Array<() => void>>();
  /** Per task: resubscribes waiting for the update_seq of the handler's load, oldest first. */
  readonly loadWaiters = new Map<string, Array<(seq: bigint) => void>>();
  /**
   * Per task: push configs given with message/send before the task exists in agentstore (the SDK
   * saves them first). They are created by the task's first save, in its transaction, so that
   * the save itself is delivered to them.
   */
  readonly pendingConfigs: Map<string, { configs: SdkTaskPushNotificationConfig[]; timer: NodeJS.Timeout }> =
    new Map();

  /**
   * Holds a config for the task's first save, by tenant (the SDK's, as the event buses are) and
   * task: another tenant's task of the same id never takes it. A task that is never saved (its
   * executor failed first) drops its configs after PENDING_CONFIG_TTL_MS.
   */
  holdConfig(
    context: ServerCallContext | undefined,
    taskId: string,
    config: SdkTaskPushNotificationConfig,
  ): void {
    const key = pendingKey(context, taskId);
    const entry = this.pendingConfigs.get(key);
    if (entry !== undefined) clearTimeout(entry.timer);
    const configs = (entry?.configs ?? []).filter((c) => c.id !== config.id);
    configs.push(config);
    const timer = setTimeout(() => this.pendingConfigs.delete(key), PENDING_CONFIG_TTL_MS);
    timer.unref();
    this.pendingConfigs.set(key, { configs, timer });
  }

  takeConfigs(context: ServerCallContext | undefined, taskId: string): SdkTaskPushNotificationConfig[] {
    const key = pendingKey(context, taskId);
    const entry = this.pendingConfigs.get(key);
    if (entry === undefined) return [];
    clearTimeout(entry.timer);
    this.pendingConfigs.delete(key);
    return entry.configs;
  }

  takeOwed(taskId: string): boolean {
    const n = this.owed.get(taskId) ?? 0;
    if (n <= 0) return false;
    if (n === 1) this.owed.delete(taskId);
    else this.owed.set(taskId, n - 1);
    return true;
  }

  addOwed(taskId: string): void {
    this.owed.set(taskId, (this.owed.get(taskId) ?? 0) + 1);
  }

  saved(taskId: string): void {
    const waiters = this.saveWaiters.get(taskId);
    this.saveWaiters.delete(taskId);
    for (const wake of waiters ?? []) wake();
  }

  waitForSave(taskId: string, ms: number): Promise<void> {
    return new Promise((done) => {
      const timer = setTimeout(wake, ms);
      const list = this.saveWaiters.get(taskId) ?? [];
      list.push(wake);
      this.saveWaiters.set(taskId, list);
      function wake() {
        clearTimeout(timer);
        done();
      }
    });
  }

  loaded(taskId: string, seq: bigint): void {
    const list = this.loadWaiters.get(taskId);
    const first = list?.shift();
    if (list !== undefined && list.length === 0) this.loadWaiters.delete(taskId);
    first?.(seq);
  }

  waitForLoad(taskId: string, ms: number): Promise<bigint | undefined> {
    return new Promise((done) => {
      const list = this.loadWaiters.get(taskId) ?? [];
      const waiter = (seq: bigint) => {
        clearTimeout(timer);
        done(seq);
      };
      const timer = setTimeout(() => {
        const current = this.loadWaiters.get(taskId);
        const i = current?.indexOf(waiter) ?? -1;
        if (current !== undefined && i >= 0) current.splice(i, 1);
        if (current?.length === 0) this.loadWaiters.delete(taskId);
        done(undefined);
      }, ms);
      list.push(waiter);
      this.loadWaiters.set(taskId, list);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// TaskStore

/**
 * The SDK's TaskStore over TaskService: save is SaveTask, load is GetTask (undefined when not
 * found), list is ListTasks with the SDK's filters and paging (agentstore's page tokens). Every
 * load and list answers new objects.
 */
export class AgentStoreTaskStore implements TaskStore {
  readonly #tasks: TaskServiceResolver;
  readonly #coordination: Coordination | undefined;

  constructor(tasks: TaskServiceResolver, coordination?: Coordination) {
    this.#tasks = tasks;
    this.#coordination = coordination;
  }

  async save(task: SdkTask, context: ServerCallContext): Promise<void> {
    // The event-bus manager folded this update into the task with PublishTaskUpdate already: the
    // ResultManager's save of the same fold would apply it twice (an appended chunk, twice).
    if (this.#coordination?.takeOwed(task.id)) return;
    const configs = this.#coordination?.takeConfigs(context, task.id) ?? [];
    try {
      await resolve(this.#tasks, context).saveTask({
        task: taskToStore(task),
        pushConfigs: configs.map((config) => pushConfigToStore(task.id, config)),
      });
    } catch (err) {
      for (const config of configs) this.#coordination?.holdConfig(context, task.id, config);
      throw err;
    }
    this.#coordination?.saved(task.id);
  }

  async load(taskId: string, context: ServerCallContext): Promise<SdkTask | undefined> {
    try {
      const { task } = await resolve(this.#tasks, context).getTask({ id: taskId });
      if (task === undefined) return undefined;
      this.#coordination?.loaded(taskId, task.updateSeq);
      return taskFromStore(task);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async list(params: ListTasksRequest, context: ServerCallContext): Promise<ListTasksResponse> {
    const response = await resolve(this.#tasks, context).listTasks({
      contextId: params.contextId ?? "",
      status: stateToStore(params.status),
      pageSize: params.pageSize ?? 0,
      pageToken: params.pageToken ?? "",
      historyLength: params.historyLength,
      statusTimestampAfter: isoToTimestamp(params.statusTimestampAfter),
      includeArtifacts: params.includeArtifacts ?? false,
    });
    return {
      tasks: response.tasks.map(taskFromStore),
      nextPageToken: response.nextPageToken,
      pageSize: response.pageSize,
      totalSize: response.totalSize,
    };
  }
}

// ---------------------------------------------------------------------------------------------
// PushNotificationStore

/**
 * The SDK's PushNotificationStore over TaskService's push configs. A config's url must pass the
 * server's checks; a config of a task not in agentstore yet waits for the task's first save (see
 * save).
 */
export class AgentStorePushNotificationStore implements PushNotificationStore {
  readonly #tasks: TaskServiceResolver;
  readonly #wireVersion: string;
  readonly #coordination: Coordination | undefined;

  constructor(
    tasks: TaskServiceResolver,
    options: { wireVersion?: string } = {},
    coordination?: Coordination,
  ) {
    this.#tasks = tasks;
    this.#wireVersion = options.wireVersion ?? "1.0";
    this.#coordination = coordination;
  }

  /**
   * Creates or replaces the config; an empty id is assigned (in place, as the SDK requires). A
   * config of a task not in agentstore yet (message/send saves it before the task) is held on this
   * replica and created by the task's first save, which is then its first notification.
   */
  async save(
    taskId: string,
    context: ServerCallContext,
    config: SdkTaskPushNotificationConfig,
  ): Promise<void> {
    try {
      const { config: stored } = await resolve(this.#tasks, context).createPushConfig({
        config: pushConfigToStore(taskId, config),
      });
      if (!config.id && stored !== undefined) config.id = stored.id;
    } catch (err) {
      if (this.#coordination === undefined || !isTaskNotFound(err)) throw err;
      if (!config.id) config.id = randomUUID();
      this.#coordination.holdConfig(context, taskId, { ...config, taskId });
    }
  }

  async load(taskId: string, context: ServerCallContext): Promise<SdkTaskPushNotificationConfig[]> {
    const tasks = resolve(this.#tasks, context);
    const configs: SdkTaskPushNotificationConfig[] = [];
    let pageToken = "";
    try {
      do {
        const page = await tasks.listPushConfigs({ taskId, pageSize: 100, pageToken });
        for (const config of page.configs) configs.push(pushConfigFromStore(config, context.tenant ?? ""));
        pageToken = page.nextPageToken;
      } while (pageToken !== "");
    } catch (err) {
      if (isNotFound(err)) return [];
      throw err;
    }
    return configs;
  }

  async loadWithMetadata(
    taskId: string,
    context: ServerCallContext,
  ): Promise<StoredPushNotificationConfig[]> {
    const configs = await this.load(taskId, context);
    return configs.map((config) => ({ config, wireVersion: this.#wireVersion }));
  }

  /** Deletes one config; without configId, as the SDK's in-memory store does, the one whose id is the task's. */
  async delete(taskId: string, context: ServerCallContext, configId?: string): Promise<void> {
    try {
      await resolve(this.#tasks, context).deletePushConfig({ taskId, id: configId ?? taskId });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Event buses

type TaskUpdateInit = MessageInitShape<typeof TaskUpdateSchema>;

function updateOf(event: AgentExecutionEvent): { taskId: string; update: TaskUpdateInit } | undefined {
  switch (event.kind) {
    case "statusUpdate":
      return {
        taskId: event.data.taskId,
        update: { update: { case: "statusUpdate", value: statusUpdateToStore(event.data) } },
      };
    case "artifactUpdate":
      return {
        taskId: event.data.taskId,
        update: { update: { case: "artifactUpdate", value: artifactUpdateToStore(event.data) } },
      };
    default:
      return undefined;
  }
}

let busCounter = 0;

/** Shared by both buses: PublishTaskUpdate under a request id per event, retried on transient errors. */
async function publishUpdate(
  client: TaskServiceClient,
  taskId: string,
  update: TaskUpdateInit,
  requestId: string,
): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await client.publishTaskUpdate({ taskId, updates: [update], requestId });
      return;
    } catch (err) {
      const error = ConnectError.from(err);
      if (!RETRYABLE.has(error.code) || attempt >= PUBLISH_ATTEMPTS) throw error;
      await new Promise((r) => setTimeout(r, 50 * 2 ** attempt));
    }
  }
}

/**
 * The bus of a task executed on this replica. Each status and artifact event is published with
 * PublishTaskUpdate (in order, one request id per event, so a retry cannot fold it twice) and
 * delivered to the local listeners once stored; a task event is delivered at once, and the
 * updates after it wait for the task store's save of it (the task must exist to take updates).
 * Delivery is deferred, so the manager settles the bus itself once every event is delivered.
 */
export class AgentStoreExecutionEventBus extends DefaultExecutionEventBus {
  readonly #client: TaskServiceClient;
  readonly #coordination: Coordination;
  readonly #onError: (error: unknown, where: string) => void;
  readonly #prefix = `a2a-js-${process.pid}-${Date.now().toString(36)}-${++busCounter}-`;
  #count = 0;
  #chain: Promise<void> = Promise.resolve();
  #lastState: number | undefined;

  constructor(
    client: TaskServiceClient,
    coordination: Coordination,
    onError: (error: unknown, where: string) => void,
  ) {
    super();
    this.#client = client;
    this.#coordination = coordination;
    this.#onError = onError;
  }

  override publish(event: AgentExecutionEvent): void {
    const requestId = `${this.#prefix}${++this.#count}`;
    const deliver = () => super.publish(event);
    this.#chain = this.#chain.then(async () => {
      const update = updateOf(event);
      if (event.kind === "task") this.#lastState = event.data.status?.state;
      if (event.kind === "statusUpdate") this.#lastState = event.data.status?.state;
      if (update === undefined) {
        // A task event: its save by the ResultManager creates (or replaces) the task.
        const saved =
          event.kind === "task" ? this.#coordination.waitForSave(event.data.id, 10_000) : undefined;
        deliver();
        await saved;
        return;
      }
      try {
        await publishUpdate(this.#client, update.taskId, update.update, requestId);
        this.#coordination.addOwed(update.taskId);
      } catch (err) {
        // Not folded: the ResultManager's save (SaveTask) stores the update instead.
        this.#onError(err, `PublishTaskUpdate of task ${update.taskId}`);
      }
      deliver();
    });
  }

  /** Resolves once every event published so far is stored and delivered. */
  drained(): Promise<void> {
    return this.#chain;
  }

  /** The last task state published on the bus. */
  get lastState(): number | undefined {
    return this.#lastState;
  }

  /** finished() after the events published before it. */
  override finished(): void {
    this.#chain = this.#chain.then(() => super.finished());
  }
}

/**
 * The bus a replica answers for a task it does not execute: it streams the task's update log
 * (StreamTaskUpdates) from the update_seq of the handler's load of the task, so a resubscribe
 * gets every event after the task it was sent, once. It opens when its first listener attaches
 * and closes when the last one leaves or the task ends. Events published on it (a cancel) go to
 * PublishTaskUpdate; they come back through the stream.
 */
export class AgentStoreRemoteEventBus extends DefaultExecutionEventBus {
  readonly #client: TaskServiceClient;
  readonly #taskId: string;
  readonly #coordination: Coordination;
  readonly #snapshotWaitMs: number;
  readonly #onError: (error: unknown, where: string) => void;
  readonly #prefix = `a2a-js-${process.pid}-${Date.now().toString(36)}-${++busCounter}-`;
  #count = 0;
  #listeners = 0;
  #abort: AbortController | undefined;

  constructor(
    client: TaskServiceClient,
    taskId: string,
    coordination: Coordination,
    snapshotWaitMs: number,
    onError: (error: unknown, where: string) => void,
  ) {
    super();
    this.#client = client;
    this.#taskId = taskId;
    this.#coordination = coordination;
    this.#snapshotWaitMs = snapshotWaitMs;
    this.#onError = onError;
  }

  override publish(event: AgentExecutionEvent): void {
    const update = updateOf(event);
    if (update === undefined) return;
    publishUpdate(this.#client, update.taskId, update.update, `${this.#prefix}${++this.#count}`).catch(
      (err) => this.#onError(err, `PublishTaskUpdate of task ${update.taskId}`),
    );
  }

  // biome-ignore lint/suspicious/noExplicitAny: the SDK's overloads
  override on(eventName: any, listener: any): this {
    super.on(eventName, listener);
    if (eventName === "event" && ++this.#listeners === 1 && this.#abort === undefined) this.#open();
    return this;
  }

  // biome-ignore lint/suspicious/noExplicitAny: the SDK's overloads
  override off(eventName: any, listener: any): this {
    super.off(eventName, listener);
    if (eventName === "event" && --this.#listeners <= 0) this.#abort?.abort();
    return this;
  }

  #open(): void {
    const abort = new AbortController();
    this.#abort = abort;
    const deliver = (event: AgentExecutionEvent) => super.publish(event);
    const finish = () => super.finished();
    void (async () => {
      const afterSeq = await this.#coordination.waitForLoad(this.#taskId, this.#snapshotWaitMs);
      if (abort.signal.aborted) return;
      try {
        const stream = this.#client.streamTaskUpdates(
          { taskId: this.#taskId, afterSeq },
          { signal: abort.signal },
        );
        let first = true;
        for await (const entry of stream) {
          const update = entry.update;
          const snapshot = first && afterSeq === undefined;
          first = false;
          if (update.case === "statusUpdate")
            deliver({ kind: "statusUpdate", data: statusUpdateFromStore(update.value) });
          else if (update.case === "artifactUpdate")
            deliver({ kind: "artifactUpdate", data: artifactUpdateFromStore(update.value) });
          // Without a snapshot seq the stream starts with the task as it is; later `task` entries
          // are the ResultManager's saves of updates already sent.
          else if (update.case === "task" && snapshot)
            deliver({ kind: "task", data: taskFromStore(update.value) });
        }
      } catch (err) {
        if (!abort.signal.aborted) this.#onError(err, `StreamTaskUpdates of task ${this.#taskId}`);
      }
      if (!abort.signal.aborted) finish();
    })();
  }
}

/**
 * The SDK's ExecutionEventBusManager over agentstore: a task executed here gets an
 * AgentStoreExecutionEventBus (publishing to agentstore); getByTaskId of a task not executed here
 * answers a new AgentStoreRemoteEventBus, so a resubscribe on any replica follows the task's update
 * log. Scoped like the SDK's (tenant and task id).
 */
export class AgentStoreExecutionEventBusManager implements ExecutionEventBusManager {
  readonly #tasks: TaskServiceResolver;
  readonly #coordination: Coordination;
  readonly #snapshotWaitMs: number;
  readonly #onError: (error: unknown, where: string) => void;
  readonly #buses = new Map<string, AgentStoreExecutionEventBus>();

  constructor(
    tasks: TaskServiceResolver,
    coordination: Coordination,
    options: { snapshotWaitMs?: number; onError?: (error: unknown, where: string) => void } = {},
  ) {
    this.#tasks = tasks;
    this.#coordination = coordination;
    this.#snapshotWaitMs = options.snapshotWaitMs ?? 10_000;
    this.#onError =
      options.onError ?? ((error, where) => console.warn(`agentstore a2a-js: ${where}:`, error));
  }

  #key(taskId: string, context: ServerCallContext | undefined): string {
    return `${context?.tenant ?? ""}\u0000${taskId}`;
  }

  createOrGetByTaskId(taskId: string, context?: ServerCallContext): ExecutionEventBus {
    const key = this.#key(taskId, context);
    let bus = this.#buses.get(key);
    if (bus === undefined) {
      bus = new AgentStoreExecutionEventBus(resolve(this.#tasks, context), this.#coordination, this.#onError);
      this.#buses.set(key, bus);
    }
    return bus;
  }

  getByTaskId(taskId: string, context?: ServerCallContext): ExecutionEventBus | undefined {
    return (
      this.#buses.get(this.#key(taskId, context)) ??
      new AgentStoreRemoteEventBus(
        resolve(this.#tasks, context),
        taskId,
        this.#coordination,
        this.#snapshotWaitMs,
        this.#onError,
      )
    );
  }

  cleanupByTaskId(taskId: string, context?: ServerCallContext): void {
    const key = this.#key(taskId, context);
    const bus = this.#buses.get(key);
    this.#buses.delete(key);
    bus?.removeAllListeners();
  }

  /**
   * Takes every bus of this manager: once its events are stored and delivered, it finishes and
   * goes unless its last state waits for the client (INPUT_REQUIRED, AUTH_REQUIRED).
   */
  settleByTaskId(
    taskId: string,
    eventBus: ExecutionEventBus,
    _lastState: unknown,
    context: ServerCallContext,
  ): boolean {
    if (!(eventBus instanceof AgentStoreExecutionEventBus)) return false;
    void eventBus.drained().then(() => {
      const state = eventBus.lastState;
      if (state !== undefined && KEEP_ALIVE_STATES.has(state)) return;
      eventBus.finished();
      void eventBus.drained().then(() => {
        if (this.#buses.get(this.#key(taskId, context)) === eventBus) this.cleanupByTaskId(taskId, context);
      });
    });
    return true;
  }
}

/**
 * The PushNotificationSender for an agentstore that delivers push notifications itself
 * (AGENTSTORE_PUSH_DELIVERY=true): it sends nothing, because every update the handler publishes is
 * already a durable delivery in agentstore, sent (and retried, across restarts) by its replicas.
 * The SDK's own sender would POST each event a second time, from memory.
 */
export class AgentStorePushNotificationSender implements PushNotificationSender {
  async send(): Promise<void> {}
}

/** The parts, sharing what they must on this replica. */
export interface AgentStoreA2A {
  taskStore: AgentStoreTaskStore;
  pushNotificationStore: AgentStorePushNotificationStore;
  eventBusManager: AgentStoreExecutionEventBusManager;
  /** Pass it to the handler when agentstore's push delivery is on (see the class). */
  pushNotificationSender: AgentStorePushNotificationSender;
}

/** A task store, a push store and an event-bus manager over one agentstore (per replica). */
export function createAgentStoreA2A(options: AgentStoreA2AOptions): AgentStoreA2A {
  const coordination = new Coordination();
  return {
    taskStore: new AgentStoreTaskStore(options.tasks, coordination),
    pushNotificationStore: new AgentStorePushNotificationStore(
      options.tasks,
      { wireVersion: options.pushWireVersion },
      coordination,
    ),
    eventBusManager: new AgentStoreExecutionEventBusManager(options.tasks, coordination, {
      snapshotWaitMs: options.snapshotWaitMs,
      onError: options.onError,
    }),
    pushNotificationSender: new AgentStorePushNotificationSender(),
  };
}
