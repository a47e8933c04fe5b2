/** One call's outcome inside a combined group. */
export type Settled<R> = { ok: true; value: R } | { ok: false; error: unknown };

export interface CombiningQueueOptions<C, R> {
  /** Groups in flight at once. A call that arrives while one is free starts at once. */
  slots: number;
  /** Most calls one group takes. */
  maxGroup: number;
  /** Most bytes (by `sizeOf`) one group takes; a single larger call still goes, alone. */
  maxGroupBytes?: number;
  sizeOf?(call: C): number;
  /** Runs a group of calls as one unit, settling each; throws when the unit failed as a whole. */
  runGroup(calls: readonly C[]): Promise<Settled<R>[]>;
  /** Runs one call by itself. */
  runAlone(call: C): Promise<R>;
  /**
   * Whether a group that failed as a whole certainly committed nothing, so that each of its calls
   * may run again alone (a deadlock, a serialization failure, a conflict the alone path resolves).
   * Anything else (a connection lost during the commit: did it commit?) fails every call of the
   * group with the error, since running them again could apply them twice; callers retry with
   * their idempotency keys.
   */
  retryAlone(err: unknown): boolean;
}

/**
 * Group commit's queueing, shared by every combined write: the unit of work (many transactions'
 * works in one transaction) and the append path (many appends in one statement). Calls that
 * arrive while every slot is busy wait and then go together, as one group, into the next free
 * slot; so when calls do not overlap nothing waits, and under load each commit carries many calls.
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
      const group = this.#take();
      this.#busy++;
      this.#groups++;
      this.#calls += group.length;
      void this.#run(group).finally(() => {
        this.#busy--;
        this.#pump();
      });
    }
  }

  /** The next group: in arrival order, up to the count and the byte budget. */
  #take() {
    const { maxGroup, maxGroupBytes, sizeOf } = this.#options;
    if (maxGroupBytes === undefined || sizeOf === undefined) return this.#waiting.splice(0, maxGroup);
    let bytes = 0;
    let count = 0;
    while (count < this.#waiting.length && count < maxGroup) {
      const next = this.#waiting[count];
      const size = next === undefined ? 0 : sizeOf(next.call);
      if (count > 0 && bytes + size > maxGroupBytes) break;
      bytes += size;
      count++;
    }
    return this.#waiting.splice(0, count);
  }

  async #run(group: Array<{ call: C; resolve(value: R): void; reject(err: unknown): void }>): Promise<void> {
    let settled: Settled<R>[];
    try {
      settled = await this.#options.runGroup(group.map((g) => g.call));
    } catch (err) {
      if (!this.#options.retryAlone(err)) {
        for (const pending of group) pending.reject(err);
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

/**
 * SQLSTATEs after which PostgreSQL has certainly rolled the transaction (or statement) back and
 * another try may succeed: deadlock, serialization failure, and a prepared plan gone stale under
 * a schema change (db/prepared.ts prepares it afresh next time).
 */
const ROLLED_BACK = new Set(["40P01", "40001", "0A000"]);

/** The SQLSTATE of a database error, looking through wrappers (MikroORM's exceptions). */
export function sqlStateOf(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as { code?: unknown; sqlState?: unknown }).sqlState ?? (e as { code?: unknown }).code;
    if (typeof code === "string" && /^[0-9A-Z]{5}$/.test(code)) return code;
  }
  return undefined;
}

/** A deadlock, serialization failure or stale plan: nothing committed, and another try may succeed. */
export const isTransientConflict = (err: unknown) => ROLLED_BACK.has(sqlStateOf(err) ?? "");
