import type { Logger } from "../core/logger.ts";
import type { Change, ChangeFeed } from "./feed.ts";

/** One entry of an ordered stream: a run's event (by seq) or a changed row (by version). */
export interface StreamEntry<T> {
  /** Position in the stream; strictly increasing. */
  seq: number;
  /** The last entry the stream will ever have: a follower stops after it. */
  terminal: boolean;
  /** Approximate size, to bound the memory a topic buffer holds. */
  bytes: number;
  value: T;
}

/** One read of a stream from the database. */
export interface StreamRead<T> {
  /** Entries after the requested position, in order. */
  entries: StreamEntry<T>[];
  /**
   * The read is complete through this position: no entry at or below it is missing. At least the
   * last entry's seq. For a version stream it can be higher (versions of rows that changed again
   * later, or were deleted, have no entry of their own).
   */
  through: number;
  /** More entries exist after `through` already (the read stopped at its row or byte limit). */
  more: boolean;
}

/** Where a hub reads a stream from: the database, through a store. */
export interface StreamSource<T> {
  /** Feed channel whose changes concern this kind of stream. */
  readonly channel: string;
  /** The newest committed position (0 for an empty stream); throws when the owner does not exist. */
  head(tenant: string, key: string): Promise<number>;
  /** Entries with seq > after, in order, at most `limit`. */
  read(tenant: string, key: string, after: number, limit: number): Promise<StreamRead<T>>;
}

export interface HubOptions {
  /** Entries a topic keeps in memory for followers that are live or nearly so. */
  bufferEntries: number;
  /** Bytes a topic keeps in memory at most (the newest entry is always kept). */
  bufferBytes: number;
  /** Rows per database read. */
  pageSize: number;
  /** Re-check each followed stream this often, in case a notification was lost. */
  pollIntervalMs: number;
}

interface Ordering {
  /** Seqs are 1, 2, 3, ...: every position has an entry (an event log), and a gap is a bug. */
  gapless: boolean;
}

class Topic<T> {
  readonly id: string;
  readonly tenant: string;
  readonly key: string;
  followers = 0;
  /** Newest position known committed; -1 until the first head() returned. */
  head = -1;
  /** Every entry in (bufferFrom, head], in order. */
  buffer: StreamEntry<T>[] = [];
  bufferFrom = 0;
  bufferBytes = 0;
  ready: Promise<void> = Promise.resolve();
  /** A change arrived before `head` was known. */
  changedWhileStarting = false;
  refreshing = false;
  refreshAgain = false;
  readonly waiters = new Set<() => void>();
  timer: NodeJS.Timeout | undefined;

  constructor(id: string, tenant: string, key: string) {
    this.id = id;
    this.tenant = tenant;
    this.key = key;
  }

  wake(): void {
    for (const waiter of this.waiters) waiter();
    this.waiters.clear();
  }
}

export interface HubStats {
  topics: number;
  followers: number;
  bufferedEntries: number;
  databaseReads: number;
}

/** Where a follower starts: after a position, or after whatever is newest when it starts. */
export type StartAt = number | "now";

/**
 * Fans ordered streams out to every follower in this process. Per followed stream there is one
 * topic: on each change notification the topic reads the new entries from the database once and
 * every follower takes them from the topic's buffer. A follower that falls behind the buffer (a
 * slow reader, or one that starts from an old position) reads pages from the database itself until
 * it is live again, so a slow follower costs at most one page of memory and never holds back the
 * others. Catching up never waits for a notification or the poll timer: a read that stopped at its
 * row or byte limit says so (`more`), and the reader goes on at once.
 *
 * Two orderings share this code: event logs (LogHub: gapless seqs per run, ending at a terminal
 * entry) and version streams (VersionHub: a tenant-wide version across many rows, never ending).
 */
export class StreamHub<T> {
  readonly #source: StreamSource<T>;
  readonly #options: HubOptions;
  readonly #ordering: Ordering;
  readonly #logger: Logger;
  readonly #topics = new Map<string, Topic<T>>();
  readonly #unsubscribe: Array<() => void>;
  #databaseReads = 0;

  constructor(
    source: StreamSource<T>,
    feed: ChangeFeed,
    options: HubOptions,
    ordering: Ordering,
    logger: Logger,
  ) {
    this.#source = source;
    this.#options = options;
    this.#ordering = ordering;
    this.#logger = logger;
    this.#unsubscribe = [
      feed.subscribe((change) => this.#onChange(change)),
      feed.onResync(() => {
        for (const topic of this.#topics.values()) void this.#refresh(topic);
      }),
    ];
  }

  /** What the hub holds and has done, for tests and metrics. */
  stats(): HubStats {
    let followers = 0;
    let bufferedEntries = 0;
    for (const topic of this.#topics.values()) {
      followers += topic.followers;
      bufferedEntries += topic.buffer.length;
    }
    return { topics: this.#topics.size, followers, bufferedEntries, databaseReads: this.#databaseReads };
  }

  /**
   * Yields the stream's entries after `start`: stored ones first, then live ones, each once and in
   * order, ending after a terminal entry. Ends with `signal.reason` when the signal aborts.
   */
  async *follow(
    tenant: string,
    key: string,
    start: StartAt,
    signal: AbortSignal,
  ): AsyncGenerator<StreamEntry<T>> {
    const topic = this.#acquire(tenant, key);
    try {
      await untilAborted(topic.ready, signal);
      let cursor = start === "now" ? topic.head : start;
      for (;;) {
        signal.throwIfAborted();
        if (cursor >= topic.head) {
          await this.#waitBeyond(topic, cursor, signal);
          continue;
        }
        const read: StreamRead<T> =
          cursor >= topic.bufferFrom
            ? { entries: this.#buffered(topic, cursor), through: topic.head, more: false }
            : await this.#read(tenant, key, cursor);
        if (read.entries.length === 0 && read.through <= cursor) {
          // The topic saw entries that the database no longer has: the stream was deleted under us.
          await this.#source.head(tenant, key);
          throw new Error(`stream ${key} lost entries after ${cursor}`);
        }
        for (const entry of read.entries) {
          if (entry.seq <= cursor) continue;
          if (this.#ordering.gapless && entry.seq !== cursor + 1) {
            throw new Error(`stream ${key} has a gap after seq ${cursor}`);
          }
          cursor = entry.seq;
          yield entry;
          if (entry.terminal) return;
        }
        cursor = Math.max(cursor, read.through);
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

  /** Buffered entries after `cursor` (the buffer is sorted; followers near the head take the tail). */
  #buffered(topic: Topic<T>, cursor: number): StreamEntry<T>[] {
    const { buffer } = topic;
    let low = 0;
    let high = buffer.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if ((buffer[mid]?.seq ?? 0) <= cursor) low = mid + 1;
      else high = mid;
    }
    return buffer.slice(low);
  }

  #acquire(tenant: string, key: string): Topic<T> {
    const id = `${tenant}\u0000${key}`;
    let topic = this.#topics.get(id);
    if (topic === undefined) {
      const created = new Topic<T>(id, tenant, key);
      topic = created;
      this.#topics.set(id, created);
      // Registered before head() runs: a change committed after head()'s snapshot is flagged by
      // #onChange, one committed before it is in the snapshot. Either way nothing is missed.
      created.ready = this.#source.head(tenant, key).then(
        (head) => {
          created.head = head;
          created.bufferFrom = head;
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
    if (this.#topics.get(topic.id) === topic) this.#topics.delete(topic.id);
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
          const read = await this.#read(topic.tenant, topic.key, topic.head);
          this.#append(topic, read);
          if (!read.more || topic.followers === 0) break;
        }
      } while (topic.refreshAgain && topic.followers > 0);
    } catch (err) {
      // Followers keep waiting; the next notification or poll tries again.
      this.#logger.warn({ err: (err as Error).message, stream: topic.key }, "stream refresh failed");
    } finally {
      topic.refreshing = false;
    }
  }

  #read(tenant: string, key: string, after: number): Promise<StreamRead<T>> {
    this.#databaseReads++;
    return this.#source.read(tenant, key, after, this.#options.pageSize);
  }

  #append(topic: Topic<T>, read: StreamRead<T>): void {
    const before = topic.head;
    for (const entry of read.entries) {
      if (entry.seq <= topic.head) continue;
      if (this.#ordering.gapless && entry.seq !== topic.head + 1) {
        // Cannot happen with gapless seqs; if it does, keep only what is known to be contiguous.
        topic.buffer = [];
        topic.bufferBytes = 0;
        topic.bufferFrom = entry.seq - 1;
      }
      topic.buffer.push(entry);
      topic.bufferBytes += entry.bytes;
      topic.head = entry.seq;
    }
    topic.head = Math.max(topic.head, read.through);
    if (topic.head === before) return;
    const { bufferEntries, bufferBytes } = this.#options;
    let drop = 0;
    while (
      topic.buffer.length - drop > 1 &&
      (topic.buffer.length - drop > bufferEntries || topic.bufferBytes > bufferBytes)
    ) {
      const dropped = topic.buffer[drop];
      topic.bufferBytes -= dropped?.bytes ?? 0;
      topic.bufferFrom = dropped?.seq ?? topic.bufferFrom;
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

/** Run event logs: gapless seqs per run, ending after the terminal event. */
export class LogHub<T> extends StreamHub<T> {
  constructor(source: StreamSource<T>, feed: ChangeFeed, options: HubOptions, logger: Logger) {
    super(source, feed, options, { gapless: true }, logger);
  }
}

/** Version-ordered streams of many rows (WatchRuns, later WatchSessions, WatchTasks): never end. */
export class VersionHub<T> extends StreamHub<T> {
  constructor(source: StreamSource<T>, feed: ChangeFeed, options: HubOptions, logger: Logger) {
    super(source, feed, options, { gapless: false }, logger);
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
