import { Migration } from "@mikro-orm/migrations";

export class Migration20261203180032_sessions extends Migration {
  override name = "Migration20261203180032_sessions";

  override up(): void | Promise<void> {
    this.addSql(
      `create table "interrupts" ("tenant_id" text not null, "id" text not null, "session_id" text not null, "run_id" uuid null, "kind" text not null, "payload" jsonb not null, "payload_hash" text not null, "state" text not null, "answer" jsonb null, "resolved_by" text null, "expires_at" timestamptz(3) null, "created_at" timestamptz(3) not null default current_timestamp(3), "resolved_at" timestamptz(3) null, primary key ("tenant_id", "id"));`,
    );
    this.addSql(
      `create index "interrupts_session_idx" on "interrupts" ("tenant_id", "session_id", "created_at", "id");`,
    );
    this.addSql(
      `create index "interrupts_run_idx" on "interrupts" ("tenant_id", "run_id", "created_at", "id");`,
    );

    this.addSql(
      `create table "sessions" ("tenant_id" text not null, "id" text not null, "backend_profile" text null, "project" text null, "thread_id" text null, "title" text null, "title_set" boolean not null default false, "summary" jsonb not null, "metadata" jsonb not null, "version" bigint not null, "execution_state" text not null, "active_run_id" uuid null, "last_run_id" uuid null, "active_command_id" uuid null, "last_command_id" uuid null, "terminal_status" text null, "failure_kind" text null, "last_activity_at" timestamptz(3) not null default current_timestamp(3), "expires_at" timestamptz(3) null, "deleted_at" timestamptz(3) null, "created_at" timestamptz(3) not null default current_timestamp(3), "updated_at" timestamptz(3) not null default current_timestamp(3), primary key ("tenant_id", "id"));`,
    );
    this.addSql(`create index "sessions_version_idx" on "sessions" ("tenant_id", "version");`);
    this.addSql(`create index "sessions_activity_idx" on "sessions" ("tenant_id", "last_activity_at");`);

    this.addSql(
      `create table "session_bindings" ("tenant_id" text not null, "identity" text not null, "context_id" text not null, "session_id" text not null, "created_at" timestamptz(3) not null default current_timestamp(3), "updated_at" timestamptz(3) not null default current_timestamp(3), primary key ("tenant_id", "identity", "context_id"));`,
    );
    this.addSql(
      `create index "session_bindings_session_idx" on "session_bindings" ("tenant_id", "session_id");`,
    );

    this.addSql(
      `create table "session_claims" ("tenant_id" text not null, "identity" text not null, "context_id" text not null, "claimant" text not null, "expires_at" timestamptz(3) not null, "created_at" timestamptz(3) not null default current_timestamp(3), primary key ("tenant_id", "identity", "context_id"));`,
    );

    this.addSql(
      `create table "session_owners" ("tenant_id" text not null, "session_id" text not null, "identity" text not null, primary key ("tenant_id", "session_id"));`,
    );

    this.addSql(
      `create table "session_read_cursors" ("tenant_id" text not null, "session_id" text not null, "reader_id" text not null, "version" bigint not null, "read_at" timestamptz(3) not null default current_timestamp(3), primary key ("tenant_id", "session_id", "reader_id"));`,
    );

    this.addSql(
      `alter table "interrupts" add constraint "interrupts_state_check" check (state in ('pending','resolved'));`,
    );

    this.addSql(
      `alter table "sessions" add constraint "sessions_execution_state_check" check (execution_state in ('idle','running','terminal'));`,
    );
  }

  override down(): void | Promise<void> {
    this.addSql(`drop table if exists "interrupts" cascade;`);
    this.addSql(`drop table if exists "sessions" cascade;`);
    this.addSql(`drop table if exists "session_bindings" cascade;`);
    this.addSql(`drop table if exists "session_claims" cascade;`);
    this.addSql(`drop table if exists "session_owners" cascade;`);
    this.addSql(`drop table if exists "session_read_cursors" cascade;`);
  }
}
