import { v7 as uuidv7 } from "uuid";
import { DomainError } from "../../core/errors.ts";
import { stableHash } from "../../core/hash.ts";
import { jsonWithinLimit } from "../../core/limits.ts";
import { isStringTuple, type ListSpec, type Page, type PageRequest, type Paging } from "../../core/paging.ts";
import type { Database } from "../../db/database.ts";
import type { Tx, UnitOfWork } from "../../db/unit-of-work.ts";
import { RUN_EVENTS_CHANNEL } from "../events/appends.ts";
import { SERVER_EVENT, writeServerEvent } from "../events/server-events.ts";
import { RunEntity } from "../runs/entities.ts";
import { runIsTerminal, runNotFound } from "../runs/errors.ts";
import { RUNS_STREAM } from "../runs/model.ts";
import { CommandEntity, type CommandRow } from "./entities.ts";
import {
  COMMANDS_CHANGED,
  type Command,
  type CommandOutcome,
  type CommandState,
  type CommandType,
  checkResultSize,
  type NewCommand,
} from "./model.ts";
import {
  ackCommand,
  endCommand,
  insertCommand,
  insertCommandEvent,
  lockActiveRun,
  reserveCommandSeq,
} from "./sql.ts";

/** By seq, as decimal text. */
const COMMAND_LIST: ListSpec<string[]> = {
  name: "commands",
  defaultSize: 100,
  maxSize: 1000,
  isPosition: isStringTuple(1),
};

/** Thrown inside a transaction to roll it back when a concurrent create took the idempotency key. */
class LostIdempotencyRace extends Error {}

export const commandNotFound = (commandId: string) =>
  new DomainError("NOT_FOUND", "COMMAND_NOT_FOUND", `command ${commandId} was not found`, {
    command_id: commandId,
  });

const idempotencyKeyReused = (key: string) =>
  new DomainError(
    "ALREADY_EXISTS",
    "IDEMPOTENCY_KEY_REUSED",
    `idempotency_key ${key} was already used with a different command; use a new key for a new command`,
    { idempotency_key: key },
  );

/**
 * Commands to the runner of a run: gapless per-run seqs, idempotent creates, first terminal state
 * wins. Every command is announced by an "agentstore.command" event in its run's log, and state
 * changes by "agentstore.command_status" events, so StreamCommands and StreamRunEvents see them in
 * one order.
 */
export class CommandStore {
  readonly #db: Database;
  readonly #uow: UnitOfWork;
  readonly #paging: Paging;
  readonly #maxPayloadBytes: number;

  constructor(db: Database, uow: UnitOfWork, paging: Paging, maxPayloadBytes: number) {
    this.#db = db;
    this.#uow = uow;
    this.#paging = paging;
    this.#maxPayloadBytes = maxPayloadBytes;
  }

  async create(tenant: string, runId: string, command: NewCommand): Promise<Command> {
    const payloadJson = jsonWithinLimit("the command's payload", command.payload, this.#maxPayloadBytes);
    const payloadHash = stableHash({
      type: command.type,
      customType: command.customType,
      payload: command.payload,
    });
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#uow.run(tenant, async (tx) => {
          // Lock order (db/unit-of-work.ts): the tenant's runs version before the run's row.
          await tx.lockVersion(tenant, RUNS_STREAM);
          if (command.idempotencyKey !== null) {
            const existing = await tx.em.findOne(CommandEntity, {
              tenantId: tenant,
              runId,
              idempotencyKey: command.idempotencyKey,
            });
            if (existing !== null) {
              if (existing.payloadHash !== payloadHash) throw idempotencyKeyReused(command.idempotencyKey);
              return toCommand(existing);
            }
          }
          const reserved = await tx.sql.first(reserveCommandSeq, tenant, runId);
          if (reserved === undefined) {
            const run = await tx.em.findOne(
              RunEntity,
              { tenantId: tenant, id: runId },
              { fields: ["id", "status"] },
            );
            if (run === null) throw runNotFound(runId);
            throw runIsTerminal(run);
          }
          const id = uuidv7();
          const inserted = await tx.sql.first(
            insertCommand,
            tenant,
            id,
            runId,
            reserved.commandSeq,
            command.type,
            command.customType,
            payloadJson,
            command.idempotencyKey,
            payloadHash,
            reserved.eventSeq,
            reserved.at,
          );
          if (inserted === undefined) throw new LostIdempotencyRace();
          await tx.sql.all(
            insertCommandEvent,
            tenant,
            runId,
            reserved.eventSeq,
            JSON.stringify({
              command_id: id,
              command_seq: reserved.commandSeq,
              command_type: command.type,
              custom_type: command.customType ?? "",
            }),
            reserved.at,
          );
          tx.publish({ channel: RUN_EVENTS_CHANNEL, tenant, key: runId, seq: reserved.eventSeq });
          if (reserved.sessionId !== null) tx.notice({ topic: COMMANDS_CHANGED, tenant, key: runId });
          return toCommand(inserted.command);
        });
      } catch (err) {
        // A concurrent create with the same key committed first; the next attempt finds it.
        if (err instanceof LostIdempotencyRace && attempt === 0) continue;
        throw err;
      }
    }
  }

  async get(tenant: string, commandId: string): Promise<Command> {
    const row = await this.#db.orm.em.fork().findOne(CommandEntity, { tenantId: tenant, id: commandId });
    if (row === null) throw commandNotFound(commandId);
    return toCommand(row);
  }

  /** The seq of the run event that announced the run's command `seq` (where StreamCommands resumes). */
  async eventSeqOf(tenant: string, runId: string, seq: number): Promise<number | undefined> {
    const row = await this.#db.orm.em
      .fork()
      .findOne(CommandEntity, { tenantId: tenant, runId, seq }, { fields: ["eventSeq"] });
    return row === null ? undefined : Number(row.eventSeq);
  }

  /** The commands of a run with seq > afterSeq, in seq order, optionally in one state. */
  async list(
    tenant: string,
    runId: string,
    filter: { afterSeq: number; state: CommandState | undefined },
    request: PageRequest,
  ): Promise<Page<Command>> {
    const page = this.#paging.start(COMMAND_LIST, tenant, { runId, ...filter }, request);
    const after = page.after !== undefined ? Number(page.after[0]) : filter.afterSeq;
    const em = this.#db.orm.em.fork();
    const where: Record<string, unknown> = { tenantId: tenant, runId, seq: { $gt: after } };
    if (filter.state !== undefined) where.state = filter.state;
    const rows = await em.find(CommandEntity, where, { orderBy: { seq: "asc" }, limit: page.limit + 1 });
    if (rows.length === 0 && (await em.count(RunEntity, { tenantId: tenant, id: runId })) === 0) {
      throw runNotFound(runId);
    }
    return page.finish(
      rows.map(toCommand),
      (c) => [String(c.seq)],
      (c) => JSON.stringify(c.payload).length + 512,
    );
  }

  async ack(tenant: string, commandId: string): Promise<{ command: Command; changed: boolean }> {
    return this.#move(tenant, commandId, (tx) => tx.sql.first(ackCommand, tenant, commandId));
  }

  async finish(
    tenant: string,
    commandId: string,
    outcome: CommandOutcome,
  ): Promise<{ command: Command; changed: boolean }> {
    if (outcome.result !== null) checkResultSize(JSON.stringify(outcome.result), this.#maxPayloadBytes);
    return this.#move(tenant, commandId, (tx) =>
      tx.sql.first(
        endCommand,
        tenant,
        commandId,
        outcome.state,
        outcome.result === null ? null : JSON.stringify(outcome.result),
        outcome.failureKind,
        outcome.failureMessage,
      ),
    );
  }

  async cancel(
    tenant: string,
    commandId: string,
    reason: string,
  ): Promise<{ command: Command; changed: boolean }> {
    return this.#move(tenant, commandId, (tx) =>
      tx.sql.first(
        endCommand,
        tenant,
        commandId,
        "cancelled",
        null,
        "cancelled",
        reason || "cancelled by request",
      ),
    );
  }

  /**
   * One state move. The run's row is locked first (the order a run's termination takes too), so a
   * move and the run's end never interleave: while the run is active the move is announced in its
   * log; once it has ended, its commands were cancelled with it and the move changes nothing.
   */
  async #move(
    tenant: string,
    commandId: string,
    update: (tx: Tx) => Promise<{ command: CommandRow } | undefined>,
  ): Promise<{ command: Command; changed: boolean }> {
    return this.#uow.run(tenant, async (tx) => {
      await tx.lockVersion(tenant, RUNS_STREAM);
      const current = await tx.em.findOne(
        CommandEntity,
        { tenantId: tenant, id: commandId },
        { fields: ["id", "runId"] },
      );
      if (current === null) throw commandNotFound(commandId);
      const active = await tx.sql.first(lockActiveRun, tenant, current.runId);
      const moved = active === undefined ? undefined : await update(tx);
      if (moved === undefined) {
        const row = await tx.em.findOne(CommandEntity, { tenantId: tenant, id: commandId });
        if (row === null) throw commandNotFound(commandId);
        return { command: toCommand(row), changed: false };
      }
      const command = toCommand(moved.command);
      await writeServerEvent(tx, tenant, command.runId, SERVER_EVENT.commandStatus, {
        command_id: command.id,
        command_seq: command.seq,
        state: command.state,
        failure_kind: command.failureKind ?? "",
        failure_message: command.failureMessage ?? "",
      });
      if (active?.sessionId != null) tx.notice({ topic: COMMANDS_CHANGED, tenant, key: command.runId });
      return { command, changed: true };
    });
  }
}

export function toCommand(row: CommandRow): Command {
  return {
    id: row.id,
    runId: row.runId,
    seq: Number(row.seq),
    type: row.type as CommandType,
    customType: row.customType ?? null,
    payload: row.payload,
    idempotencyKey: row.idempotencyKey ?? null,
    state: row.state as CommandState,
    result: row.result ?? null,
    failureKind: row.failureKind ?? null,
    failureMessage: row.failureMessage ?? null,
    eventSeq: Number(row.eventSeq),
    createdAt: row.createdAt,
    ackedAt: row.ackedAt ?? null,
    finishedAt: row.finishedAt ?? null,
    updatedAt: row.updatedAt,
  };
}
