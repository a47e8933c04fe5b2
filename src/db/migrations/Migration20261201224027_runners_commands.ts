import { Migration } from "@mikro-orm/migrations";

export class Migration20261201224027_runners_commands extends Migration {
  override name = "Migration20261201224027_runners_commands";

  override up(): void | Promise<void> {
    this.addSql(
      `create table "commands" ("tenant_id" text not null, "id" uuid not null, "run_id" uuid not null, "seq" bigint not null, "type" text not null, "custom_type" text null, "payload" jsonb not null, "idempotency_key" text null, "payload_hash" text not null, "state" text not null, "result" jsonb null, "failure_kind" text null, "failure_message" text null, "event_seq" bigint not null, "created_at" timestamptz(3) not null default current_timestamp(3), "acked_at" timestamptz(3) null, "finished_at" timestamptz(3) null, "updated_at" timestamptz(3) not null default current_timestamp(3), primary key ("tenant_id", "id"));`,
    );
    this.addSql(
      `alter table "commands" add constraint "commands_seq_unique" unique ("tenant_id", "run_id", "seq");`,
    );
    this.addSql(
      `alter table "commands" add constraint "commands_idempotency_unique" unique ("tenant_id", "run_id", "idempotency_key");`,
    );

    this.addSql(
      `create table "runners" ("tenant_id" text not null, "id" text not null, "labels" jsonb not null, "capabilities" jsonb not null, "version" text null, "backend_profile" text null, "registered_at" timestamptz(3) not null default current_timestamp(3), "heartbeat_at" timestamptz(3) not null default current_timestamp(3), primary key ("tenant_id", "id"));`,
    );
    this.addSql(`create index "runners_heartbeat_idx" on "runners" ("tenant_id", "heartbeat_at");`);

    this.addSql(
      `create table "runner_jobs" ("tenant_id" text not null, "id" uuid not null, "run_id" uuid not null, "command_id" uuid null, "runner_id" text not null, "attempt_id" text null, "namespace" text null, "job_name" text null, "manager_url" text null, "image" text null, "source_commit" text null, "service_account" text null, "result" jsonb not null, "idempotency_key" text null, "payload_hash" text not null, "created_at" timestamptz(3) not null default current_timestamp(3), primary key ("tenant_id", "id"));`,
    );
    this.addSql(
      `create index "runner_jobs_run_idx" on "runner_jobs" ("tenant_id", "run_id", "created_at", "id");`,
    );
    this.addSql(
      `alter table "runner_jobs" add constraint "runner_jobs_idempotency_unique" unique ("tenant_id", "run_id", "idempotency_key");`,
    );

    this.addSql(
      `alter table "runs" add "labels" jsonb not null default '{}', add "lease_lost_policy" text not null default 'fail', add "last_command_seq" bigint not null default '0';`,
    );
    this.addSql(
      `create index runs_lease_idx on runs (lease_expires_at) where runner_id is not null and status in ('claimed','running');`,
    );
    this.addSql(
      `create index runs_pending_idx on runs (tenant_id, created_at, id) where status = 'pending';`,
    );

    this.addSql(
      `alter table "commands" add constraint "commands_type_check" check (type in ('turn','steer','cancel','custom'));`,
    );
    this.addSql(
      `alter table "commands" add constraint "commands_state_check" check (state in ('pending','acknowledged','completed','failed','cancelled'));`,
    );
  }

  override down(): void | Promise<void> {
    this.addSql(`drop table if exists "commands" cascade;`);
    this.addSql(`drop table if exists "runners" cascade;`);
    this.addSql(`drop table if exists "runner_jobs" cascade;`);

    this.addSql(`drop index "runs_lease_idx";`);
    this.addSql(`drop index "runs_pending_idx";`);
    this.addSql(
      `alter table "runs" drop column "labels", drop column "lease_lost_policy", drop column "last_command_seq";`,
    );
  }
}
