/**
 * Where the CPU went during a benchmark phase: the server process, the benchmark itself, and the
 * rest of the machine (PostgreSQL and anything else), from /proc. Shared by the benchmarks that
 * report CPU columns next to their rates.
 */
import { readFileSync } from "node:fs";
import type { BenchServer } from "./server.ts";

const int = (n: number) => Math.round(n).toLocaleString("en-US");

/** CPU seconds (user + system) a process has used so far, from /proc; NaN where there is none. */
export function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime and stime are fields 14 and 15 of the line; after "pid (comm) " they are 12 and 13.
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return Number.NaN;
  }
}

/** CPU seconds the whole machine has been busy (every core, not idle or waiting for I/O), from /proc/stat. */
export function machineBusySeconds(): number {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
    const ticks = line.trim().split(/\s+/).slice(1, 9).map(Number);
    const total = ticks.reduce((a, b) => a + b, 0);
    return (total - (ticks[3] ?? 0) - (ticks[4] ?? 0)) / 100;
  } catch {
    return Number.NaN;
  }
}

/** Cores busy over a window (1 = one core all the time): the server, this process, the rest. */
export interface CpuShare {
  serverCpu: number;
  benchCpu: number;
  /** Everything else on the machine: PostgreSQL's processes, and any other work running meanwhile. */
  restCpu: number;
}

/** Starts a CPU window; the function it returns ends it. */
export function cpuWindow(server: BenchServer): () => CpuShare & { seconds: number } {
  const serverBefore = cpuSeconds(server.child.pid);
  const benchBefore = process.cpuUsage();
  const machineBefore = machineBusySeconds();
  const started = performance.now();
  return () => {
    const seconds = (performance.now() - started) / 1000;
    const bench = process.cpuUsage(benchBefore);
    const serverCpu = (cpuSeconds(server.child.pid) - serverBefore) / seconds;
    const benchCpu = (bench.user + bench.system) / 1e6 / seconds;
    const machine = (machineBusySeconds() - machineBefore) / seconds;
    return { seconds, serverCpu, benchCpu, restCpu: Math.max(0, machine - serverCpu - benchCpu) };
  };
}

export const cpuCells = (c: CpuShare) =>
  `${int(c.serverCpu * 100)}% | ${int(c.benchCpu * 100)}% | ${int(c.restCpu * 100)}%`;
