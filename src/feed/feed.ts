import type { SqlRunner } from "../db/sql.ts";

/**
 * "The stream `key` of `tenant` on `channel` now has entries up to `seq`." For a run's event log
 * the key is the run id and seq its last seq; for a version-ordered stream the key is the stream
 * name and seq the newest version.
 */
export interface Change {
  channel: string;
  tenant: string;
  key: string;
  seq: number;
}

/**
 * Change notification, one subscription per process. The unit of work (db/unit-of-work.ts) hands
 * a transaction's changes to the feed twice: `stage` inside the transaction (a cross-replica feed
 * writes its NOTIFY there, so the notification commits atomically with the data) and `committed`
 * after the commit (an in-process feed emits then, never before the data is visible). Stores never
 * call the feed themselves.
 */
export interface ChangeFeed {
  /**
   * The NOTIFY channel, for statements that notify by themselves (the combined append), in the
   * feed's wire format ([[channel, tenant, key, seq], ...]); undefined for an in-process feed, which
   * hears of changes through `committed`.
   */
  readonly notifyChannel: string | undefined;
  stage(sql: SqlRunner, changes: readonly Change[]): Promise<void>;
  committed(changes: readonly Change[]): void;
  /** Every change, from this process or (for a shared database) any replica. */
  subscribe(listener: (change: Change) => void): () => void;
  /** Called when notifications may have been missed (the listener reconnected): re-read everything. */
  onResync(listener: () => void): () => void;
  start(): Promise<void>;
  close(): Promise<void>;
}

/** Listener bookkeeping shared by the feed implementations. */
export class Listeners<A extends unknown[]> {
  readonly #set = new Set<(...args: A) => void>();
  readonly #onError: (err: unknown) => void;

  constructor(onError: (err: unknown) => void) {
    this.#onError = onError;
  }

  add(listener: (...args: A) => void): () => void {
    this.#set.add(listener);
    return () => this.#set.delete(listener);
  }

  emit(...args: A): void {
    for (const listener of this.#set) {
      try {
        listener(...args);
      } catch (err) {
        this.#onError(err);
      }
    }
  }
}
