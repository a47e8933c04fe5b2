import { Migration } from "@mikro-orm/migrations";

export class Migration20261207003610_a2a_tasks extends Migration {
  override name = "Migration20261207003610_a2a_tasks";

  override up(): void | Promise<void> {
    this.addSql(
      `create table "a2a_conversations" ("tenant_id" text not null, "context_id" text not null, "message_count" bigint not null, "last_position" bigint not null, "created_at" timestamptz(3) not null default current_timestamp(3), "last_access_at" timestamptz(3) not null default current_timestamp(3), "expires_at" timestamptz(3) null, primary key ("tenant_id", "context_id"));`,
    );
    this.addSql(
      `create index a2a_conversations_expiry_idx on a2a_conversations (expires_at) where expires_at is not null;`,
    );

    this.addSql(
      `create table "a2a_conversation_messages" ("tenant_id" text not null, "context_id" text not null, "position" bigint not null, "message_id" text not null, "content_hash" text not null, "body" bytea not null, "created_at" timestamptz(3) not null default current_timestamp(3), primary key ("tenant_id", "context_id", "position"));`,
    );
    this.addSql(
      `alter table "a2a_conversation_messages" add constraint "a2a_conversation_messages_id_unique" unique ("tenant_id", "context_id", "message_id");`,
    );

    this.addSql(
      `create table "a2a_tasks" ("tenant_id" text not null, "id" text not null, "context_id" text not null default '', "state" smallint not null default 0, "status_time" timestamptz(3) null, "body" bytea not null, "generation" bigint not null, "update_seq" bigint not null, "ttl_ms" bigint null, "expires_at" timestamptz(3) null, "created_at" timestamptz(3) not null default current_timestamp(3), "updated_at" timestamptz(3) not null default current_timestamp(3), primary key ("tenant_id", "id"));`,
    );
    this.addSql(`create index "a2a_tasks_updated_idx" on "a2a_tasks" ("tenant_id", "updated_at", "id");`);
    this.addSql(
      `create index "a2a_tasks_context_idx" on "a2a_tasks" ("tenant_id", "context_id", "updated_at", "id");`,
    );
    this.addSql(`create index a2a_tasks_expiry_idx on a2a_tasks (expires_at) where expires_at is not null;`);

    this.addSql(
      `create table "a2a_task_updates" ("tenant_id" text not null, "task_id" text not null, "seq" bigint not null, "terminal" boolean not null default false, "request_id" text null, "request_hash" text null, "request_last_seq" bigint null, "body" bytea not null, "created_at" timestamptz(3) not null default current_timestamp(3), primary key ("tenant_id", "task_id", "seq"));`,
    );
    this.addSql(
      `create unique index a2a_task_updates_request_unique on a2a_task_updates (tenant_id, task_id, request_id) where request_id is not null;`,
    );
  }

  override down(): void | Promise<void> {
    this.addSql(`drop table if exists "a2a_conversations" cascade;`);
    this.addSql(`drop table if exists "a2a_conversation_messages" cascade;`);
    this.addSql(`drop table if exists "a2a_tasks" cascade;`);
    this.addSql(`drop table if exists "a2a_task_updates" cascade;`);
  }
}
