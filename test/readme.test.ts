import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { pglite, type TestDatabase } from "./helpers/databases.ts";
import { ROOT, startServer, type TestServer } from "./helpers/servers.ts";

/**
 * The README's examples, run as written (twice, as a newcomer trying them again would), against a
 * real server. A block is tested when the line before it is `<!-- readme-test: <name> -->`; the
 * examples read the server's address from $AS and default to the documented one.
 */
const run = promisify(execFile);
const readme = readFileSync(join(ROOT, "README.md"), "utf8");
const blocks = new Map<string, { lang: string; code: string }>();
for (const match of readme.matchAll(/<!-- readme-test: ([a-z-]+) -->\n```([a-z]+)\n([\s\S]*?)\n```/g)) {
  const [, name = "", lang = "", code = ""] = match;
  blocks.set(name, { lang, code });
}

describe("the README's examples", () => {
  let db: TestDatabase;
  let server: TestServer;
  const env = () => ({
    ...process.env,
    PATH: `${join(ROOT, "node_modules/.bin")}:${process.env.PATH ?? ""}`,
    AS: server.url,
  });

  before(async () => {
    db = await pglite().create();
    server = await startServer(db);
    // The TypeScript examples import the package by name, which resolves to the built client:
    // build it, so that they run against the client of this checkout.
    await run(join(ROOT, "node_modules/.bin/tsc"), ["-p", "tsconfig.build.json"], { cwd: ROOT });
  });
  after(async () => {
    await server?.close();
    await db?.drop();
  });

  it("has the blocks this test runs", () => {
    assert.deepEqual([...blocks.keys()].sort(), [
      "errors",
      "health",
      "queue",
      "queue-typescript",
      "runner",
      "runner-typescript",
      "runs",
      "sessions",
      "tasks",
      "typescript",
    ]);
  });

  const sh = async (name: string) => {
    const block = blocks.get(name);
    assert.ok(block, `README block ${name}`);
    const { stdout, stderr } = await run("bash", ["-euo", "pipefail", "-c", block.code], {
      cwd: ROOT,
      env: env(),
      // Every buf curl call starts a process; on a loaded 2-core machine a long block takes a while.
      timeout: 180_000,
    });
    return stdout + stderr;
  };

  it("the health check answers SERVING", async () => {
    for (let i = 0; i < 2; i++) assert.match(await sh("health"), /"status": "SERVING"/);
  });

  it("the buf curl walk-through runs twice, ending with the terminal event", async () => {
    for (let i = 0; i < 2; i++) {
      const out = await sh("runs");
      assert.match(out, /agentstore\.v1\.RunService\/WatchRuns/);
      assert.match(out, /"type": "assistant_message"/);
      assert.match(out, /"status": "completed"/);
      assert.match(out, /"type": "terminal_status"/);
    }
  });

  it("the error example shows the ErrorInfo reason", async () => {
    for (let i = 0; i < 2; i++) assert.match(await sh("errors"), /"reason": "RUN_NOT_FOUND"/);
  });

  /** Runs a TypeScript block twice, inside the package so that `agentstore/client` resolves by name. */
  const ts = async (name: string): Promise<string[]> => {
    const block = blocks.get(name);
    assert.ok(block, `README block ${name}`);
    const file = join(ROOT, `.readme-example-${process.pid}-${name}.ts`);
    writeFileSync(file, block.code);
    try {
      const outputs: string[] = [];
      for (let i = 0; i < 2; i++) {
        const { stdout } = await run(process.execPath, [file], { cwd: ROOT, env: env(), timeout: 60_000 });
        outputs.push(stdout);
      }
      return outputs;
    } finally {
      rmSync(file, { force: true });
    }
  };

  it("the TypeScript example runs twice and ends", async () => {
    for (const stdout of await ts("typescript")) {
      assert.match(stdout, /^1 assistant_message \{ text: 'hi' \}$/m);
      assert.match(stdout, /^2 terminal_status /m);
    }
  });

  it("the runner protocol in buf curl runs twice: register, claim, stream commands, report, finish", async () => {
    for (let i = 0; i < 2; i++) {
      const out = await sh("runner");
      assert.match(out, /"status": "RUN_STATUS_CLAIMED"/);
      assert.match(out, /^fix the bug$/m, "the streamed command carried its payload");
      assert.match(out, /"renewedRunCount": "1"/);
      assert.match(out, /"status": "RUN_STATUS_COMPLETED"/);
    }
  });

  it("the sessions walk-through runs twice: read state, interrupts, output view, a gateway's claim", async () => {
    for (let i = 0; i < 2; i++) {
      const out = await sh("sessions");
      assert.match(
        out,
        /^Summarise the incident: SESSION_EXECUTION_STATE_TERMINAL, ATTENTION_STATE_UNREAD$/m,
      );
      assert.match(out, /^ATTENTION_STATE_READ$/m);
      assert.match(out, /^chat-42 ATTENTION_STATE_READ$/m);
      assert.match(out, /"changed": true/, "the first answer resolved the interrupt");
      assert.match(out, /^assistant_message\nterminal_status$/m);
      assert.match(out, /^chat-42$/m, "the claim became a binding");
    }
  });

  it("the queue walk-through runs twice: enqueue, claim, renew, complete, fail and retry, snapshot", async () => {
    for (let i = 0; i < 2; i++) {
      const out = await sh("queue");
      assert.match(out, /^ana@example\.com QUEUE_TASK_STATE_COMPLETED$/m);
      assert.match(out, /^bo@example\.com QUEUE_TASK_STATE_PENDING after: smtp timeout$/m);
      assert.match(out, /^bo@example\.com attempt 2$/m, "the failed task came back after its backoff");
      assert.match(out, /^bo@example\.com QUEUE_TASK_STATE_COMPLETED$/m);
      assert.match(out, /^due now: 0$/m);
    }
  });

  it("the A2A walk-through runs twice: save, publish, resubscribe after a seq, terminal stays terminal", async () => {
    for (let i = 0; i < 2; i++) {
      const out = await sh("tasks");
      assert.match(out, /^created: true, generation 1$/m);
      assert.match(out, /^seqs 2-4: Sales grew by 4%\.$/m);
      assert.match(out, /^seq 3 artifact summary\nseq 4 artifact summary\nseq 5 TASK_STATE_COMPLETED$/m);
      assert.match(out, /^failed_precondition$/m);
      assert.match(out, /^TASK_STATE_COMPLETED, generation 3$/m);
    }
  });

  it("the TypeScript queue worker runs twice and completes what it enqueued", async () => {
    for (const stdout of await ts("queue-typescript")) {
      assert.deepEqual(stdout.trim().split("\n").sort(), [
        "done: thumb-a.png",
        "done: thumb-b.png",
        "done: thumb-c.png",
      ]);
    }
  });

  it("the TypeScript runner loop runs twice and ends", async () => {
    for (const stdout of await ts("runner-typescript")) assert.match(stdout, /^command 1: you said hello$/m);
  });
});

describe("the README's first command", () => {
  it("`make run` serves the embedded default until it is stopped", async () => {
    const dir = mkdtempSync(join(tmpdir(), "agentstore-make-run-"));
    // The documented command, with only the port and the data directory moved out of the way.
    const child = spawn("make", ["run"], {
      cwd: ROOT,
      env: { ...process.env, AGENTSTORE_LISTEN: "127.0.0.1:0", AGENTSTORE_DATA_DIR: join(dir, "data") },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    try {
      let output = "";
      const port = await new Promise<number>((resolve, reject) => {
        const onData = (chunk: Buffer) => {
          output += chunk;
          const match = /"port":(\d+).*"msg":"agentstore serving"/.exec(output);
          if (match) resolve(Number(match[1]));
        };
        child.stdout.on("data", onData);
        child.stderr.on("data", onData);
        child.once("exit", (code) => reject(new Error(`make run exited with ${code}:\n${output}`)));
      });
      const { stdout } = await run(
        join(ROOT, "node_modules/.bin/buf"),
        [
          "curl",
          "--protocol",
          "grpc",
          "--http2-prior-knowledge",
          `http://127.0.0.1:${port}/grpc.health.v1.Health/Check`,
        ],
        { cwd: ROOT, timeout: 60_000 },
      );
      assert.match(stdout, /"status": "SERVING"/);
    } finally {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      if (child.pid !== undefined && child.exitCode === null) process.kill(-child.pid, "SIGTERM");
      await exited;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
