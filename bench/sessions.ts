/**
 * Sessions benchmark: what keeping sessions in step with their runs costs the run path, and how
 * fast sessions list and watch. The server runs as its own process, clients in this one, over
 * gRPC on loopback.
 *
 *   npm run bench:sessions                                   # both databases
 *   npm run bench:sessions -- --backend postgres --sessions 5000 --samples 300
 *
 * - A run's life (CreateRun, a TURN command, FinishRun), one after another: without a session,
 *   and with one (each run in its own session, so every step creates or changes a session).
 * - ListSessions, first page of 50 for a reader, over `--sessions` sessions of the tenant.
 * - FinishRun start → a WatchSessions watcher holds the session's change.
 *
 * Prints a Markdown table and writes it to bench/results/sessions.md.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type AgentStoreClient, CommandType, createClient, RunStatus } from "../src/client/index.ts";
import { type BenchBackend, latency, postgresReachable, ROOT, startBenchServer } from "./server.ts";

const { values: args } = parseArgs({
  options: {
    backend: { type: "string", default: "both" },
    sessions: { type: "string", default: "2000" },
    samples: { type: "string", default: "200" },
  },
});
const SESSIONS = Number(args.sessions);
const SAMPLES = Number(args.samples);
const WARMUP = 20;

async function runLife(client: AgentStoreClient, sessionId: string): Promise<number> {
  const started = performance.now();
  const { run } = await client.runs.createRun({ run: { sessionId } });
  const runId = run?.runId ?? "";
  await client.runs.createCommand({ runId, type: CommandType.TURN, payload: { prompt: "go" } });
  await client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
  return performance.now() - started;
}

async function bench(backend: BenchBackend): Promise<string> {
  const server = await startBenchServer(backend, "sessions");
  const client = createClient({ baseUrl: server.url });
  try {
    const plain: number[] = [];
    const withSession: number[] = [];
    for (let i = 0; i < SAMPLES + WARMUP; i++) {
      const a = await runLife(client, "");
      const b = await runLife(client, `life-${i}`);
      if (i >= WARMUP) {
        plain.push(a);
        withSession.push(b);
      }
    }
    const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)] ?? 0;

    for (let done = SAMPLES + WARMUP; done < SESSIONS; done += 50) {
      await Promise.all(
        Array.from({ length: Math.min(50, SESSIONS - done) }, async (_, k) => {
          const { run } = await client.runs.createRun({ run: { sessionId: `bulk-${done + k}` } });
          if ((done + k) % 4 !== 0) {
            await client.runs.finishRun({ runId: run?.runId ?? "", status: RunStatus.COMPLETED });
          }
        }),
      );
    }
    const listing: number[] = [];
    for (let i = 0; i < SAMPLES + WARMUP; i++) {
      const started = performance.now();
      await client.sessions.listSessions({ readerId: "bench", pageSize: 50 });
      if (i >= WARMUP) listing.push(performance.now() - started);
    }

    const watched: number[] = [];
    const controller = new AbortController();
    const arrivals = new Map<string, () => void>();
    const watching = (async () => {
      for await (const { session } of client.sessions.watchSessions(
        { fromNow: true },
        { signal: controller.signal },
      )) {
        if (session?.executionState === 3) arrivals.get(session.sessionId)?.();
      }
    })().catch(() => {});
    for (let i = 0; i < SAMPLES + WARMUP; i++) {
      const sessionId = `watch-${i}`;
      const { run } = await client.runs.createRun({ run: { sessionId } });
      const arrived = new Promise<void>((resolve) => arrivals.set(sessionId, resolve));
      const started = performance.now();
      await client.runs.finishRun({ runId: run?.runId ?? "", status: RunStatus.COMPLETED });
      await arrived;
      if (i >= WARMUP) watched.push(performance.now() - started);
    }
    controller.abort();
    await watching;

    const lines = [
      `### ${backend} — ${new Date().toISOString().slice(0, 10)}, ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB`,
      "",
      "| measurement | result |",
      "| --- | --- |",
      `| run life (CreateRun, TURN, FinishRun), no session (${SAMPLES} samples) | ${latency(plain)} |`,
      `| the same, each run in its own session | ${latency(withSession)} (median ${(median(withSession) / median(plain)).toFixed(2)}×) |`,
      `| ListSessions, first page of 50 with a reader, ${SESSIONS} sessions in the tenant | ${latency(listing)} |`,
      `| FinishRun start → WatchSessions watcher holds the change | ${latency(watched)} |`,
      "",
    ];
    const text = lines.join("\n");
    console.log(text);
    return text;
  } finally {
    client.close();
    await server.stop();
  }
}

const wanted: BenchBackend[] =
  args.backend === "both" ? ["pglite", "postgres"] : [args.backend as BenchBackend];
const sections: string[] = [];
for (const backend of wanted) {
  if (backend === "postgres" && !(await postgresReachable())) {
    console.log("PostgreSQL is unreachable: skipped");
    continue;
  }
  sections.push(await bench(backend));
}
mkdirSync(join(ROOT, "bench/results"), { recursive: true });
writeFileSync(
  join(ROOT, "bench/results/sessions.md"),
  `${sections.join("\n")}\nCommand: npm run bench:sessions -- ${process.argv.slice(2).join(" ")}\n`,
);
