import { Migration } from "@mikro-orm/migrations";

export class Migration20261207032219_a2a_push_deliveries extends Migration {
  override name = "Migration20261207032219_a2a_push_deliveries";

  override up(): void | Promise<void> {
    this.addSql(
      `create table "a2a_push_deliveries" ("tenant_id" text not null, "id" uuid not null, "task_id" text not null, "config_id" text not null, "seq" bigint not null, "state" text not null, "attempts" int not null default 0, "max_attempts" int not null, "last_error" text null, "last_status_code" int null, "next_attempt_at" timestamptz(3) null, "worker_id" text null, "lease_expires_at" timestamptz(3) null, "created_at" timestamptz(3) not null default current_timestamp(3), "delivered_at" timestamptz(3) null, "updated_at" timestamptz(3) not null default current_timestamp(3), primary key ("tenant_id", "id"));`,
    );
    this.addSql(
      `create index a2a_push_deliveries_due_idx on a2a_push_deliveries (next_attempt_at) where state = 'pending';`,
    );
    this.addSql(
      `create index a2a_push_deliveries_delivered_idx on a2a_push_deliveries (delivered_at) where state = 'delivered';`,
    );
    this.addSql(
      `create index a2a_push_deliveries_lease_idx on a2a_push_deliveries (lease_expires_at) where state = 'sending';`,
    );
    this.addSql(
      `alter table "a2a_push_deliveries" add constraint "a2a_push_deliveries_seq_unique" unique ("tenant_id", "task_id", "config_id", "seq");`,
    );
  }

  override down(): void | Promise<void> {
    this.addSql(`drop table if exists "a2a_push_deliveries" cascade;`);
  }
}
