/**
 * Helpers for the write-path profile scripts (bench/write-path-profile.ts, bench/notify-lock.ts):
 * a pg_stat_activity sampler that runs in its own process (psql `\watch`, so a busy benchmark
 * event loop cannot thin out the samples), per-process CPU from /proc, and the load average.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { loadavg } from "node:os";
import type pg from "pg";

export const CLOCK_TICKS = 100;

/** application_name of the sampler's connection, so that its backend's CPU is booked to it. */
const SAMPLER_APP = "wp-activity-sampler";

/** One backend in one sample: [wait_event_type, wait_event, state, first 40 chars of the query]. */
type Backend = [waitType: string, wait: string, state: string, query: string];

export interface ActivitySummary {
  samples: number;
  seconds: number;
  /** Backend-samples per class, e.g. "active / CPU", "active / Lock:object", "idle / Client:ClientRead". */
  classes: Map<string, number>;
  /** Backend-samples of waits (Lock, LWLock, IO), per wait and statement prefix. */
  waitsByQuery: Map<string, number>;
  /** Samples in which at least one backend waited on a heavyweight Lock, or on an LWLock. */
  samplesWithLock: number;
  samplesWithLWLock: number;
}

/**
 * Samples the client backends of `database` every `intervalMs` from a psql child connected to the
 * admin database (so that its own transactions do not count in the target database's
 * pg_stat_database row).
 */
export function startActivitySampler(adminUrl: string, database: string, intervalMs = 10) {
  const query =
    "select extract(epoch from clock_timestamp())::text || '|' || coalesce((select json_agg(json_build_array(" +
    "coalesce(wait_event_type, ''), coalesce(wait_event, ''), coalesce(state, ''), left(regexp_replace(query, '\\s+', ' ', 'g'), 40)))" +
    ` from pg_stat_activity where datname = '${database}' and backend_type = 'client backend'` +
    " and pid <> pg_backend_pid()), '[]')::text";
  const child: ChildProcess = spawn("psql", [adminUrl, "-X", "-At", "-q"], {
    stdio: ["pipe", "pipe", "pipe"],
    env: { ...process.env, PGAPPNAME: SAMPLER_APP },
  });
  child.stdin?.end(`${query} \\watch ${intervalMs / 1000}\n`);
  const lines: string[] = [];
  let pending = "";
  child.stdout?.setEncoding("utf8");
  child.stdout?.on("data", (chunk: string) => {
    const parts = (pending + chunk).split("\n");
    pending = parts.pop() ?? "";
    for (const line of parts) if (line.includes("|")) lines.push(line);
  });
  let stderr = "";
  child.stderr?.on("data", (chunk) => {
    stderr += String(chunk);
  });
  const exited = new Promise<void>((done) => child.once("exit", () => done()));
  return {
    pid: child.pid ?? 0,
    /** Drops what was sampled so far (call when the measured window starts). */
    reset(): void {
      lines.length = 0;
    },
    async stop(): Promise<ActivitySummary> {
      child.kill("SIGINT");
      const timer = setTimeout(() => child.kill("SIGKILL"), 2000);
      await exited;
      clearTimeout(timer);
      if (lines.length === 0) throw new Error(`the activity sampler recorded nothing: ${stderr}`);
      const classes = new Map<string, number>();
      const waitsByQuery = new Map<string, number>();
      let samplesWithLock = 0;
      let samplesWithLWLock = 0;
      let first = Number.NaN;
      let last = Number.NaN;
      for (const line of lines) {
        const bar = line.indexOf("|");
        const at = Number(line.slice(0, bar));
        if (Number.isNaN(first)) first = at;
        last = at;
        const backends = JSON.parse(line.slice(bar + 1)) as Backend[];
        let lock = false;
        let lwlock = false;
        for (const [waitType, wait, state, text] of backends) {
          const cls = `${state} / ${waitType === "" ? "CPU" : `${waitType}:${wait}`}`;
          classes.set(cls, (classes.get(cls) ?? 0) + 1);
          if (waitType === "Lock" || waitType === "LWLock" || waitType === "IO") {
            const key = `${waitType}:${wait} · ${text.trim()}`;
            waitsByQuery.set(key, (waitsByQuery.get(key) ?? 0) + 1);
          }
          if (waitType === "Lock") lock = true;
          if (waitType === "LWLock") lwlock = true;
        }
        if (lock) samplesWithLock++;
        if (lwlock) samplesWithLWLock++;
      }
      return {
        samples: lines.length,
        seconds: last - first,
        classes,
        waitsByQuery,
        samplesWithLock,
        samplesWithLWLock,
      };
    },
  };
}

/** user + system CPU ticks of a process, or NaN once it is gone. */
export function processTicks(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return Number.NaN;
  }
}

/** Busy ticks of the whole machine (user, nice, system, irq, softirq, steal). */
export function machineTicks(): number {
  const [, user, nice, system, , , irq, softirq, steal] = (
    readFileSync("/proc/stat", "utf8").split("\n")[0] ?? ""
  )
    .trim()
    .split(/\s+/)
    .map(Number);
  return [user, nice, system, irq, softirq, steal].reduce<number>((sum, v) => sum + (v ?? 0), 0);
}

/** [ns on a CPU, ns runnable but waiting for a CPU] of one thread (/proc/<pid>/task/<tid>/schedstat). */
export function schedstat(pid: number, tid = pid): [number, number] {
  try {
    const [run, wait] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ").map(Number);
    return [run ?? Number.NaN, wait ?? Number.NaN];
  } catch {
    return [Number.NaN, Number.NaN];
  }
}

export interface CpuShare {
  /** Percent of one core over the interval (2 cores: 200 % is the whole machine). */
  bench: number;
  /** The agentstore server process (0 when there is none). */
  server: number;
  /** This database's backends and the cluster's own processes (WAL writer, checkpointer...). */
  postgres: number;
  /** The activity sampler: its psql and that psql's backend. */
  sampler: number;
  other: number;
  /**
   * Percent of wall time the thread was runnable but waiting for a CPU (schedstat run delay): the
   * server's and this process's main threads, and PostgreSQL's backends of the database summed.
   */
  waitingForCpu: { server: number; bench: number; postgres: number };
  /** Percent of wall time the server's main thread (the event loop) was on a CPU. */
  serverMainOnCpu: number;
}

/**
 * CPU of this process, of `serverPid` (0: none), of the PostgreSQL processes working for
 * `database` (its backends and the cluster's own processes), of the sampler, and of the rest.
 */
export async function cpuMeter(monitor: pg.Client, database: string, serverPid: number, samplerPid: number) {
  const pids = async () =>
    (
      await monitor.query<{ pid: number; sampler: boolean }>(
        `select pid, application_name = '${SAMPLER_APP}' as sampler from pg_stat_activity
         where (datname = $1 or datname is null or application_name = '${SAMPLER_APP}') and pid <> pg_backend_pid()`,
        [database],
      )
    ).rows;
  const first = new Map<number, number>();
  const latest = new Map<number, number>();
  const firstWait = new Map<number, number>();
  const latestWait = new Map<number, number>();
  const samplerBackends = new Set<number>();
  const sample = async (starting: boolean) => {
    for (const { pid, sampler } of await pids()) {
      const ticks = processTicks(pid);
      if (Number.isNaN(ticks)) continue;
      if (!first.has(pid)) first.set(pid, starting ? ticks : 0);
      latest.set(pid, ticks);
      const wait = schedstat(pid)[1];
      if (!Number.isNaN(wait)) {
        if (!firstWait.has(pid)) firstWait.set(pid, starting ? wait : 0);
        latestWait.set(pid, wait);
      }
      if (sampler) samplerBackends.add(pid);
    }
  };
  await sample(true);
  let sampling: Promise<void> | undefined;
  const timer = setInterval(() => {
    sampling ??= sample(false)
      .catch(() => {})
      .finally(() => {
        sampling = undefined;
      });
  }, 250);
  const started = performance.now();
  const self = process.cpuUsage();
  const server0 = serverPid > 0 ? processTicks(serverPid) : 0;
  const sampler0 = samplerPid > 0 ? processTicks(samplerPid) : 0;
  const machine0 = machineTicks();
  const [serverRun0, serverWait0] = serverPid > 0 ? schedstat(serverPid) : [0, 0];
  const benchWait0 = schedstat(process.pid)[1];
  return async (): Promise<CpuShare> => {
    const [serverRun1, serverWait1] = serverPid > 0 ? schedstat(serverPid) : [0, 0];
    const benchWait1 = schedstat(process.pid)[1];
    const seconds = (performance.now() - started) / 1000;
    const used = process.cpuUsage(self);
    const server1 = serverPid > 0 ? processTicks(serverPid) : 0;
    const sampler1 = samplerPid > 0 ? processTicks(samplerPid) : 0;
    const machine1 = machineTicks();
    clearInterval(timer);
    await sampling;
    await sample(false);
    let pgTicks = 0;
    let samplerBackendTicks = 0;
    for (const [pid, ticks] of latest) {
      const delta = ticks - (first.get(pid) ?? 0);
      if (samplerBackends.has(pid)) samplerBackendTicks += delta;
      else pgTicks += delta;
    }
    const share = (ticks: number) => (ticks / CLOCK_TICKS / seconds) * 100;
    const bench = ((used.user + used.system) / 1e6 / seconds) * 100;
    const server = share(server1 - server0);
    const postgres = share(pgTicks);
    const sampler = share(sampler1 - sampler0 + samplerBackendTicks);
    const other = Math.max(0, share(machine1 - machine0) - bench - server - postgres - sampler);
    let pgWait = 0;
    for (const [pid, wait] of latestWait)
      if (!samplerBackends.has(pid)) pgWait += wait - (firstWait.get(pid) ?? 0);
    const waited = (ns: number) => (ns / 1e9 / seconds) * 100;
    const waitingForCpu = {
      server: waited(serverWait1 - serverWait0),
      bench: waited(benchWait1 - benchWait0),
      postgres: waited(pgWait),
    };
    return {
      bench,
      server,
      postgres,
      sampler,
      other,
      waitingForCpu,
      serverMainOnCpu: waited(serverRun1 - serverRun0),
    };
  };
}

export const load = () =>
  loadavg()
    .map((v) => v.toFixed(2))
    .join(" ");

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[mid] ?? Number.NaN)
    : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

export const pct = (share: CpuShare) =>
  `${share.bench.toFixed(0)}% / ${share.server.toFixed(0)}% / ${share.postgres.toFixed(0)}% / ${share.sampler.toFixed(0)}% / ${share.other.toFixed(0)}%`;
