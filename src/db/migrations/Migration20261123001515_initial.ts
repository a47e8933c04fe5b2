import { Migration } from "@mikro-orm/migrations";

export class Migration20261123001515_initial extends Migration {
  override name = "Migration20261123001515_initial";

  override up(): void | Promise<void> {
    this.addSql(
      `create table "runs" ("tenant_id" text not null, "id" uuid not null, "request_id" text null, "request_hash" text null, "thread_id" text null, "session_id" text null, "assistant_id" text null, "user_id" text null, "project" text null, "model_name" text null, "backend_profile" text null, "metadata" jsonb not null, "input" jsonb not null, "multitask_strategy" text not null, "status" text not null, "failure_kind" text null, "failure_message" text null, "runner_id" text null, "lease_expires_at" timestamptz(3) null, "input_tokens" bigint not null default '0', "output_tokens" bigint not null default '0', "total_tokens" bigint not null default '0', "llm_call_count" bigint not null default '0', "lead_agent_tokens" bigint not null default '0', "subagent_tokens" bigint not null default '0', "middleware_tokens" bigint not null default '0', "message_count" bigint not null default '0', "first_human_message" text null, "last_ai_message" text null, "last_seq" bigint not null default '0', "created_at" timestamptz(3) not null default current_timestamp(3), "updated_at" timestamptz(3) not null default current_timestamp(3), "started_at" timestamptz(3) null, "finished_at" timestamptz(3) null, primary key ("tenant_id", "id"));`,
    );
    this.addSql(`create index "runs_created_idx" on "runs" ("tenant_id", "created_at", "id");`);
    this.addSql(`create index "runs_thread_idx" on "runs" ("tenant_id", "thread_id", "created_at");`);
    this.addSql(`create index "runs_session_idx" on "runs" ("tenant_id", "session_id", "created_at");`);
    this.addSql(`create index "runs_user_idx" on "runs" ("tenant_id", "user_id", "created_at");`);
    this.addSql(
      `create index runs_inflight_idx on runs (tenant_id, created_at, id) where status in ('pending','claimed','running');`,
    );
    this.addSql(
      `alter table "runs" add constraint "runs_request_id_unique" unique ("tenant_id", "request_id");`,
    );

    this.addSql(
      `create table "run_events" ("tenant_id" text not null, "run_id" uuid not null, "seq" bigint not null, "type" text not null, "payload" jsonb not null, "created_at" timestamptz(3) not null default current_timestamp(3), primary key ("tenant_id", "run_id", "seq"));`,
    );

    this.addSql(
      `create table "run_event_batches" ("tenant_id" text not null, "run_id" uuid not null, "request_id" text not null, "request_hash" text not null, "first_seq" bigint not null, "last_seq" bigint not null, "created_at" timestamptz(3) not null default current_timestamp(3), primary key ("tenant_id", "run_id", "request_id"));`,
    );

    this.addSql(
      `alter table "runs" add constraint "runs_status_check" check (status in ('pending','claimed','running','completed','failed','blocked','cancelled'));`,
    );
  }

  override down(): void | Promise<void> {
    this.addSql(`drop table if exists "runs" cascade;`);
    this.addSql(`drop table if exists "run_events" cascade;`);
    this.addSql(`drop table if exists "run_event_batches" cascade;`);
  }
}
