import { Migration } from "@mikro-orm/migrations";

export class Migration20261203213639_queue extends Migration {
  override name = "Migration20261203213639_queue";

  override up(): void | Promise<void> {
    this.addSql(
      `create table "queue_lanes" ("tenant_id" text not null, "queue" text not null, "lane" text not null, "held_task_id" uuid null, primary key ("tenant_id", "queue", "lane"));`,
    );

    this.addSql(
      `create table "queue_read_cursors" ("tenant_id" text not null, "task_id" uuid not null, "reader_id" text not null, "version" bigint not null, "read_at" timestamptz(3) not null default current_timestamp(3), primary key ("tenant_id", "task_id", "reader_id"));`,
    );

    this.addSql(
      `create table "queue_schedules" ("tenant_id" text not null, "id" text not null, "queue" text not null, "cron" text not null, "time_zone" text not null default '', "template" jsonb not null, "next_run_at" timestamptz(3) not null, "last_run_at" timestamptz(3) null, "created_at" timestamptz(3) not null default current_timestamp(3), primary key ("tenant_id", "id"));`,
    );
    this.addSql(`create index "queue_schedules_due_idx" on "queue_schedules" ("next_run_at");`);

    this.addSql(
      `create table "queue_tasks" ("tenant_id" text not null, "id" uuid not null, "queue" text not null, "lane" text not null default '', "priority" int not null default 0, "payload" jsonb not null, "idempotency_key" text null, "payload_hash" text null, "state" text not null, "serial" boolean not null default false, "run_at" timestamptz(3) not null default current_timestamp(3), "attempts" int not null default 0, "max_attempts" int not null, "backoff_initial_ms" int not null, "backoff_max_ms" int not null, "timeout_ms" int null, "worker_id" text null, "lease_expires_at" timestamptz(3) null, "attempt_deadline" timestamptz(3) null, "last_error" text null, "result" jsonb null, "latest_attempt" jsonb null, "session_path" text null, "cancel_reason" text null, "schedule_id" text null, "version" bigint not null, "created_at" timestamptz(3) not null default current_timestamp(3), "updated_at" timestamptz(3) not null default current_timestamp(3), "finished_at" timestamptz(3) null, primary key ("tenant_id", "id"));`,
    );
    this.addSql(
      `create unique index queue_tasks_idempotency_unique on queue_tasks (tenant_id, queue, idempotency_key) where idempotency_key is not null;`,
    );
    this.addSql(`create index "queue_tasks_version_idx" on "queue_tasks" ("tenant_id", "version");`);
    this.addSql(
      `create index queue_tasks_claim_idx on queue_tasks (tenant_id, queue, priority desc, run_at, id) where state = 'pending';`,
    );
    this.addSql(
      `create index queue_tasks_lease_idx on queue_tasks (lease_expires_at) where state in ('claimed','running');`,
    );
    this.addSql(
      `create index queue_tasks_dead_idx on queue_tasks (tenant_id, queue, finished_at, id) where state = 'dead';`,
    );

    this.addSql(
      `alter table "queue_tasks" add constraint "queue_tasks_state_check" check (state in ('pending','claimed','running','completed','failed','blocked','cancelled','dead'));`,
    );
  }

  override down(): void | Promise<void> {
    this.addSql(`drop table if exists "queue_lanes" cascade;`);
    this.addSql(`drop table if exists "queue_read_cursors" cascade;`);
    this.addSql(`drop table if exists "queue_schedules" cascade;`);
    this.addSql(`drop table if exists "queue_tasks" cascade;`);
  }
}
