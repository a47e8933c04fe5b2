import type { Logger } from "../logger.ts";
import type { Change, ChangeFeed } from "./feed.ts";

/** One entry of a gapless, append-only log (seq 1, 2, 3, ...). */
export interface LogEntry<T> {
  seq: number;
  /** The last entry the log will ever have: a follower stops after it. */
  terminal: boolean;
  /** Approximate size, to bound the memory a topic buffer holds. */
  bytes: number;
  value: T;
}

/** Where a hub reads a log from: the database, through a store. */
export interface LogSource<T> {
  /** Feed channel whose changes concern this kind of log. */
  readonly channel: string;
  /** The newest committed seq (0 for an empty log); throws when the log's owner does not exist. */
  head(tenant: string, key: string): Promise<number>;
  /** Entries with seq > afterSeq, in seq order, at most `limit`. */
  read(tenant: string, key: string, afterSeq: number, limit: number): Promise<LogEntry<T>[]>;
}

export interface HubOptions {
  /** Entries a topic keeps in memory for followers that are live or nearly so. */
  bufferEntries: number;
  /** Bytes a topic keeps in memory at most (the newest entry is always kept). */
  bufferBytes: number;
  /** Rows per database read. */
  pageSize: number;
  /** Re-check each followed log this often, in case a notification was lost. */
  pollIntervalMs: number;
}

class Topic<T> {
  readonly tenant: string;
  readonly key: string;
  followers = 0;
  /** Newest seq known committed; -1 until the first head() returned. */
  head = -1;
  /** Entries (head - buffer.length, head], contiguous. */
  buffer: LogEntry<T>[] = [];
  bufferBytes = 0;
  ready: Promise<void> = Promise.resolve();
  /** A change arrived before `head` was known. */
  changedWhileStarting = false;
  refreshing = false;
  refreshAgain = false;
  readonly waiters = new Set<() => void>();
  timer: NodeJS.Timeout | undefined;

  constructor(tenant: string, key: string) {
    this.tenant = tenant;
    this.key = key;
  }

  wake(): void {
    for (const waiter of this.waiters) waiter();
    this.waiters.clear();
  }
}

/**
 * Fans a log out to every follower in this process. Per followed log there is one topic: on each
 * change notification the topic reads the new entries from the database once and every follower
 * takes them from the topic's buffer. A follower that falls behind the buffer (a slow reader, or one
 * that starts from an old seq) reads pages from the database itself until it is live again, so a
 * slow follower costs at most one page of memory and never holds back the others.
 */
export class LogHub<T> {
  readonly #source: LogSource<T>;
  readonly #options: HubOptions;
  readonly #logger: Logger;
  readonly #topics = new Map<string, Topic<T>>();
  readonly #unsubscribe: Array<() => void>;

  constructor(source: LogSource<T>, feed: ChangeFeed, options: HubOptions, logger: Logger) {
    this.#source = source;
    this.#options = options;
    this.#logger = logger;
    this.#unsubscribe = [
      feed.subscribe((change) => this.#onChange(change)),
      feed.onResync(() => {
        for (const topic of this.#topics.values()) void this.#refresh(topic);
      }),
    ];
  }

  #databaseReads = 0;

  /** What the hub holds and has done, for tests and metrics. */
  stats(): { topics: number; followers: number; bufferedEntries: number; databaseReads: number } {
    let followers = 0;
    let bufferedEntries = 0;
    for (const topic of this.#topics.values()) {
      followers += topic.followers;
      bufferedEntries += topic.buffer.length;
    }
    return { topics: this.#topics.size, followers, bufferedEntries, databaseReads: this.#databaseReads };
  }

  /**
   * Yields the log's entries after `afterSeq`: stored ones first, then live ones, each once and in
   * order, ending after the terminal entry. Ends with `signal.reason` when the signal aborts.
   */
  async *follow(
    tenant: string,
    key: string,
    afterSeq: number,
    signal: AbortSignal,
  ): AsyncGenerator<LogEntry<T>> {
    const topic = this.#acquire(tenant, key);
    try {
      await untilAborted(topic.ready, signal);
      let cursor = afterSeq;
      for (;;) {
        signal.throwIfAborted();
        if (cursor >= topic.head) {
          await this.#waitBeyond(topic, cursor, signal);
          continue;
        }
        const first = topic.buffer[0];
        const entries =
          first !== undefined && first.seq <= cursor + 1
            ? topic.buffer.slice(cursor + 1 - first.seq)
            : await this.#read(tenant, key, cursor);
        if (entries.length === 0) {
          // The topic saw entries that the database no longer has: the log was deleted under us.
          await this.#source.head(tenant, key);
          throw new Error(`log ${key} lost entries after seq ${cursor}`);
        }
        for (const entry of entries) {
          if (entry.seq <= cursor) continue;
          if (entry.seq !== cursor + 1) throw new Error(`log ${key} has a gap after seq ${cursor}`);
          cursor = entry.seq;
          yield entry;
          if (entry.terminal) return;
        }
      }
    } finally {
      this.#release(topic);
    }
  }

  close(): void {
    for (const off of this.#unsubscribe) off();
    for (const topic of this.#topics.values()) clearInterval(topic.timer);
    this.#topics.clear();
  }

  #acquire(tenant: string, key: string): Topic<T> {
    const id = `${tenant}\u0000${key}`;
    let topic = this.#topics.get(id);
    if (topic === undefined) {
      const created = new Topic<T>(tenant, key);
      topic = created;
      this.#topics.set(id, created);
      // Registered before head() runs: a change committed after head()'s snapshot is flagged by
      // #onChange, one committed before it is in the snapshot. Either way nothing is missed.
      created.ready = this.#source.head(tenant, key).then(
        (head) => {
          created.head = head;
          // Every follower may have left while head() ran; a timer armed now would never be cleared.
          if (this.#topics.get(id) !== created) return;
          created.timer = setInterval(() => void this.#refresh(created), this.#options.pollIntervalMs);
          created.timer.unref();
          if (created.changedWhileStarting) void this.#refresh(created);
        },
        (err: unknown) => {
          if (this.#topics.get(id) === created) this.#topics.delete(id);
          throw err;
        },
      );
      // Followers observe the failure; this handler only keeps it from counting as unhandled.
      created.ready.catch(() => {});
    }
    topic.followers++;
    return topic;
  }

  #release(topic: Topic<T>): void {
    topic.followers--;
    if (topic.followers > 0) return;
    const id = `${topic.tenant}\u0000${topic.key}`;
    if (this.#topics.get(id) === topic) this.#topics.delete(id);
    clearInterval(topic.timer);
  }

  #onChange(change: Change): void {
    if (change.channel !== this.#source.channel) return;
    const topic = this.#topics.get(`${change.tenant}\u0000${change.key}`);
    if (topic === undefined) return;
    if (topic.head < 0) topic.changedWhileStarting = true;
    else if (change.seq > topic.head) void this.#refresh(topic);
  }

  /** Reads what is new since `head` into the buffer; concurrent calls coalesce into one more read. */
  async #refresh(topic: Topic<T>): Promise<void> {
    if (topic.head < 0) return;
    if (topic.refreshing) {
      topic.refreshAgain = true;
      return;
    }
    topic.refreshing = true;
    try {
      do {
        topic.refreshAgain = false;
        for (;;) {
          const entries = await this.#read(topic.tenant, topic.key, topic.head);
          this.#append(topic, entries);
          if (entries.length < this.#options.pageSize || topic.followers === 0) break;
        }
      } while (topic.refreshAgain && topic.followers > 0);
    } catch (err) {
      // Followers keep waiting; the next notification or poll tries again.
      this.#logger.warn({ err: (err as Error).message, log: topic.key }, "stream refresh failed");
    } finally {
      topic.refreshing = false;
    }
  }

  #read(tenant: string, key: string, afterSeq: number): Promise<LogEntry<T>[]> {
    this.#databaseReads++;
    return this.#source.read(tenant, key, afterSeq, this.#options.pageSize);
  }

  #append(topic: Topic<T>, entries: LogEntry<T>[]): void {
    if (entries.length === 0) return;
    for (const entry of entries) {
      if (entry.seq <= topic.head) continue;
      if (entry.seq !== topic.head + 1) {
        topic.buffer = [];
        topic.bufferBytes = 0;
      }
      topic.buffer.push(entry);
      topic.bufferBytes += entry.bytes;
      topic.head = entry.seq;
    }
    const { bufferEntries, bufferBytes } = this.#options;
    let drop = 0;
    while (
      topic.buffer.length - drop > 1 &&
      (topic.buffer.length - drop > bufferEntries || topic.bufferBytes > bufferBytes)
    ) {
      topic.bufferBytes -= topic.buffer[drop]?.bytes ?? 0;
      drop++;
    }
    if (drop > 0) topic.buffer = topic.buffer.slice(drop);
    topic.wake();
  }

  #waitBeyond(topic: Topic<T>, cursor: number, signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (topic.head > cursor) return resolve();
      const onAbort = () => {
        topic.waiters.delete(wake);
        reject(signal.reason);
      };
      const wake = () => {
        signal.removeEventListener("abort", onAbort);
        resolve();
      };
      if (signal.aborted) return reject(signal.reason);
      topic.waiters.add(wake);
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }
}

function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      },
    );
  });
}
