/** One call's outcome inside a combined group. */
export type Settled<R> = { ok: true; value: R } | { ok: false; error: unknown };

export interface CombiningQueueOptions<C, R> {
  /** Groups in flight at once. A call that arrives while one is free starts at once. */
  slots: number;
  /** Most calls one group takes. */
  maxGroup: number;
  /** Runs a group of calls as one unit; throws when the unit failed as a whole. */
  runGroup(calls: readonly C[]): Promise<Settled<R>[]>;
  /** Runs one call by itself: used for a group that failed as a whole, each of its calls again. */
  runAlone(call: C): Promise<R>;
  /**
   * Whether a group of one that failed as a whole is run again alone. No when running alone is
   * the same as a group of one (the unit of work); yes when the alone path differs (the append
   * statement's fallback handles races the combined statement leaves to it).
   */
  retrySingle: boolean;
}

/**
 * Group commit's queueing, shared by every combined write: the unit of work (many transactions'
 * works in one transaction) and the append path (many appends in one statement). Calls that
 * arrive while every slot is busy wait and then go together, as one group, into the next free
 * slot; so when calls do not overlap nothing waits, and under load each commit carries many calls.
 * A group that fails as a whole (a deadlock, a call's error that aborted the transaction) is
 * retried call by call, so that each call gets its own result or its own error.
 */
export class CombiningQueue<C, R> {
  readonly #options: CombiningQueueOptions<C, R>;
  readonly #waiting: Array<{ call: C; resolve(value: R): void; reject(err: unknown): void }> = [];
  #busy = 0;
  #groups = 0;
  #calls = 0;

  constructor(options: CombiningQueueOptions<C, R>) {
    this.#options = options;
  }

  submit(call: C): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.#waiting.push({ call, resolve, reject });
      this.#pump();
    });
  }

  /** Groups run and calls they carried, for tests and benchmarks. */
  stats(): { groups: number; calls: number } {
    return { groups: this.#groups, calls: this.#calls };
  }

  #pump(): void {
    while (this.#busy < this.#options.slots && this.#waiting.length > 0) {
      const group = this.#waiting.splice(0, this.#options.maxGroup);
      this.#busy++;
      this.#groups++;
      this.#calls += group.length;
      void this.#run(group).finally(() => {
        this.#busy--;
        this.#pump();
      });
    }
  }

  async #run(group: Array<{ call: C; resolve(value: R): void; reject(err: unknown): void }>): Promise<void> {
    let settled: Settled<R>[];
    try {
      settled = await this.#options.runGroup(group.map((g) => g.call));
    } catch (err) {
      if (group.length === 1 && !this.#options.retrySingle) {
        group[0]?.reject(err);
        return;
      }
      for (const pending of group) {
        await this.#options.runAlone(pending.call).then(pending.resolve, pending.reject);
      }
      return;
    }
    for (const [i, pending] of group.entries()) {
      const outcome = settled[i];
      if (outcome === undefined) pending.reject(new Error("a combined group returned no outcome for a call"));
      else if (outcome.ok) pending.resolve(outcome.value);
      else pending.reject(outcome.error);
    }
  }
}
