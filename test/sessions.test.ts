import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { ConnectError } from "@connectrpc/connect";
import {
  type AgentStoreClient,
  AttentionState,
  Code,
  CommandState,
  CommandType,
  createClient,
  InterruptState,
  MultitaskStrategy,
  RunStatus,
  type Session,
  SessionExecutionState,
  SessionListFilter,
} from "../src/client/index.ts";
import { eventually, range, reasonOf, rejectsWith } from "./helpers/assertions.ts";
import { backends, type TestDatabase } from "./helpers/databases.ts";
import {
  errorReason,
  type GrpcError,
  grpcSessionService,
  struct,
  unary,
  unstruct,
} from "./helpers/grpc-js.ts";
import { API_KEYS_ENV, KEYS, startServer, type TestServer, useServer } from "./helpers/servers.ts";

const newSessionId = () => `s-${randomUUID()}`;

/** Creates a run in a session (creating the session with its first run). */
async function runIn(client: AgentStoreClient, sessionId: string, extra: Record<string, unknown> = {}) {
  const { run } = await client.runs.createRun({
    run: { sessionId, multitaskStrategy: MultitaskStrategy.ENQUEUE, ...extra },
  });
  return run?.runId ?? "";
}

const get = async (client: AgentStoreClient, sessionId: string, readerId = "") =>
  (await client.sessions.getSession({ sessionId, readerId })).session as Session;

interface SessionWatcher {
  /** Every (session id, version, removed) received, in arrival order. */
  seen: Array<{ sessionId: string; version: bigint; removed: boolean; session: Session }>;
  latest: Map<string, Session>;
  stop(): Promise<void>;
}

function watchSessions(
  client: AgentStoreClient,
  request: { afterVersion?: bigint; readerId?: string; fromNow?: boolean } = {},
): SessionWatcher {
  const controller = new AbortController();
  const seen: SessionWatcher["seen"] = [];
  const latest = new Map<string, Session>();
  const done = (async () => {
    for await (const { session, version, removed } of client.sessions.watchSessions(request, {
      signal: controller.signal,
    })) {
      if (session === undefined) continue;
      seen.push({ sessionId: session.sessionId, version, removed, session });
      latest.set(session.sessionId, session);
    }
  })().catch((err: unknown) => {
    if (!controller.signal.aborted) throw err;
  });
  return {
    seen,
    latest,
    async stop() {
      controller.abort();
      await done;
    },
  };
}

for (const backend of await backends()) {
  describe(`sessions on ${backend.name}`, { skip: backend.skip }, () => {
    const fx = useServer(backend);

    it("a run with a session id creates the session, and its runs and turns drive it", async () => {
      const sessionId = newSessionId();
      const runId = await runIn(fx.client, sessionId, {
        backendProfile: "codex",
        project: "p1",
        threadId: "t1",
      });
      let session = await get(fx.client, sessionId);
      assert.equal(session.executionState, SessionExecutionState.RUNNING);
      assert.equal(session.activeRunId, runId);
      assert.equal(session.lastRunId, runId);
      assert.equal(session.backendProfile, "codex");
      assert.equal(session.project, "p1");
      assert.equal(session.threadId, "t1");
      assert.equal(session.attentionState, AttentionState.ACTIVE);
      const created = session.version;

      const { command } = await fx.client.runs.createCommand({
        runId,
        type: CommandType.TURN,
        payload: { prompt: "  fix   the\nflaky test  " },
      });
      session = await get(fx.client, sessionId);
      assert.equal(session.activeCommandId, command?.commandId);
      assert.equal(session.title, "fix the flaky test", "the first turn's prompt, trimmed");
      assert.ok(session.version > created, "a turn starting is a change");

      await fx.client.runs.appendRunEvents({
        runId,
        events: [{ type: "assistant_message", payload: { text: "done" } }],
      });
      const afterAppend = await get(fx.client, sessionId);
      assert.equal(afterAppend.version, session.version, "an event is no change of the session");
      assert.ok(afterAppend.lastEventSeq >= 2n, "but its seq shows");

      await fx.client.runs.finishCommand({
        commandId: command?.commandId ?? "",
        state: CommandState.COMPLETED,
      });
      session = await get(fx.client, sessionId);
      assert.equal(session.activeCommandId, "");
      assert.equal(session.lastCommandId, command?.commandId);

      await fx.client.runs.finishRun({ runId, status: RunStatus.FAILED, failureKind: "timeout" });
      session = await get(fx.client, sessionId);
      assert.equal(session.executionState, SessionExecutionState.TERMINAL);
      assert.equal(session.terminalStatus, RunStatus.FAILED);
      assert.equal(session.failureKind, "timeout");
      assert.equal(session.activeRunId, "");
      assert.equal(
        session.attentionState,
        AttentionState.UNREAD,
        "no reader: everything not active is unread",
      );

      // A second run joins; a title from run metadata would have won over the prompt.
      const second = await runIn(fx.client, sessionId, { backendProfile: "codex" });
      session = await get(fx.client, sessionId);
      assert.equal(session.lastRunId, second);
      assert.equal(session.executionState, SessionExecutionState.RUNNING);
      assert.equal(session.terminalStatus, RunStatus.UNSPECIFIED);
      await fx.client.runs.cancelRun({ runId: second });
      assert.equal((await get(fx.client, sessionId)).terminalStatus, RunStatus.CANCELLED);

      const titled = newSessionId();
      await runIn(fx.client, titled, { metadata: { title: " Release notes " } });
      assert.equal((await get(fx.client, titled)).title, "Release notes");
    });

    it("a session is bound to its backend profile: a run for another is refused and stores nothing", async () => {
      const sessionId = newSessionId();
      await runIn(fx.client, sessionId, { backendProfile: "codex" });
      const before = await get(fx.client, sessionId);
      await rejectsWith(
        fx.client.runs.createRun({ run: { sessionId, backendProfile: "claude" } }),
        Code.FailedPrecondition,
        "SESSION_PROFILE_MISMATCH",
      );
      const { runs } = await fx.client.runs.listRuns({ sessionId });
      assert.equal(runs.length, 1, "the refused run was not created");
      assert.equal((await get(fx.client, sessionId)).version, before.version);
    });

    it("attention for two readers: active, then unread for both, read for the one who marked it", async () => {
      const sessionId = newSessionId();
      const runId = await runIn(fx.client, sessionId);
      assert.equal((await get(fx.client, sessionId, "alice")).attentionState, AttentionState.ACTIVE);
      await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
      assert.equal((await get(fx.client, sessionId, "alice")).attentionState, AttentionState.UNREAD);
      assert.equal((await get(fx.client, sessionId, "bob")).attentionState, AttentionState.UNREAD);

      const marked = (await fx.client.sessions.markSessionRead({ sessionId, readerId: "alice" })).session;
      assert.equal(marked?.attentionState, AttentionState.READ);
      assert.equal(marked?.readVersion, marked?.version);
      assert.equal((await get(fx.client, sessionId, "alice")).attentionState, AttentionState.READ);
      assert.equal((await get(fx.client, sessionId, "bob")).attentionState, AttentionState.UNREAD);

      // A cursor never moves back; one ahead of the session is refused.
      const version = marked?.version ?? 0n;
      await fx.client.sessions.markSessionRead({ sessionId, readerId: "alice", upToVersion: 1n });
      assert.equal((await get(fx.client, sessionId, "alice")).readVersion, version);
      await rejectsWith(
        fx.client.sessions.markSessionRead({ sessionId, readerId: "alice", upToVersion: version + 1n }),
        Code.InvalidArgument,
        "VERSION_AHEAD",
      );

      // A new change makes it unread again for alice; bob reads it all.
      await fx.client.sessions.updateSession({
        session: { sessionId, title: "renamed" },
        updateMask: { paths: ["title"] },
      });
      assert.equal((await get(fx.client, sessionId, "alice")).attentionState, AttentionState.UNREAD);
      await fx.client.sessions.markSessionRead({ sessionId, readerId: "bob" });
      assert.equal((await get(fx.client, sessionId, "bob")).attentionState, AttentionState.READ);
    });

    it("list filters and order agree with a reference model, page by page", async () => {
      const profile = `p-${randomUUID()}`;
      const reader = `r-${randomUUID()}`;
      const ids: string[] = [];
      for (const i of range(1, 9)) {
        const sessionId = `${profile}-${i}`;
        ids.push(sessionId);
        const runId = await runIn(fx.client, sessionId, { backendProfile: profile });
        if (i % 3 !== 0) await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
        if (i % 3 === 1) await fx.client.sessions.markSessionRead({ sessionId, readerId: reader });
      }
      const all = await Promise.all(ids.map((id) => get(fx.client, id, reader)));
      const activity = (s: Session) => s.lastActivityTime?.seconds ?? 0n;
      const millis = (s: Session) =>
        Number(activity(s)) * 1000 + Math.floor((s.lastActivityTime?.nanos ?? 0) / 1e6);
      const reference = [...all].sort((a, b) => {
        const rank = (s: Session) => [
          s.attentionState === AttentionState.ACTIVE ? 1 : 0,
          s.attentionState === AttentionState.UNREAD ? 1 : 0,
        ];
        const [aa, au] = rank(a);
        const [ba, bu] = rank(b);
        return (
          (ba ?? 0) - (aa ?? 0) ||
          (bu ?? 0) - (au ?? 0) ||
          millis(b) - millis(a) ||
          (a.sessionId < b.sessionId ? 1 : a.sessionId > b.sessionId ? -1 : 0)
        );
      });
      const matches: Record<string, (s: Session) => boolean> = {
        [SessionListFilter.ALL]: () => true,
        [SessionListFilter.DEFAULT]: (s) => s.attentionState !== AttentionState.READ,
        [SessionListFilter.RUNNING]: (s) => s.attentionState === AttentionState.ACTIVE,
        [SessionListFilter.UNREAD]: (s) => s.attentionState === AttentionState.UNREAD,
        [SessionListFilter.TERMINAL]: (s) => s.executionState === SessionExecutionState.TERMINAL,
        [SessionListFilter.IDLE]: (s) => s.executionState === SessionExecutionState.IDLE,
      };
      for (const filter of [
        SessionListFilter.ALL,
        SessionListFilter.DEFAULT,
        SessionListFilter.RUNNING,
        SessionListFilter.UNREAD,
        SessionListFilter.TERMINAL,
        SessionListFilter.IDLE,
      ]) {
        const listed: string[] = [];
        let pageToken = "";
        do {
          const page = await fx.client.sessions.listSessions({
            filter,
            backendProfile: profile,
            readerId: reader,
            pageSize: 2,
            pageToken,
          });
          assert.ok(page.sessions.length <= 2);
          listed.push(...page.sessions.map((s) => s.sessionId));
          pageToken = page.nextPageToken;
        } while (pageToken !== "");
        const expected = reference.filter(matches[filter] ?? (() => false)).map((s) => s.sessionId);
        assert.deepEqual(listed, expected, `filter ${filter}`);
      }
      // The default filter without a reader: active or (with no cursor) unread, so all nine.
      const { sessions } = await fx.client.sessions.listSessions({ backendProfile: profile, pageSize: 50 });
      assert.equal(sessions.length, 9);
    });

    it("UpdateSession changes what its mask names; a stale expected_version is ABORTED", async () => {
      const sessionId = newSessionId();
      const runId = await runIn(fx.client, sessionId);
      const before = await get(fx.client, sessionId);
      const { session } = await fx.client.sessions.updateSession({
        session: { sessionId, title: "Mine", summary: { files: 3 }, metadata: { color: "red" } },
        updateMask: { paths: ["title", "summary"] },
        expectedVersion: before.version,
      });
      assert.equal(session?.title, "Mine");
      assert.deepEqual(session?.summary, { files: 3 });
      assert.deepEqual(session?.metadata, {}, "metadata was not in the mask");
      assert.ok((session?.version ?? 0n) > before.version);
      const err = await rejectsWith(
        fx.client.sessions.updateSession({
          session: { sessionId, title: "Theirs" },
          updateMask: { paths: ["title"] },
          expectedVersion: before.version,
        }),
        Code.Aborted,
        "VERSION_MISMATCH",
      );
      assert.match(err.message, /version/);
      assert.equal((await get(fx.client, sessionId)).title, "Mine");
      // A title set by hand stays when turns come.
      await fx.client.runs.createCommand({ runId, type: CommandType.TURN, payload: { prompt: "other" } });
      assert.equal((await get(fx.client, sessionId)).title, "Mine");
      await rejectsWith(
        fx.client.sessions.updateSession({ session: { sessionId }, updateMask: { paths: ["version"] } }),
        Code.InvalidArgument,
      );
      await rejectsWith(
        fx.client.sessions.updateSession({
          session: { sessionId: newSessionId() },
          updateMask: { paths: ["title"] },
        }),
        Code.NotFound,
        "SESSION_NOT_FOUND",
      );
    });

    it("ListSessionEvents: the trace across runs, one run's, and the output view, paged", async () => {
      const sessionId = newSessionId();
      const first = await runIn(fx.client, sessionId);
      await fx.client.runs.appendRunEvents({
        runId: first,
        events: range(1, 4).map((i) => ({ type: i % 2 ? "assistant_message" : "tool_call", payload: { i } })),
      });
      await fx.client.runs.finishRun({ runId: first, status: RunStatus.COMPLETED });
      const second = await runIn(fx.client, sessionId);
      await fx.client.runs.appendRunEvents({
        runId: second,
        events: range(5, 7).map((i) => ({ type: i % 2 ? "assistant_message" : "tool_call", payload: { i } })),
      });
      const collect = async (req: { runId?: string; afterSeq?: bigint; outputOnly?: boolean }) => {
        const out: Array<[string, bigint, string]> = [];
        let pageToken = "";
        do {
          const page = await fx.client.sessions.listSessionEvents({
            sessionId,
            pageSize: 2,
            pageToken,
            ...req,
          });
          assert.ok(page.events.length <= 2);
          out.push(...page.events.map((e): [string, bigint, string] => [e.runId, e.seq, e.type]));
          pageToken = page.nextPageToken;
        } while (pageToken !== "");
        return out;
      };
      const trace = await collect({});
      const firstAll = (await fx.client.runs.listRunEvents({ runId: first, pageSize: 100 })).events;
      const secondAll = (await fx.client.runs.listRunEvents({ runId: second, pageSize: 100 })).events;
      assert.deepEqual(
        trace,
        [...firstAll, ...secondAll].map((e) => [e.runId, e.seq, e.type]),
        "every event of every run, oldest run first",
      );
      const output = await collect({ outputOnly: true });
      assert.ok(output.every(([, , type]) => ["assistant_message", "terminal_status"].includes(type)));
      assert.deepEqual(
        output.map(([, , type]) => type),
        [
          "assistant_message",
          "assistant_message",
          "terminal_status",
          "assistant_message",
          "assistant_message",
        ],
      );
      const ofSecond = await collect({ runId: second, afterSeq: 1n });
      assert.deepEqual(
        ofSecond,
        secondAll.filter((e) => e.seq > 1n).map((e) => [e.runId, e.seq, e.type]),
      );
      const otherRun = (await fx.client.runs.createRun({ run: {} })).run?.runId ?? "";
      await rejectsWith(fx.client.sessions.listSessionEvents({ sessionId, runId: otherRun }), Code.NotFound);
    });

    it("WatchSessions sends every session once in its latest state, then live changes, and resumes", async () => {
      const reader = `r-${randomUUID()}`;
      const sessionId = newSessionId();
      const runId = await runIn(fx.client, sessionId);
      const start = (await get(fx.client, sessionId)).version - 1n;
      const watcher = watchSessions(fx.client, { afterVersion: start, readerId: reader });
      await eventually(() =>
        assert.equal(watcher.latest.get(sessionId)?.executionState, SessionExecutionState.RUNNING),
      );
      await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
      await eventually(() =>
        assert.equal(watcher.latest.get(sessionId)?.attentionState, AttentionState.UNREAD),
      );
      const resumeAt = watcher.seen.at(-1)?.version ?? 0n;
      await watcher.stop();

      await fx.client.sessions.markSessionRead({ sessionId, readerId: reader });
      await fx.client.sessions.putInterrupt({
        interrupt: { interruptId: randomUUID(), sessionId, kind: "question", payload: { q: "ok?" } },
      });
      const resumed = watchSessions(fx.client, { afterVersion: resumeAt, readerId: reader });
      await eventually(() => assert.equal(resumed.latest.get(sessionId)?.pendingInterruptCount, 1n));
      assert.ok(
        resumed.seen.every((s) => s.version > resumeAt),
        "nothing at or before the resume point",
      );

      await fx.client.sessions.deleteSession({ sessionId });
      await eventually(() => assert.ok(resumed.seen.some((s) => s.sessionId === sessionId && s.removed)));
      await resumed.stop();
      await rejectsWith(
        fx.client.sessions
          .watchSessions({ afterVersion: resumeAt + 1_000_000n })
          [Symbol.asyncIterator]()
          .next(),
        Code.OutOfRange,
        "VERSION_OUT_OF_RANGE",
      );
    });

    it("8 concurrent writers: a live watcher and a resuming one miss no session version", async () => {
      const marker = newSessionId();
      await runIn(fx.client, marker);
      const startAfter = (await get(fx.client, marker)).version;
      const live = watchSessions(fx.client, { afterVersion: startAfter });
      const resumedSeen: bigint[] = [];
      const resumedLatest = new Map<string, bigint>();
      let resuming = true;
      const resumer = (async () => {
        let after = startAfter;
        while (resuming) {
          const controller = new AbortController();
          let taken = 0;
          try {
            for await (const { session, version } of fx.client.sessions.watchSessions(
              { afterVersion: after },
              { signal: controller.signal },
            )) {
              if (session === undefined) continue;
              resumedSeen.push(version);
              resumedLatest.set(session.sessionId, version);
              after = version;
              if (++taken >= 5 || !resuming) {
                controller.abort();
                break;
              }
            }
          } catch (err) {
            if (!controller.signal.aborted) throw err;
          }
        }
      })();
      const prefix = newSessionId();
      const writers = range(1, 8).map(async (w) => {
        for (const i of range(1, 4)) {
          const sessionId = `${prefix}-${w}-${i % 2}`;
          const runId = await runIn(fx.client, sessionId);
          await fx.client.runs.createCommand({
            runId,
            type: CommandType.TURN,
            payload: { prompt: `w${w} i${i}` },
          });
          await fx.client.sessions.putInterrupt({
            interrupt: { interruptId: randomUUID(), sessionId, kind: "permission" },
          });
          await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
        }
      });
      await Promise.all(writers);
      const finals = new Map<string, bigint>();
      for (const w of range(1, 8)) {
        for (const k of [0, 1]) {
          const id = `${prefix}-${w}-${k}`;
          finals.set(id, (await get(fx.client, id)).version);
        }
      }
      const newest = Math.max(...[...finals.values()].map(Number));
      await eventually(() => {
        for (const [id, version] of finals) assert.equal(live.latest.get(id)?.version, version, `live ${id}`);
      }, 30_000);
      await eventually(() => {
        for (const [id, version] of finals) assert.equal(resumedLatest.get(id), version, `resumed ${id}`);
      }, 30_000);
      resuming = false;
      // One more change, so that the resuming reader's open stream hears of the stop.
      await runIn(fx.client, newSessionId());
      await resumer;
      await live.stop();
      for (const versions of [live.seen.map((s) => s.version), resumedSeen]) {
        assert.ok(
          versions.every((v, i) => i === 0 || v > (versions[i - 1] ?? 0n)),
          "strictly increasing versions, no repeat",
        );
        assert.ok(Number(versions.at(-1)) >= newest);
      }
    });

    it("32 claimants race for one pending session: one wins; an expired claim is taken over", async () => {
      const identity = `id-${randomUUID()}`;
      const contextId = "ctx-1";
      const results = await Promise.allSettled(
        range(1, 32).map((i) =>
          fx.client.sessions.claimPendingSession({
            identity,
            contextId,
            claimant: `c${i}`,
            ttl: durationFromMs(60_000),
          }),
        ),
      );
      const winners = results.filter((r) => r.status === "fulfilled");
      assert.equal(winners.length, 1, "exactly one claimant wins");
      for (const r of results) {
        if (r.status === "rejected") {
          assert.equal(errorReasonOf(r.reason), "SESSION_CLAIM_HELD");
        }
      }
      const winner =
        (winners[0] as PromiseFulfilledResult<{ claim?: { claimant: string } }>).value.claim?.claimant ?? "";
      // Its own claim extends; another's release is refused.
      assert.equal(
        (await fx.client.sessions.claimPendingSession({ identity, contextId, claimant: winner })).claim
          ?.claimant,
        winner,
      );
      await rejectsWith(
        fx.client.sessions.releaseSessionClaim({ identity, contextId, claimant: "someone-else" }),
        Code.FailedPrecondition,
        "NOT_CLAIM_HOLDER",
      );
      await fx.client.sessions.completeSessionClaim({
        identity,
        contextId,
        claimant: winner,
        sessionId: "up-1",
      });
      const bound = await fx.client.sessions.claimPendingSession({ identity, contextId, claimant: "late" });
      assert.equal(bound.claim, undefined);
      assert.equal(bound.binding?.sessionId, "up-1", "a bound pair answers with its binding");
      assert.equal(
        (await fx.client.sessions.resolveSession({ identity, contextId })).binding?.sessionId,
        "up-1",
      );

      // A claimant that crashed holds the pair only until its TTL.
      const crashed = "ctx-2";
      await fx.client.sessions.claimPendingSession({
        identity,
        contextId: crashed,
        claimant: "crashed",
        ttl: durationFromMs(1_000),
      });
      await rejectsWith(
        fx.client.sessions.claimPendingSession({ identity, contextId: crashed, claimant: "next" }),
        Code.Aborted,
        "SESSION_CLAIM_HELD",
      );
      let takeover = false;
      await eventually(async () => {
        const r = await fx.client.sessions.claimPendingSession({
          identity,
          contextId: crashed,
          claimant: "next",
        });
        takeover = r.takeover;
        assert.equal(r.claim?.claimant, "next");
      }, 15_000);
      assert.equal(takeover, true);
      await rejectsWith(
        fx.client.sessions.completeSessionClaim({
          identity,
          contextId: crashed,
          claimant: "crashed",
          sessionId: "x",
        }),
        Code.FailedPrecondition,
        "NOT_CLAIM_HOLDER",
      );
      await fx.client.sessions.releaseSessionClaim({ identity, contextId: crashed, claimant: "next" });
      assert.equal(
        (await fx.client.sessions.claimPendingSession({ identity, contextId: crashed, claimant: "third" }))
          .takeover,
        false,
        "a released claim is free, not taken over",
      );
    });

    it("bindings: owned by the first identity, rebindable, listed by identity, unbound", async () => {
      const alice = `alice-${randomUUID()}`;
      const bob = `bob-${randomUUID()}`;
      const upstream = `up-${randomUUID()}`;
      await fx.client.sessions.bindSession({
        binding: { identity: alice, contextId: "c1", sessionId: upstream },
      });
      await rejectsWith(
        fx.client.sessions.bindSession({ binding: { identity: bob, contextId: "c9", sessionId: upstream } }),
        Code.FailedPrecondition,
        "SESSION_OWNED_BY_OTHER",
      );
      await fx.client.sessions.bindSession({
        binding: { identity: alice, contextId: "c2", sessionId: upstream },
      });
      for (const i of range(3, 7)) {
        await fx.client.sessions.bindSession({
          binding: { identity: alice, contextId: `c${i}`, sessionId: `x-${i}` },
        });
      }
      const listed: string[] = [];
      let pageToken = "";
      do {
        const page = await fx.client.sessions.listBindings({ identity: alice, pageSize: 3, pageToken });
        listed.push(...page.bindings.map((b) => b.contextId));
        pageToken = page.nextPageToken;
      } while (pageToken !== "");
      assert.deepEqual(listed, ["c1", "c2", "c3", "c4", "c5", "c6", "c7"]);
      // Rebinding replaces; once alice's last binding of the session goes, bob may bind it.
      await fx.client.sessions.bindSession({
        binding: { identity: alice, contextId: "c1", sessionId: "other" },
      });
      assert.equal(
        (await fx.client.sessions.unbindSession({ identity: alice, contextId: "c2" })).changed,
        true,
      );
      assert.equal(
        (await fx.client.sessions.unbindSession({ identity: alice, contextId: "c2" })).changed,
        false,
      );
      await rejectsWith(
        fx.client.sessions.resolveSession({ identity: alice, contextId: "c2" }),
        Code.NotFound,
        "BINDING_NOT_FOUND",
      );
      await fx.client.sessions.bindSession({
        binding: { identity: bob, contextId: "c9", sessionId: upstream },
      });
    });

    it("interrupts: idempotent put, first answer wins, expired ones vanish, run must belong", async () => {
      const sessionId = newSessionId();
      const runId = await runIn(fx.client, sessionId);
      const interruptId = `perm-${randomUUID()}`;
      const asked = {
        interruptId,
        sessionId,
        runId,
        kind: "permission",
        payload: { tool: "rm", path: "/tmp/x" },
      };
      const { interrupt } = await fx.client.sessions.putInterrupt({ interrupt: asked });
      assert.equal(interrupt?.state, InterruptState.PENDING);
      assert.equal(
        (await fx.client.sessions.putInterrupt({ interrupt: asked })).interrupt?.createTime?.seconds,
        interrupt?.createTime?.seconds,
      );
      await rejectsWith(
        fx.client.sessions.putInterrupt({ interrupt: { ...asked, payload: { tool: "ls" } } }),
        Code.AlreadyExists,
        "INTERRUPT_EXISTS",
      );
      assert.equal((await get(fx.client, sessionId)).pendingInterruptCount, 1n);

      const first = await fx.client.sessions.resolveInterrupt({
        interruptId,
        answer: { allow: true },
        resolvedBy: "u1",
      });
      assert.equal(first.changed, true);
      const second = await fx.client.sessions.resolveInterrupt({ interruptId, answer: { allow: false } });
      assert.equal(second.changed, false);
      assert.deepEqual(second.interrupt?.answer, { allow: true }, "the first answer stays");
      assert.equal(second.interrupt?.resolvedBy, "u1");
      assert.equal((await get(fx.client, sessionId)).pendingInterruptCount, 0n);

      const short = `q-${randomUUID()}`;
      await fx.client.sessions.putInterrupt({
        interrupt: { interruptId: short, sessionId, kind: "question" },
        ttl: durationFromMs(1_000),
      });
      const pending = await fx.client.sessions.listInterrupts({ sessionId, pendingOnly: true });
      assert.deepEqual(
        pending.interrupts.map((i) => i.interruptId),
        [short],
      );
      await eventually(async () => {
        const { interrupts } = await fx.client.sessions.listInterrupts({ sessionId });
        assert.deepEqual(
          interrupts.map((i) => i.interruptId),
          [interruptId],
          "the expired one is gone",
        );
      }, 15_000);
      await rejectsWith(
        fx.client.sessions.resolveInterrupt({ interruptId: short, answer: {} }),
        Code.NotFound,
        "INTERRUPT_NOT_FOUND",
      );
      assert.equal((await fx.client.sessions.listInterrupts({ runId })).interrupts.length, 1);

      const stranger = (await fx.client.runs.createRun({ run: {} })).run?.runId ?? "";
      await rejectsWith(
        fx.client.sessions.putInterrupt({
          interrupt: { interruptId: randomUUID(), sessionId, runId: stranger, kind: "question" },
        }),
        Code.FailedPrecondition,
        "RUN_NOT_IN_SESSION",
      );
      await rejectsWith(
        fx.client.sessions.putInterrupt({
          interrupt: { interruptId: randomUUID(), sessionId: newSessionId(), kind: "question" },
        }),
        Code.NotFound,
        "SESSION_NOT_FOUND",
      );
    });

    it("DeleteSession refuses an active session; a deleted one is gone, and a new run starts it afresh", async () => {
      const sessionId = newSessionId();
      const runId = await runIn(fx.client, sessionId, { backendProfile: "a" });
      await fx.client.sessions.putInterrupt({
        interrupt: { interruptId: randomUUID(), sessionId, kind: "question" },
      });
      await rejectsWith(
        fx.client.sessions.deleteSession({ sessionId }),
        Code.FailedPrecondition,
        "SESSION_ACTIVE",
      );
      await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
      await fx.client.sessions.markSessionRead({ sessionId, readerId: "r" });
      await fx.client.sessions.deleteSession({ sessionId });
      await rejectsWith(fx.client.sessions.getSession({ sessionId }), Code.NotFound, "SESSION_NOT_FOUND");
      await rejectsWith(fx.client.sessions.deleteSession({ sessionId }), Code.NotFound, "SESSION_NOT_FOUND");
      await fx.client.sessions.deleteSession({ sessionId, allowMissing: true });
      assert.equal((await fx.client.runs.getRun({ runId })).run?.sessionId, sessionId, "its runs stay");

      await runIn(fx.client, sessionId, { backendProfile: "b" });
      const fresh = await get(fx.client, sessionId, "r");
      assert.equal(fresh.backendProfile, "b");
      assert.equal(fresh.readVersion, 0n, "cursors went with the old session");
      assert.equal(fresh.pendingInterruptCount, 0n);
    });

    it("expired sessions vanish from every read at once", async () => {
      const sessionId = newSessionId();
      const runId = await runIn(fx.client, sessionId);
      await fx.client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
      const soon = new Date(Date.now() + 1_500);
      await fx.client.sessions.updateSession({
        session: { sessionId, expireTime: { seconds: BigInt(Math.floor(soon.getTime() / 1000)), nanos: 0 } },
        updateMask: { paths: ["expire_time"] },
      });
      await eventually(async () => {
        await rejectsWith(fx.client.sessions.getSession({ sessionId }), Code.NotFound, "SESSION_NOT_FOUND");
      }, 15_000);
      const { sessions } = await fx.client.sessions.listSessions({
        filter: SessionListFilter.ALL,
        pageSize: 200,
      });
      assert.ok(!sessions.some((s) => s.sessionId === sessionId));
    });

    it("hostile input is INVALID_ARGUMENT and stores nothing, as on every service", async () => {
      const sessionId = newSessionId();
      await runIn(fx.client, sessionId);
      await rejectsWith(fx.client.sessions.getSession({ sessionId: "a\u0000b" }), Code.InvalidArgument);
      await rejectsWith(
        fx.client.sessions.putInterrupt({
          interrupt: { interruptId: "i\u0000", sessionId, kind: "question" },
        }),
        Code.InvalidArgument,
      );
      await rejectsWith(
        fx.client.sessions.putInterrupt({
          interrupt: { interruptId: randomUUID(), sessionId, kind: "question", payload: { t: "b\u0000c" } },
        }),
        Code.InvalidArgument,
      );
      await rejectsWith(
        fx.client.sessions.listSessionEvents({ sessionId, runId: "not-a-uuid" }),
        Code.InvalidArgument,
      );
      await rejectsWith(fx.client.sessions.listInterrupts({ runId: "nope" }), Code.InvalidArgument);
      await rejectsWith(
        fx.client.sessions.listSessions({ pageToken: "eyJrIjoic2Vzc2lvbnMifQ.AAAAAAAAAAAAAAAAAAAAAA" }),
        Code.InvalidArgument,
        "INVALID_PAGE_TOKEN",
      );
      await rejectsWith(
        fx.client.sessions.updateSession({
          session: { sessionId, expireTime: { seconds: 253402300800n, nanos: 0 } },
          updateMask: { paths: ["expire_time"] },
        }),
        Code.InvalidArgument,
      );
      assert.equal((await fx.client.sessions.listInterrupts({ sessionId })).interrupts.length, 0);
    });

    it("a plain grpc-js client reads and annotates sessions with the same semantics", async () => {
      const sessionId = newSessionId();
      await runIn(fx.client, sessionId);
      const client = grpcSessionService(fx.server.app.port);
      try {
        const got = await unary<{ session: { session_id: string; execution_state: string } }>(
          client,
          "GetSession",
          {
            session_id: sessionId,
          },
        );
        assert.equal(got.session.session_id, sessionId);
        assert.equal(got.session.execution_state, "SESSION_EXECUTION_STATE_RUNNING");
        const put = await unary<{ interrupt: { payload: unknown } }>(client, "PutInterrupt", {
          interrupt: {
            interrupt_id: randomUUID(),
            session_id: sessionId,
            kind: "question",
            payload: struct({ q: 1 }),
          },
        });
        assert.deepEqual(unstruct(put.interrupt.payload), { q: 1 });
        await assert.rejects(
          unary(client, "GetSession", { session_id: newSessionId() }),
          (err: GrpcError) => {
            assert.equal(errorReason(err), "SESSION_NOT_FOUND");
            return true;
          },
        );
      } finally {
        client.close();
      }
    });
  });
}

function errorReasonOf(err: unknown): string | undefined {
  return reasonOf(ConnectError.from(err));
}

describe("sessions are sealed per tenant, and interrupts survive a restart", () => {
  it("another tenant's sessions, bindings and claims are invisible; interrupts outlive the server", async () => {
    for (const backend of await backends()) {
      if (backend.skip !== undefined) continue;
      const db: TestDatabase = await backend.create();
      let server: TestServer = await startServer(db, { AGENTSTORE_API_KEYS: API_KEYS_ENV });
      const open = (key: string) => createClient({ baseUrl: server.url, apiKey: key });
      let alpha = open(KEYS.alpha);
      let beta = open(KEYS.beta);
      try {
        const sessionId = newSessionId();
        const runId = await runIn(alpha, sessionId);
        const interruptId = randomUUID();
        await alpha.sessions.putInterrupt({ interrupt: { interruptId, sessionId, runId, kind: "question" } });
        await alpha.sessions.bindSession({ binding: { identity: "u", contextId: "c", sessionId } });
        await alpha.sessions.claimPendingSession({ identity: "u", contextId: "pending", claimant: "a" });

        await rejectsWith(beta.sessions.getSession({ sessionId }), Code.NotFound, "SESSION_NOT_FOUND");
        await rejectsWith(beta.sessions.markSessionRead({ sessionId, readerId: "x" }), Code.NotFound);
        await rejectsWith(beta.sessions.listSessionEvents({ sessionId }), Code.NotFound);
        await rejectsWith(beta.sessions.deleteSession({ sessionId }), Code.NotFound);
        await rejectsWith(
          beta.sessions.updateSession({
            session: { sessionId, title: "x" },
            updateMask: { paths: ["title"] },
          }),
          Code.NotFound,
        );
        await rejectsWith(beta.sessions.resolveInterrupt({ interruptId, answer: {} }), Code.NotFound);
        await rejectsWith(
          beta.sessions.putInterrupt({
            interrupt: { interruptId: randomUUID(), sessionId, kind: "question" },
          }),
          Code.NotFound,
        );
        assert.equal((await beta.sessions.listInterrupts({ sessionId })).interrupts.length, 0);
        assert.equal(
          (await beta.sessions.listSessions({ filter: SessionListFilter.ALL })).sessions.length,
          0,
        );
        await rejectsWith(beta.sessions.resolveSession({ identity: "u", contextId: "c" }), Code.NotFound);
        assert.equal((await beta.sessions.listBindings({ identity: "u" })).bindings.length, 0);
        // Beta's own claim on the same pair is its own: alpha's does not block it.
        assert.equal(
          (await beta.sessions.claimPendingSession({ identity: "u", contextId: "pending", claimant: "b" }))
            .claim?.claimant,
          "b",
        );
        // The same session id in beta is another session, with its own profile.
        await runIn(beta, sessionId, { backendProfile: "other" });
        assert.equal((await get(beta, sessionId)).backendProfile, "other");
        assert.equal((await get(alpha, sessionId)).backendProfile, "");
        const beforeWatch = watchSessions(beta, {});
        await eventually(() => assert.equal(beforeWatch.latest.size, 1));
        await beforeWatch.stop();

        alpha.close();
        beta.close();
        await server.close();
        server = await startServer(db, { AGENTSTORE_API_KEYS: API_KEYS_ENV });
        alpha = open(KEYS.alpha);
        beta = open(KEYS.beta);
        const { interrupts } = await alpha.sessions.listInterrupts({ sessionId, pendingOnly: true });
        assert.deepEqual(
          interrupts.map((i) => i.interruptId),
          [interruptId],
          `${backend.name}: the pending interrupt survived the restart`,
        );
        assert.equal(
          (await alpha.sessions.resolveInterrupt({ interruptId, answer: { a: 1 } })).changed,
          true,
        );
        assert.equal(
          (await alpha.sessions.resolveSession({ identity: "u", contextId: "c" })).binding?.sessionId,
          sessionId,
        );
      } finally {
        alpha.close();
        beta.close();
        await server.close();
        await db.drop();
      }
    }
  });
});
