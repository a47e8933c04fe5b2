import type { ChangeFeed } from "./feed.ts";

const topicOf = (tenant: string, key: string) => `${tenant}\u0000${key}`;

/**
 * Wakes calls that wait for work (a waiting ClaimNextRun, a waiting ClaimTasks) when a change of
 * one channel arrives for their tenant and key, from this replica or any other (the change feed).
 * A waiter is armed before the call looks for work, so work that arrives between the look and the
 * wait still wakes it; a waiter also looks again every `lookMs`, in case a notification was lost.
 */
export class WakeSignal {
  readonly #waiters = new Map<string, Set<() => void>>();
  readonly #unsubscribe: Array<() => void>;
  /** Even without a notification, a waiting claim looks again this often (one can be lost). */
  readonly #lookMs: number;

  constructor(feed: ChangeFeed, channel: string, lookMs: number) {
    this.#lookMs = lookMs;
    this.#unsubscribe = [
      feed.subscribe((change) => {
        if (change.channel === channel) this.#wake(topicOf(change.tenant, change.key));
      }),
      // Notifications may have been missed while the feed reconnected: everyone looks again.
      feed.onResync(() => {
        for (const topic of [...this.#waiters.keys()]) this.#wake(topic);
      }),
    ];
  }

  /**
   * Arms a waiter for the tenant's key (a change of the channel with that tenant and key wakes
   * it). `wait(ms, signal)` then settles at the next such change (or at once if one came since
   * arming), after ms, or rejects with the signal's reason.
   */
  arm(tenant: string, key = ""): { wait(ms: number, signal: AbortSignal): Promise<void>; disarm(): void } {
    let woken = false;
    let resolveWait: (() => void) | undefined;
    const waiter = () => {
      woken = true;
      resolveWait?.();
    };
    const topic = topicOf(tenant, key);
    let set = this.#waiters.get(topic);
    if (set === undefined) {
      set = new Set();
      this.#waiters.set(topic, set);
    }
    set.add(waiter);
    const disarm = () => {
      const current = this.#waiters.get(topic);
      current?.delete(waiter);
      if (current?.size === 0) this.#waiters.delete(topic);
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

  /** Waiters armed right now, for tests and metrics. */
  waiting(): number {
    let count = 0;
    for (const set of this.#waiters.values()) count += set.size;
    return count;
  }

  close(): void {
    for (const off of this.#unsubscribe) off();
    for (const topic of [...this.#waiters.keys()]) this.#wake(topic);
  }

  #wake(topic: string): void {
    const set = this.#waiters.get(topic);
    if (set === undefined) return;
    this.#waiters.delete(topic);
    for (const waiter of set) waiter();
  }
}
