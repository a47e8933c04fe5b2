import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import pg from "pg";
import { type AgentStoreClient, createClient } from "../src/client/index.ts";
import { spawnBenchServer } from "./server.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const { values: args } = parseArgs({
  options: {
    backend: { type: "string", default: "both" },
    runs: { type: "string", default: "2000" },
    runners: { type: "string", default: "8" },
    samples: { type: "string", default: "200" },
    "admin-url": {
      type: "string",
      default: process.env.TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres",
    },
  },
});
const RUNS = Number(args.runs);
const RUNNERS = Number(args.runners);
const SAMPLES = Number(args.samples);

const startServer = spawnBenchServer;

const percentile = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;

async function drain(
  clients: AgentStoreClient[],
  assistantId: string,
): Promise<{ claims: number; seconds: number }> {
  const runnerIds = await Promise.all(
    clients.map(async (c) => (await c.runners.registerRunner({})).runner?.runnerId ?? ""),
  );
  let claims = 0;
  const started = performance.now();
  await Promise.all(
    clients.map(async (client, i) => {
      for (;;) {
        const { run } = await client.runs.claimNextRun({
          runnerId: runnerIds[i] ?? "",
          filter: { assistantId },
          lease: durationFromMs(600_000),
        });
        if (run === undefined) return;
        claims++;
      }
    }),
  );
  return { claims, seconds: (performance.now() - started) / 1000 };
}

async function createRuns(client: AgentStoreClient, assistantId: string, count: number) {
  for (let done = 0; done < count; done += 50) {
    await Promise.all(
      Array.from({ length: Math.min(50, count - done) }, () =>
        client.runs.createRun({ run: { assistantId } }),
      ),
    );
  }
}

async function bench(backend: "pglite" | "postgres") {
  const cleanup: Array<() => Promise<void> | void> = [];
  let env: Record<string, string>;
  if (backend === "postgres") {
    const admin = new pg.Client({ connectionString: args["admin-url"] });
    await admin.connect();
    await admin.query("drop database if exists agentstore_bench_claims with (force)");
    await admin.query("create database agentstore_bench_claims");
    await admin.end();
    const url = new URL(args["admin-url"] ?? "");
    url.pathname = "/agentstore_bench_claims";
    env = { DATABASE_URL: url.toString() };
  } else {
    const dir = mkdtempSync(join(tmpdir(), "agentstore-bench-"));
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    env = { AGENTSTORE_DATA_DIR: join(dir, "data") };
  }
  const server = await startServer(env);
  const clients = Array.from({ length: RUNNERS }, () => createClient({ baseUrl: server.url }));
  const creator = createClient({ baseUrl: server.url });
  try {
    await createRuns(creator, "many", RUNS);
    const many = await drain(clients, "many");
    await createRuns(creator, "one", Math.min(RUNS, 1000));
    const one = await drain(clients.slice(0, 1), "one");

    // CreateRun -> the waiting runner's claim.
    const waiter = clients[0] as AgentStoreClient;
    const { runner } = await waiter.runners.registerRunner({});
    const fromStart: number[] = [];
    const fromAck: number[] = [];
    for (let i = 0; i < SAMPLES + 20; i++) {
      const assistantId = `wait-${i}`;
      const claimed = waiter.runs.claimNextRun({
        runnerId: runner?.runnerId ?? "",
        filter: { assistantId },
        lease: durationFromMs(600_000),
        wait: durationFromMs(30_000),
      });
      // Let the claim reach the server and start waiting before the run exists.
      await new Promise((r) => setTimeout(r, 5));
      const started = performance.now();
      await creator.runs.createRun({ run: { assistantId } });
      const acked = performance.now();
      await claimed;
      const held = performance.now();
      if (i >= 20) {
        fromStart.push(held - started);
        fromAck.push(held - acked);
      }
    }
    fromStart.sort((a, b) => a - b);
    fromAck.sort((a, b) => a - b);
    const lines = [
      `### ${backend} — ${new Date().toISOString().slice(0, 10)}, ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB`,
      "",
      "| measurement | result |",
      "| --- | --- |",
      `| ClaimNextRun throughput, ${RUNNERS} runners draining ${many.claims} runs | ${(many.claims / many.seconds).toFixed(0)} claims/s |`,
      `| ClaimNextRun throughput, 1 runner draining ${one.claims} runs | ${(one.claims / one.seconds).toFixed(0)} claims/s |`,
      `| CreateRun start → waiting runner holds the run (${SAMPLES} samples) | p50 ${percentile(fromStart, 50).toFixed(2)} ms, p99 ${percentile(fromStart, 99).toFixed(2)} ms |`,
      `| CreateRun response → waiting runner holds the run | p50 ${percentile(fromAck, 50).toFixed(2)} ms, p99 ${percentile(fromAck, 99).toFixed(2)} ms |`,
      "",
    ];
    const text = lines.join("\n");
    console.log(text);
    return text;
  } finally {
    for (const c of [...clients, creator]) c.close();
    await new Promise<void>((resolve) => {
      server.child.once("exit", () => resolve());
      server.child.kill("SIGTERM");
    });
    for (const step of cleanup) await step();
  }
}

const wanted =
  args.backend === "both" ? (["pglite", "postgres"] as const) : [args.backend as "pglite" | "postgres"];
const sections: string[] = [];
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
  sections.push(await bench(backend));
}
mkdirSync(join(ROOT, "bench/results"), { recursive: true });
writeFileSync(
  join(ROOT, "bench/results/claims.md"),
  `${sections.join("\n")}\nCommand: npm run bench:claims -- ${process.argv.slice(2).join(" ")}\n`,
);
