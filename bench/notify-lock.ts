/**
 * Does NOTIFY serialize commits? Raw `pg`, no agentstore: N clients each committing one ~210-byte
 * row per transaction, in five shapes, with and without a notification. Each cell runs twice: clean
 * (commits/s, CPU) and with pg_stat_activity sampled every 10 ms (waits on the notify lock show as
 * Lock:object; the sampler costs ~10-17 % of a core, so its cells' rates are reported apart).
 *
 *   node bench/notify-lock.ts                       # 8 and 1 clients, 5 s per cell, 3 repetitions
 *   node bench/notify-lock.ts --clients 8 --seconds 2 --reps 1
 *
 * PostgreSQL's PreCommit_Notify (async.c) takes LockSharedObject(DatabaseRelationId, InvalidOid, 0,
 * AccessExclusiveLock), a cluster-wide heavyweight lock held until the transaction ends, i.e.
 * through the commit record's WAL flush: notifying commits cannot share a flush.
 */
import { randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import pg from "pg";
import {
  type ActivitySummary,
  type CpuShare,
  cpuMeter,
  load,
  median,
  pct,
  startActivitySampler,
} from "./pg-activity.ts";

const { values: args } = parseArgs({
  options: {
    seconds: { type: "string", default: "5" },
    reps: { type: "string", default: "3" },
    clients: { type: "string", default: "8,1" },
    "admin-url": { type: "string", default: "postgres://postgres@127.0.0.1:5432/postgres" },
    json: { type: "string" },
    "max-other": { type: "string", default: "25" },
    "max-attempts": { type: "string", default: "4" },
    help: { type: "boolean", default: false },
  },
});
if (args.help) {
  console.log(
    `node bench/notify-lock.ts [--seconds 5] [--reps 3] [--clients 8,1] [--admin-url URL] [--json FILE] [--max-other 25] [--max-attempts 4]`,
  );
  process.exit(0);
}
const SECONDS = Number(args.seconds);
const REPS = Number(args.reps);
const CLIENTS = (args.clients ?? "8").split(",").map(Number);
const ADMIN_URL = args["admin-url"] ?? "";
/** A cell during which other processes used more than this percent of a core is measured again. */
const MAX_OTHER = Number(args["max-other"]);
const MAX_ATTEMPTS = Number(args["max-attempts"]);
const DATABASE = "notify_lock_bench";
const dbUrl = (() => {
  const u = new URL(ADMIN_URL);
  u.pathname = `/${DATABASE}`;
  return u.toString();
})();

const FILLER =
  "Ran the test suite: 214 passed, 3 skipped in 41.2 s. Next I will update the migration, " +
  "re-run the integration tests against PostgreSQL and summarise the diff for review. ";
const base = { role: "assistant", model: "gpt-5", index: 0, text: "" };
const PAYLOAD = JSON.stringify({
  ...base,
  text: FILLER.repeat(2).slice(0, 210 - JSON.stringify(base).length),
});

const INSERT =
  "insert into t (tenant_id, run_id, seq, type, payload) values ('default', $1, $2, 'assistant_message', $3)";
const quote = (s: string) => `'${s.replaceAll("'", "''")}'`;

/** One transaction of each shape: the row (run, seq) on one connection. */
const VARIANTS = {
  autocommit: {
    label: "`insert` (autocommit, 1 round trip, no notify)",
    run: (c: pg.Client, run: string, seq: number) => c.query(INSERT, [run, seq, PAYLOAD]),
  },
  tx: {
    label: "`begin; insert; commit` (3 round trips)",
    run: async (c: pg.Client, run: string, seq: number) => {
      await c.query("begin");
      await c.query(INSERT, [run, seq, PAYLOAD]);
      await c.query("commit");
    },
  },
  txNotify: {
    label: "`begin; insert; select pg_notify('c', 'x'); commit` (4 round trips)",
    run: async (c: pg.Client, run: string, seq: number) => {
      await c.query("begin");
      await c.query(INSERT, [run, seq, PAYLOAD]);
      await c.query("select pg_notify('c', 'x')");
      await c.query("commit");
    },
  },
  simpleNotify: {
    label: "`insert …; notify c, 'x'` (one simple-protocol query, implicit transaction, 1 round trip)",
    run: (c: pg.Client, run: string, seq: number) =>
      c.query(
        `insert into t (tenant_id, run_id, seq, type, payload) values ('default', '${run}', ${seq}, 'assistant_message', ${quote(PAYLOAD)}); notify c, 'x'`,
      ),
  },
  cteNotify: {
    label:
      "`with i as (insert … returning seq) select pg_notify('c', …) from i` (autocommit, 1 round trip; agentstore's append shape)",
    run: (c: pg.Client, run: string, seq: number) =>
      c.query(
        "with i as (insert into t (tenant_id, run_id, seq, type, payload) values ('default', $1, $2, 'assistant_message', $3) returning seq) select pg_notify('c', i.seq::text) from i",
        [run, seq, PAYLOAD],
      ),
  },
} as const;
type Variant = keyof typeof VARIANTS;
const NAMES = Object.keys(VARIANTS) as Variant[];

interface Cell {
  variant: Variant;
  clients: number;
  rep: number;
  /** pg_stat_activity was sampled during this cell. */
  sampled: boolean;
  /** 1 unless earlier attempts were disturbed by other work. */
  attempt?: number;
  commitsPerSecond: number;
  notificationsPerSecond: number;
  cpu: CpuShare;
  load: string;
  activity: {
    samples: number;
    seconds: number;
    classes: Record<string, number>;
    waits: Record<string, number>;
  };
}

async function connect(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  c.on("error", (err) => console.error("pg:", err.message));
  await c.connect();
  return c;
}

async function main() {
  const admin = await connect(ADMIN_URL);
  await admin.query(`drop database if exists ${DATABASE} with (force)`);
  await admin.query(`create database ${DATABASE}`);
  const setup = await connect(dbUrl);
  await setup.query(`create table t (tenant_id text not null, run_id uuid not null, seq bigint not null,
    type text not null, payload jsonb not null, created_at timestamptz(3) not null default current_timestamp(3),
    primary key (tenant_id, run_id, seq))`);
  const listener = await connect(dbUrl);
  let notifications = 0;
  listener.on("notification", () => {
    notifications++;
  });
  await listener.query("listen c");
  const maxClients = Math.max(...CLIENTS);
  const conns = await Promise.all(Array.from({ length: maxClients }, () => connect(dbUrl)));
  const version = (await admin.query<{ v: string }>("select version() as v")).rows[0]?.v;
  const settings = (
    await admin.query<{ s: string }>(
      "select string_agg(name || '=' || setting, ', ' order by name) as s from pg_settings where name in ('fsync', 'synchronous_commit', 'wal_sync_method', 'commit_delay', 'shared_buffers')",
    )
  ).rows[0]?.s;
  console.error(`${version}\n${settings}\n${cpus().length} cores; load ${load()}`);

  const cells: Cell[] = [];
  /** Cells measured while other work used more than --max-other of a core, and measured again. */
  const retried: Cell[] = [];
  for (let rep = 1; rep <= REPS; rep++) {
    for (const clients of CLIENTS) {
      // Rotate the order per repetition, so that no shape always runs first or last.
      const order = NAMES.map((_, i) => NAMES[(i + rep - 1) % NAMES.length] as Variant);
      for (const variant of order) {
        // Each shape twice: once clean (the commits/s and CPU reported), once with pg_stat_activity
        // sampled every 10 ms (the sampler costs CPU on a small machine, so its rate is kept apart).
        for (let attempt = 1, sampled = false; ; attempt++) {
          await setup.query("truncate t");
          await setup.query("checkpoint");
          const sampler = sampled ? startActivitySampler(ADMIN_URL, DATABASE, 10) : undefined;
          if (sampler !== undefined) {
            await sleep(300);
            sampler.reset();
          }
          const meter = await cpuMeter(admin, DATABASE, 0, sampler?.pid ?? 0);
          const loadAt = load();
          const notified0 = notifications;
          const started = performance.now();
          const deadline = started + SECONDS * 1000;
          const counts = await Promise.all(
            conns.slice(0, clients).map(async (c) => {
              const run = randomUUID();
              let n = 0;
              while (performance.now() < deadline) await VARIANTS[variant].run(c, run, n++);
              return n;
            }),
          );
          const seconds = (performance.now() - started) / 1000;
          const cpu = await meter();
          const activity: ActivitySummary | undefined = await sampler?.stop();
          await sleep(100); // the last notifications
          const commits = counts.reduce((a, b) => a + b, 0);
          const cell: Cell = {
            variant,
            clients,
            rep,
            sampled,
            commitsPerSecond: commits / seconds,
            notificationsPerSecond: (notifications - notified0) / seconds,
            cpu,
            load: loadAt,
            activity: {
              samples: activity?.samples ?? 0,
              seconds: activity?.seconds ?? 0,
              classes: Object.fromEntries(activity?.classes ?? []),
              waits: Object.fromEntries(activity?.waitsByQuery ?? []),
            },
          };
          const disturbed = cpu.other > MAX_OTHER && attempt < MAX_ATTEMPTS;
          console.error(
            `rep ${rep} ${clients}× ${variant}${sampled ? " (sampled)" : ""}: ${cell.commitsPerSecond.toFixed(0)} commits/s, notified ${cell.notificationsPerSecond.toFixed(0)}/s, cpu ${pct(cpu)}, load ${loadAt}, ${cell.activity.samples} samples${disturbed ? " — other work above the limit, repeating" : ""}`,
          );
          cell.attempt = attempt;
          if (disturbed) {
            retried.push(cell);
            await sleep(5000);
            continue;
          }
          cells.push(cell);
          if (sampled) break;
          sampled = true;
          attempt = 0;
        }
      }
    }
  }

  // Medians per shape and client count, and the wait classes summed over repetitions.
  const lines: string[] = [];
  lines.push(
    "| clients | transaction | commits/s median (min–max) | CPU bench / — / postgres / sampler / other | commits/s while sampled | backends per sample: on CPU / Lock:object / LWLock / IO / idle (Client) |",
  );
  lines.push("| --- | --- | --- | --- | --- | --- |");
  for (const clients of CLIENTS) {
    for (const variant of NAMES) {
      const mine = cells.filter((c) => c.variant === variant && c.clients === clients && !c.sampled);
      const watched = cells.filter((c) => c.variant === variant && c.clients === clients && c.sampled);
      const rates = mine.map((c) => c.commitsPerSecond);
      const samples = watched.reduce((a, c) => a + c.activity.samples, 0);
      const sum = (pred: (cls: string) => boolean) =>
        watched.reduce(
          (a, c) =>
            a + Object.entries(c.activity.classes).reduce((b, [cls, n]) => b + (pred(cls) ? n : 0), 0),
          0,
        ) / samples;
      const cpuMed = {
        bench: median(mine.map((c) => c.cpu.bench)),
        server: 0,
        waitingForCpu: { server: 0, bench: 0, postgres: 0 },
        serverMainOnCpu: 0,
        postgres: median(mine.map((c) => c.cpu.postgres)),
        sampler: median(mine.map((c) => c.cpu.sampler)),
        other: median(mine.map((c) => c.cpu.other)),
      };
      lines.push(
        `| ${clients} | ${VARIANTS[variant].label} | ${median(rates).toFixed(0)} (${Math.min(...rates).toFixed(0)}–${Math.max(...rates).toFixed(0)}) | ${pct(cpuMed)} | ${median(watched.map((c) => c.commitsPerSecond)).toFixed(0)} | ${[
          sum((c) => c === "active / CPU"),
          sum((c) => c.includes("Lock:object")),
          sum((c) => c.includes("/ LWLock:")),
          sum((c) => c.includes("/ IO:")),
          sum((c) => c.includes("Client:")),
        ]
          .map((v) => v.toFixed(2))
          .join(" / ")} |`,
      );
    }
  }
  lines.push("", "Waits (backend-samples summed over repetitions, by wait and statement):", "");
  for (const clients of CLIENTS) {
    for (const variant of NAMES) {
      const waits = new Map<string, number>();
      let samples = 0;
      for (const c of cells.filter((x) => x.variant === variant && x.clients === clients && x.sampled)) {
        samples += c.activity.samples;
        for (const [k, n] of Object.entries(c.activity.waits)) waits.set(k, (waits.get(k) ?? 0) + n);
      }
      const top = [...waits.entries()].sort((a, b) => b[1] - a[1]).slice(0, 5);
      lines.push(
        `- ${clients}× ${variant} (${samples} samples): ${top.map(([k, n]) => `${k} ${n}`).join("; ") || "none"}`,
      );
    }
  }
  lines.push(
    "",
    `Cells repeated because other work used more than ${MAX_OTHER}% of a core: ${retried.length}; kept after ${MAX_ATTEMPTS} attempts regardless: ${cells.filter((c) => c.cpu.other > MAX_OTHER).length}.`,
  );
  console.log(lines.join("\n"));
  if (args.json) writeFileSync(args.json, JSON.stringify({ version, settings, cells, retried }, null, 2));

  for (const c of [...conns, listener, setup]) await c.end();
  await admin.query(`drop database if exists ${DATABASE} with (force)`);
  await admin.end();
}

await main();
