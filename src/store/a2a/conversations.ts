import { create, fromBinary, toBinary, toJson } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  type Conversation,
  ConversationSchema,
  type Message,
  MessageSchema,
} from "../../../gen/agentstore/v1/a2a_task_pb.ts";
import { DomainError, invalidArgument } from "../../core/errors.ts";
import { stableHash } from "../../core/hash.ts";
import { isStringTuple, type ListSpec, type Page, type PageRequest, type Paging } from "../../core/paging.ts";
import type { Database } from "../../db/database.ts";
import type { UnitOfWork } from "../../db/unit-of-work.ts";
import { A2aConversationEntity, A2aConversationMessageEntity, type A2aConversationRow } from "./entities.ts";
import { conversationStats, lockOrCreateConversation, sweepConversations } from "./sql.ts";

/** Oldest first, by position. */
const MESSAGE_LIST: ListSpec<string[]> = {
  name: "a2a_messages",
  defaultSize: 100,
  maxSize: 1000,
  isPosition: isStringTuple(1),
};

const SWEEP_BATCH = 500;

export interface ConversationOptions {
  /** Messages a conversation keeps; null: all. */
  maxMessages: number | null;
  /** Idle time after which a conversation is gone; null: never. */
  ttlMs: number | null;
}

export interface ConversationCounts {
  conversations: number;
  messages: number;
  oldestAccess: Date | null;
  newestAccess: Date | null;
}

const live = (row: A2aConversationRow, now: Date) => row.expiresAt == null || row.expiresAt > now;

export const conversationNotFound = (contextId: string) =>
  new DomainError("NOT_FOUND", "CONVERSATION_NOT_FOUND", `conversation ${contextId} was not found`, {
    context_id: contextId,
  });

const messageIdReused = (contextId: string, messageId: string) =>
  new DomainError(
    "ALREADY_EXISTS",
    "MESSAGE_ID_REUSED",
    `conversation ${contextId} holds another message with id ${messageId}`,
    { context_id: contextId, message_id: messageId },
  );

function conversationFromRow(row: A2aConversationRow): Conversation {
  return create(ConversationSchema, {
    contextId: row.contextId,
    messageCount: BigInt(row.messageCount),
    createTime: row.createdAt && timestampFromDate(row.createdAt),
    lastAccessTime: row.lastAccessAt && timestampFromDate(row.lastAccessAt),
    expireTime: row.expiresAt == null ? undefined : timestampFromDate(row.expiresAt),
  });
}

/**
 * The messages of an A2A context (trpc-a2a-go's conversation history), apart from tasks. An
 * append holds the conversation's row lock, so positions are handed out in order and trimming
 * never races another append; an idle conversation is invisible from its expiry on, and its
 * next append starts it afresh.
 */
export class ConversationStore {
  readonly #db: Database;
  readonly #uow: UnitOfWork;
  readonly #paging: Paging;
  readonly #options: ConversationOptions;

  constructor(db: Database, uow: UnitOfWork, paging: Paging, options: ConversationOptions) {
    this.#db = db;
    this.#uow = uow;
    this.#paging = paging;
    this.#options = options;
  }

  get options(): ConversationOptions {
    return this.#options;
  }

  append(tenant: string, contextId: string, input: Message): Promise<{ created: boolean; count: number }> {
    if (input.contextId !== "" && input.contextId !== contextId) {
      throw invalidArgument(
        "CONTEXT_ID_MISMATCH",
        `message.context_id ${input.contextId} is not ${contextId}`,
        {
          field: "message.context_id",
        },
      );
    }
    const message = create(MessageSchema, { ...input, contextId });
    const hash = stableHash(toJson(MessageSchema, message));
    return this.#uow.run(tenant, async (tx) => {
      const now = new Date();
      const [locked] = await tx.sql.all(lockOrCreateConversation, tenant, contextId);
      if (locked === undefined) throw new Error("lock_or_create_conversation returned no row");
      const row = locked.conversation;
      let { messageCount: count, lastPosition: last, createdAt } = row;
      let created = true;
      if (!live(row, now)) {
        await tx.em.nativeDelete(A2aConversationMessageEntity, { tenantId: tenant, contextId });
        count = 0;
        createdAt = now;
      } else {
        const existing = await tx.em.findOne(A2aConversationMessageEntity, {
          tenantId: tenant,
          contextId,
          messageId: message.messageId,
        });
        if (existing !== null && existing.contentHash !== hash)
          throw messageIdReused(contextId, message.messageId);
        created = existing === null;
      }
      if (created) {
        last += 1;
        count += 1;
        await tx.em.insert(A2aConversationMessageEntity, {
          tenantId: tenant,
          contextId,
          position: last,
          messageId: message.messageId,
          contentHash: hash,
          body: Buffer.from(toBinary(MessageSchema, message)),
          createdAt: now,
        });
        const max = this.#options.maxMessages;
        if (max !== null && count > max) {
          await tx.em.nativeDelete(A2aConversationMessageEntity, {
            tenantId: tenant,
            contextId,
            position: { $lte: last - max },
          });
          count = max;
        }
      }
      await tx.em.nativeUpdate(
        A2aConversationEntity,
        { tenantId: tenant, contextId },
        {
          messageCount: count,
          lastPosition: last,
          createdAt,
          lastAccessAt: now,
          expiresAt: this.#expiry(now),
        },
      );
      return { created, count };
    });
  }

  /** A page of messages, oldest first; reading counts as an access (it keeps the conversation). */
  async list(tenant: string, contextId: string, request: PageRequest): Promise<Page<Message>> {
    const page = this.#paging.start(MESSAGE_LIST, tenant, { contextId }, request);
    const em = this.#db.orm.em.fork();
    const now = new Date();
    const row = await em.findOne(A2aConversationEntity, { tenantId: tenant, contextId });
    if (row === null || !live(row, now)) return { items: [], nextPageToken: "" };
    const after = Number(page.after?.[0] ?? 0);
    const oldest = row.lastPosition - row.messageCount + 1;
    if (page.after !== undefined && after + 1 < oldest) {
      throw new DomainError(
        "OUT_OF_RANGE",
        "MESSAGES_TRIMMED",
        `conversation ${contextId} no longer holds the messages after this page token (trimmed to its last ${row.messageCount}); list again from the start`,
        { context_id: contextId },
      );
    }
    const rows = await em.find(
      A2aConversationMessageEntity,
      { tenantId: tenant, contextId, position: { $gt: after } },
      { orderBy: { position: "asc" }, limit: page.limit + 1 },
    );
    await this.#uow.run(tenant, (tx) =>
      tx.em.nativeUpdate(
        A2aConversationEntity,
        { tenantId: tenant, contextId, $or: [{ expiresAt: null }, { expiresAt: { $gt: now } }] },
        { lastAccessAt: now, expiresAt: this.#expiry(now) },
      ),
    );
    const result = page.finish(
      rows,
      (r) => [String(r.position)],
      (r) => r.body.byteLength,
    );
    return {
      items: result.items.map((r) => fromBinary(MessageSchema, r.body)),
      nextPageToken: result.nextPageToken,
    };
  }

  async get(tenant: string, contextId: string): Promise<Conversation> {
    const row = await this.#db.orm.em.fork().findOne(A2aConversationEntity, { tenantId: tenant, contextId });
    if (row === null || !live(row, new Date())) throw conversationNotFound(contextId);
    return conversationFromRow(row);
  }

  delete(tenant: string, contextId: string): Promise<void> {
    return this.#uow.run(tenant, async (tx) => {
      const row = await tx.em.findOne(A2aConversationEntity, { tenantId: tenant, contextId });
      if (row === null || !live(row, new Date())) throw conversationNotFound(contextId);
      await tx.em.nativeDelete(A2aConversationMessageEntity, { tenantId: tenant, contextId });
      await tx.em.nativeDelete(A2aConversationEntity, { tenantId: tenant, contextId });
    });
  }

  async stats(tenant: string): Promise<ConversationCounts> {
    const row = await this.#db.sql.first(conversationStats, tenant, new Date());
    return {
      conversations: row?.conversations ?? 0,
      messages: row?.messages ?? 0,
      oldestAccess: row?.oldest ?? null,
      newestAccess: row?.newest ?? null,
    };
  }

  /** Deletes idle conversations in batches; returns how many. */
  async sweepExpired(): Promise<number> {
    let swept = 0;
    for (;;) {
      const rows = await this.#uow.run(null, (tx) => tx.sql.all(sweepConversations, new Date(), SWEEP_BATCH));
      swept += rows.length;
      if (rows.length < SWEEP_BATCH) return swept;
    }
  }

  #expiry(now: Date): Date | null {
    return this.#options.ttlMs === null ? null : new Date(now.getTime() + this.#options.ttlMs);
  }
}
