import type { ChangeFeed } from "../../feed/feed.ts";
import { PENDING_RUNS_CHANNEL } from "./model.ts";

/**
 * Wakes waiting ClaimNextRun calls when a run of their tenant becomes PENDING, on this replica or
 * any other (the change feed carries runs.pending). A waiter is armed before the claim looks for
 * a run, so a run created between the look and the wait still wakes it.
 */
export class PendingRunSignal {
  readonly #waiters = new Map<string, Set<() => void>>();
  readonly #unsubscribe: Array<() => void>;
  /** Even without a notification, a waiting claim looks again this often (one can be lost). */
  readonly #lookMs: number;

  constructor(feed: ChangeFeed, lookMs: number) {
    this.#lookMs = lookMs;
    this.#unsubscribe = [
      feed.subscribe((change) => {
        if (change.channel === PENDING_RUNS_CHANNEL) this.#wake(change.tenant);
      }),
      // Notifications may have been missed while the feed reconnected: everyone looks again.
      feed.onResync(() => {
        for (const tenant of [...this.#waiters.keys()]) this.#wake(tenant);
      }),
    ];
  }

  /**
   * Arms a waiter for the tenant. `wait(ms, signal)` then settles at the next pending run (or at
   * once if one came since arming), after ms, or rejects with the signal's reason.
   */
  arm(tenant: string): { wait(ms: number, signal: AbortSignal): Promise<void>; disarm(): void } {
    let woken = false;
    let resolveWait: (() => void) | undefined;
    const waiter = () => {
      woken = true;
      resolveWait?.();
    };
    let set = this.#waiters.get(tenant);
    if (set === undefined) {
      set = new Set();
      this.#waiters.set(tenant, set);
    }
    set.add(waiter);
    const disarm = () => {
      const current = this.#waiters.get(tenant);
      current?.delete(waiter);
      if (current?.size === 0) this.#waiters.delete(tenant);
    };
    return {
      disarm,
      wait: (ms, signal) =>
        new Promise<void>((resolve, reject) => {
          if (woken) return resolve();
          if (signal.aborted) return reject(signal.reason);
          const timer = setTimeout(done, Math.min(ms, this.#lookMs));
          const onAbort = () => {
            clearTimeout(timer);
            reject(signal.reason);
          };
          signal.addEventListener("abort", onAbort, { once: true });
          function done() {
            clearTimeout(timer);
            signal.removeEventListener("abort", onAbort);
            resolve();
          }
          resolveWait = done;
        }),
    };
  }

  /** Claims waiting right now, for tests and metrics. */
  waiting(): number {
    let count = 0;
    for (const set of this.#waiters.values()) count += set.size;
    return count;
  }

  close(): void {
    for (const off of this.#unsubscribe) off();
    for (const tenant of [...this.#waiters.keys()]) this.#wake(tenant);
  }

  #wake(tenant: string): void {
    const set = this.#waiters.get(tenant);
    if (set === undefined) return;
    this.#waiters.delete(tenant);
    for (const waiter of set) waiter();
  }
}
