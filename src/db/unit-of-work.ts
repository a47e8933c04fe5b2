import type { EntityManager } from "@mikro-orm/postgresql";
import type { Change, ChangeFeed } from "../feed/feed.ts";
import { CombiningQueue, isTransientConflict, type Settled } from "./combining-queue.ts";
import type { Database } from "./database.ts";
import { col } from "./rows.ts";
import { type QueryExecutor, SqlRunner, statement } from "./sql.ts";

/** What a store's work sees inside one transaction. */
export interface Tx {
  /** The ORM, bound to this transaction (entities, query builder); its own identity map. */
  readonly em: EntityManager;
  /** Named statements, in this transaction. */
  readonly sql: SqlRunner;
  /** Stages a change for the feed: sent only if and after the transaction commits. */
  publish(change: Change): void;
  /**
   * The next version of a tenant's watched stream ("runs", ...), and a staged change for its
   * watchers. See `bumpVersion` below for why versions never commit out of order. With a count,
   * takes that many consecutive versions at once and returns the first (a batch write gives each
   * row its own; versions a write ends up not using are gaps, which readers skip harmlessly).
   */
  nextVersion(tenant: string, stream: string, count?: number): Promise<number>;
  /**
   * Takes the tenant's version lock of a stream without a new version (nextVersion later in the
   * transaction takes it again, at no cost): for transactions that must hold it before they lock
   * rows, and may in the end change nothing.
   */
  lockVersion(tenant: string, stream: string): Promise<void>;
  /**
   * Tells this transaction's work hooks (`UnitOfWork.addWorkHook`) of a change that no feed needs,
   * such as a run created or deleted: another aggregate may have to follow it in the same
   * transaction.
   */
  notice(notice: Notice): void;
}

/** A change inside a transaction that only work hooks hear of. */
export interface Notice {
  topic: string;
  tenant: string;
  key: string;
}

/**
 * Runs after a work that gave notices, in its transaction, with them: the way one aggregate follows
 * another's writes atomically (sessions follow their runs and commands) while the other only says
 * what happened. Notices a hook gives itself run no hook again.
 */
export type WorkHook = (tx: Tx, notices: readonly Notice[]) => Promise<void>;

/** The feed channel of a version-ordered stream. */
export const versionChannel = (stream: string) => `versions:${stream}`;

/**
 * Versions come from one counter row per tenant and stream, bumped by an upsert. The upsert holds
 * the row's lock until the transaction ends, so a second writer of the same tenant and stream
 * waits for the first to commit (or roll back) before it gets its number: versions become visible
 * in the order they were handed out. A reader that has seen version V has therefore seen every
 * version below V, and resuming `after_version = V` can never skip a change that committed late,
 * which a global sequence (nextval is handed out at call time, commits in any order) would allow.
 * The price is that watched writes of one tenant serialize on that row for the rest of their
 * transaction; keep such transactions short.
 */
const bumpVersion = statement<[tenant: string, stream: string, count: number]>()({
  name: "watch_versions.bump",
  text: `insert into watch_versions (tenant_id, stream, version) values ($1, $2, $3::bigint)
         on conflict (tenant_id, stream) do update set version = watch_versions.version + $3::bigint
         returning version`,
  row: { version: col.safeInt("version") },
});

const lockVersionRow = statement<[tenant: string, stream: string]>()({
  name: "watch_versions.lock",
  text: `insert into watch_versions (tenant_id, stream, version) values ($1, $2, 0)
         on conflict (tenant_id, stream) do update set version = watch_versions.version
         returning version`,
  row: { version: col.safeInt("version") },
});

type Work<R> = (tx: Tx) => Promise<R>;

/** A call of the unit of work: its tenant (null for work across tenants, such as a sweep). */
interface Call {
  tenant: string | null;
  work: Work<unknown>;
}

export interface UnitOfWorkOptions {
  /**
   * Transactions this replica runs at once. Calls that arrive while they are all busy wait and
   * then commit together, as one group, in the next free one.
   */
  concurrentGroups: number;
  /** Most calls one group commits together. */
  maxGroupSize: number;
}

/** A work of a group threw; the transaction rolled back. `index` is its place in the group. */
class WorkFailed extends Error {
  readonly index: number;
  readonly error: unknown;

  constructor(index: number, error: unknown) {
    super("a work of a group failed");
    this.index = index;
    this.error = error;
  }
}

/**
 * The one write path. Every store operation that writes runs inside `run`: one transaction, whose
 * feed changes are collected while it runs, handed to the feed inside the transaction (so a NOTIFY
 * commits with the data) and published after the commit; a transaction that rolls back publishes
 * nothing. Changes are coalesced per stream (the highest seq wins), so a transaction that appends
 * many events to a run notifies once. Stores never call the feed themselves; the one path that
 * commits outside `run`, the combined append statement, goes through `committed` here.
 *
 * Group commit: when calls overlap, the ones that arrive while every transaction slot is busy run
 * one after another inside the next transaction and commit together, with one NOTIFY for all of
 * them (db/combining-queue.ts): PostgreSQL's commit (an fsync) and its notify lock (held through
 * the commit of every notifying transaction) are then paid once per group instead of once per
 * call. A call that arrives while a slot is free starts at once, so nothing waits when calls do not
 * overlap. Each call keeps its own result and its own error: when a call fails, the transaction
 * rolls back, that call gets its error (what it saw is what it would have seen running right after
 * the calls before it) and the others run again, together, in a new transaction. A deadlock or a
 * serialization failure instead sends every call of the group through again alone. Works must
 * have no effects outside the database but what they `publish`, since they may run twice.
 */
export class UnitOfWork {
  readonly #db: Database;
  readonly #feed: ChangeFeed;
  readonly #queue: CombiningQueue<Call, unknown>;
  readonly #hooks: WorkHook[] = [];

  constructor(db: Database, feed: ChangeFeed, options: UnitOfWorkOptions) {
    this.#db = db;
    this.#feed = feed;
    this.#queue = new CombiningQueue<Call, unknown>({
      slots: options.concurrentGroups,
      maxGroup: options.maxGroupSize,
      runGroup: (calls) => this.#runGroup(calls),
      runAlone: async (call) => {
        try {
          return (await this.#transaction([call.work]))[0];
        } catch (err) {
          throw err instanceof WorkFailed ? err.error : err;
        }
      },
      retryAlone: (err) => isTransientConflict(err instanceof WorkFailed ? err.error : err),
    });
  }

  /**
   * Runs `work` in a transaction (possibly together with concurrent calls) and returns its result.
   *
   * Lock order, so that combined calls never deadlock each other: a group runs its calls sorted by
   * tenant (calls across tenants last), and a call that locks a tenant's runs takes that tenant's
   * runs version lock (`tx.lockVersion` or `tx.nextVersion`) before any run row. Locks are then
   * always taken version first, tenants in order.
   */
  run<R>(tenant: string | null, work: Work<R>): Promise<R> {
    return this.#queue.submit({ tenant, work }) as Promise<R>;
  }

  /** Adds a hook that runs after every work that gave notices (modules add theirs when mounted). */
  addWorkHook(hook: WorkHook): void {
    this.#hooks.push(hook);
  }

  /** How much grouping happened, for tests and benchmarks. */
  stats(): { groups: number; calls: number } {
    return this.#queue.stats();
  }

  /**
   * The NOTIFY channel, for a statement that commits by itself and notifies in its own SQL (the
   * combined append); undefined for the in-process feed, which `committed` tells instead.
   */
  get notifyChannel(): string | undefined {
    return this.#feed.notifyChannel;
  }

  /** Publishes the changes of a statement that committed outside `run` (the combined append). */
  committed(changes: readonly Change[]): void {
    if (changes.length > 0) this.#feed.committed(changes);
  }

  /** Works run together; a failing one is settled with its error and the rest run again. */
  async #runGroup(calls: readonly Call[]): Promise<Settled<unknown>[]> {
    const settled: Settled<unknown>[] = new Array(calls.length);
    let remaining = calls
      .map((call, index) => ({ work: call.work, tenant: call.tenant, index }))
      .sort((a, b) => compareTenants(a.tenant, b.tenant) || a.index - b.index);
    while (remaining.length > 0) {
      try {
        const values = await this.#transaction(remaining.map((r) => r.work));
        for (const [k, r] of remaining.entries()) settled[r.index] = { ok: true, value: values[k] };
        return settled;
      } catch (err) {
        if (!(err instanceof WorkFailed) || isTransientConflict(err.error)) throw err;
        const failed = remaining[err.index];
        if (failed === undefined) throw err;
        settled[failed.index] = { ok: false, error: err.error };
        remaining = remaining.filter((_, k) => k !== err.index);
      }
    }
    return settled;
  }

  async #transaction(works: readonly Work<unknown>[]): Promise<unknown[]> {
    let staged = new Map<string, Change>();
    const results = await this.#db.orm.em.fork().transactional(async (em) => {
      staged = new Map();
      const context = em.getTransactionContext<QueryExecutor>();
      if (context === undefined) throw new Error("transactional() gave no transaction context");
      const sql = new SqlRunner(
        () => context,
        (entity, raw) => em.map(entity, raw as never, { disableIdentityMap: true }),
      );
      let notices: Notice[] | undefined;
      const publish = (change: Change) => {
        const id = `${change.channel}\u0000${change.tenant}\u0000${change.key}`;
        const previous = staged.get(id);
        if (previous === undefined || previous.seq < change.seq) staged.set(id, change);
      };
      const values: unknown[] = [];
      for (const [index, work] of works.entries()) {
        // Each call its own identity map: what one call read must not answer another's reads
        // after raw statements changed the rows.
        const workEm = works.length === 1 ? em : em.fork({ keepTransactionContext: true, clear: true });
        const tx: Tx = {
          em: workEm,
          sql,
          publish,
          async nextVersion(tenant, stream, count = 1) {
            const row = await sql.first(bumpVersion, tenant, stream, count);
            if (row === undefined) throw new Error("the version upsert returned no row");
            publish({ channel: versionChannel(stream), tenant, key: stream, seq: row.version });
            return row.version - count + 1;
          },
          async lockVersion(tenant, stream) {
            await sql.first(lockVersionRow, tenant, stream);
          },
          notice(notice) {
            notices?.push(notice);
          },
        };
        try {
          notices = this.#hooks.length > 0 ? [] : undefined;
          values.push(await work(tx));
          const given = notices;
          notices = undefined;
          if (given !== undefined && given.length > 0) {
            for (const hook of this.#hooks) await hook(tx, given);
          }
          // transactional() flushes only its own entity manager; a work's fork flushes here.
          if (workEm !== em) await workEm.flush();
        } catch (err) {
          throw new WorkFailed(index, err);
        }
      }
      if (staged.size > 0) await this.#feed.stage(sql, [...staged.values()]);
      return values;
    });
    if (staged.size > 0) this.#feed.committed([...staged.values()]);
    return results;
  }
}

function compareTenants(a: string | null, b: string | null): number {
  if (a === b) return 0;
  if (a === null) return 1;
  if (b === null) return -1;
  return a < b ? -1 : 1;
}
