import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import pg from "pg";
import { type AgentStoreClient, createClient, RunStatus } from "../src/client/index.ts";
import { spawnBenchServer } from "./server.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const { values: args } = parseArgs({
  options: {
    backend: { type: "string", default: "both" },
    appends: { type: "string", default: "2000" },
    concurrency: { type: "string", default: "16" },
    batch: { type: "string", default: "10" },
    followers: { type: "string", default: "100" },
    "admin-url": {
      type: "string",
      default: process.env.TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres",
    },
  },
});
const APPENDS = Number(args.appends);
const CONCURRENCY = Number(args.concurrency);
const BATCH = Number(args.batch);
const FOLLOWERS = Number(args.followers);

const startServer = spawnBenchServer;

const percentile = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
const summary = (samples: number[]) => {
  const s = [...samples].sort((a, b) => a - b);
  return {
    p50: percentile(s, 50),
    p95: percentile(s, 95),
    p99: percentile(s, 99),
    max: s.at(-1) ?? Number.NaN,
  };
};
const ms = (v: number) => v.toFixed(2);

async function newRun(client: AgentStoreClient): Promise<string> {
  return (await client.runs.createRun({ run: {} })).run?.runId ?? "";
}

/** Sequential one-event appends to one run: the latency a single agent sees per append. */
async function appendLatency(client: AgentStoreClient) {
  const runId = await newRun(client);
  for (let i = 0; i < 50; i++) {
    await client.runs.appendRunEvents({ runId, events: [{ type: "warmup", payload: { i } }] });
  }
  const samples: number[] = [];
  const started = performance.now();
  for (let i = 0; i < APPENDS; i++) {
    const t = performance.now();
    await client.runs.appendRunEvents({
      runId,
      events: [{ type: "assistant_message", payload: { i, text: "hello" } }],
    });
    samples.push(performance.now() - t);
  }
  return { ...summary(samples), perSecond: APPENDS / ((performance.now() - started) / 1000) };
}

/** CONCURRENCY appenders, each to its own run, BATCH events per call. */
async function appendThroughput(client: AgentStoreClient) {
  const runs = await Promise.all(Array.from({ length: CONCURRENCY }, () => newRun(client)));
  const callsEach = Math.max(1, Math.floor(APPENDS / CONCURRENCY / 2));
  const started = performance.now();
  await Promise.all(
    runs.map(async (runId) => {
      for (let c = 0; c < callsEach; c++) {
        await client.runs.appendRunEvents({
          runId,
          events: Array.from({ length: BATCH }, (_, i) => ({
            type: "command_output",
            payload: { c, i, line: "x".repeat(80) },
          })),
        });
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  return {
    events: runs.length * callsEach * BATCH,
    eventsPerSecond: (runs.length * callsEach * BATCH) / seconds,
  };
}

/**
 * Stream latency: from the moment an append call starts to the moment a follower (one, or the
 * slowest of many) holds the event. Appends are sequential, one event each.
 */
async function streamLatency(client: AgentStoreClient, followers: number, events: number) {
  const runId = await newRun(client);
  const sentAt = new Map<number, number>();
  const worst = new Map<number, number>();
  let ready = 0;
  const follows = Array.from({ length: followers }, async () => {
    const stream = client.runs.streamRunEvents({ runId });
    ready++;
    for await (const { event } of stream) {
      if (!event || event.type === "terminal_status") continue;
      const seq = Number(event.seq);
      const latency = performance.now() - (sentAt.get(seq) ?? Number.NaN);
      worst.set(seq, Math.max(worst.get(seq) ?? 0, latency));
    }
  });
  while (ready < followers) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 300));
  const memoryBefore = process.memoryUsage().rss;
  for (let seq = 1; seq <= events; seq++) {
    sentAt.set(seq, performance.now());
    await client.runs.appendRunEvents({ runId, events: [{ type: "assistant_message", payload: { seq } }] });
    // Let the event arrive before the next append, so each sample measures one delivery.
    while (worst.get(seq) === undefined) await new Promise((r) => setImmediate(r));
  }
  await client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
  await Promise.all(follows);
  return {
    ...summary([...worst.values()]),
    clientRssGrowthMb: (process.memoryUsage().rss - memoryBefore) / 2 ** 20,
  };
}

async function bench(backend: "pglite" | "postgres") {
  const cleanup: Array<() => Promise<void> | void> = [];
  let env: Record<string, string>;
  if (backend === "postgres") {
    const admin = new pg.Client({ connectionString: args["admin-url"] });
    await admin.connect();
    await admin.query("drop database if exists agentstore_bench with (force)");
    await admin.query("create database agentstore_bench");
    await admin.end();
    const url = new URL(args["admin-url"] ?? "");
    url.pathname = "/agentstore_bench";
    env = { DATABASE_URL: url.toString() };
  } else {
    const dir = mkdtempSync(join(tmpdir(), "agentstore-bench-"));
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    env = { AGENTSTORE_DATA_DIR: join(dir, "data") };
  }
  const server = await startServer(env);
  const client = createClient({ baseUrl: server.url });
  try {
    const latency = await appendLatency(client);
    const throughput = await appendThroughput(client);
    const one = await streamLatency(client, 1, Math.min(APPENDS, 1000));
    const many = await streamLatency(client, FOLLOWERS, 200);
    const serverRss = Number(
      (await import("node:fs"))
        .readFileSync(`/proc/${server.child.pid}/status`, "utf8")
        .match(/VmRSS:\s+(\d+)/)?.[1] ?? 0,
    );
    const lines = [
      `### ${backend} — ${new Date().toISOString().slice(0, 10)}, ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB`,
      "",
      "| measurement | p50 ms | p95 ms | p99 ms | max ms | rate |",
      "| --- | --- | --- | --- | --- | --- |",
      `| AppendRunEvents, 1 event, sequential (${APPENDS} calls) | ${ms(latency.p50)} | ${ms(latency.p95)} | ${ms(latency.p99)} | ${ms(latency.max)} | ${latency.perSecond.toFixed(0)} calls/s |`,
      `| AppendRunEvents, ${CONCURRENCY} appenders × batches of ${BATCH} (${throughput.events} events) | | | | | ${throughput.eventsPerSecond.toFixed(0)} events/s |`,
      `| append start → event at 1 follower (${Math.min(APPENDS, 1000)} events) | ${ms(one.p50)} | ${ms(one.p95)} | ${ms(one.p99)} | ${ms(one.max)} | |`,
      `| append start → event at the last of ${FOLLOWERS} followers (200 events) | ${ms(many.p50)} | ${ms(many.p95)} | ${ms(many.p99)} | ${ms(many.max)} | |`,
      "",
      `Server RSS at the end: ${(serverRss / 1024).toFixed(0)} MiB.`,
      "",
    ];
    const text = lines.join("\n");
    console.log(text);
    mkdirSync(join(ROOT, "bench/results"), { recursive: true });
    writeFileSync(
      join(ROOT, `bench/results/${backend}.md`),
      `${text}\nCommand: npm run bench -- --backend ${backend}\n`,
    );
  } finally {
    client.close();
    await server.stop();
    for (const step of cleanup) await step();
  }
}

const wanted =
  args.backend === "both" ? (["pglite", "postgres"] as const) : [args.backend as "pglite" | "postgres"];
for (const backend of wanted) {
  if (backend === "postgres") {
    const probe = new pg.Client({ connectionString: args["admin-url"], connectionTimeoutMillis: 3000 });
    const reachable = await probe.connect().then(
      () => true,
      () => false,
    );
    await probe.end().catch(() => {});
    if (!reachable) {
      console.log(`PostgreSQL at ${args["admin-url"]} is unreachable: skipped`);
      continue;
    }
  }
  await bench(backend);
}
