/**
 * What the benchmarks that write a results file share besides their CPU columns (cpu.ts): the
 * command line that reproduces a run, machine facts from shell commands, the PostgreSQL version and
 * durability settings, a call error as a table cell, and the server's warnings during a run.
 */
import { execFileSync } from "node:child_process";
import { ConnectError } from "@connectrpc/connect";
import pg from "pg";
import type { BenchBackend, BenchServer } from "./server.ts";
import { ROOT } from "./server.ts";

/** A command's output, or "?" when it fails (facts for the results header, never required). */
export const sh = (cmd: string, argv: string[]): string => {
  try {
    return execFileSync(cmd, argv, {
      cwd: ROOT,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    }).trim();
  } catch {
    return "?";
  }
};

/** How this run was started: `npm run bench:<name> -- ...` or `node bench/<name>.ts ...`. */
export function commandLine(name: string): string {
  const argv = process.argv.slice(2).map((a) => (/^[\w./:=,@-]+$/.test(a) ? a : `'${a}'`));
  if (process.env.npm_lifecycle_event === `bench:${name}`) {
    return `npm run bench:${name}${argv.length > 0 ? ` -- ${argv.join(" ")}` : ""}`;
  }
  return [`node bench/${name}.ts`, ...argv].join(" ");
}

export async function postgresVersion(adminUrl: string): Promise<string> {
  const client = new pg.Client({ connectionString: adminUrl });
  try {
    await client.connect();
    const { rows } = await client.query<{ v: string; sc: string; fsync: string }>(
      "select split_part(version(), ' on ', 1) as v, current_setting('synchronous_commit') as sc, current_setting('fsync') as fsync",
    );
    const r = rows[0];
    return r === undefined ? "?" : `${r.v}, synchronous_commit=${r.sc}, fsync=${r.fsync}`;
  } catch {
    return "version unknown";
  } finally {
    await client.end().catch(() => {});
  }
}

/** A call's error as one Markdown table cell. */
export const describe = (err: unknown) => {
  const e = err instanceof ConnectError ? `${err.message} (code ${err.code})` : String(err);
  return e.replaceAll("|", "\\|").replaceAll("\n", " ");
};

/** Log lines of the server a results file quotes at most. */
export const MAX_LOG_LINES = 10;

/** The server's log levels that a benchmark reports (src/core/logger.ts writes them as labels). */
const WARNING_LEVELS = new Set(["warn", "error", "fatal"]);

/**
 * What the server says while the benchmark runs (bench/server.ts reads its stdout only up to
 * "agentstore serving"): its warning and error log lines, and whether it exits before it is stopped.
 */
export function watchServer(server: BenchServer) {
  const state = { warnings: [] as string[], exit: undefined as string | undefined, stopping: false };
  let partial = "";
  server.child.stdout?.on("data", (chunk: Buffer) => {
    const lines = (partial + chunk.toString("utf8")).split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) {
      const level = /"level":"(\w+)"/.exec(line)?.[1];
      if (level !== undefined && WARNING_LEVELS.has(level)) state.warnings.push(line);
    }
  });
  server.child.once("exit", (code, signal) => {
    if (!state.stopping) state.exit = `code ${code}, signal ${signal}`;
  });
  return state;
}

/** Reads a positive integer option; a bad one prints the usage and exits 2. */
export const positiveOption =
  (usage: string) =>
  (name: string, value: string | undefined): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1) {
      console.error(`--${name} must be a positive integer, not ${value}\n\n${usage}`);
      process.exit(2);
    }
    return n;
  };

/** The databases of `--db pglite|postgres|both`; anything else prints the usage and exits 2. */
export function databasesOption(value: string | undefined, usage: string): BenchBackend[] {
  if (value === "both") return ["pglite", "postgres"];
  if (value === "pglite" || value === "postgres") return [value];
  console.error(`--db must be pglite, postgres or both, not ${value}\n\n${usage}`);
  process.exit(2);
}
