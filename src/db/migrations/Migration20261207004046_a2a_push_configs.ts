import { Migration } from "@mikro-orm/migrations";

export class Migration20261207004046_a2a_push_configs extends Migration {
  override name = "Migration20261207004046_a2a_push_configs";

  override up(): void | Promise<void> {
    this.addSql(
      `create table "a2a_push_configs" ("tenant_id" text not null, "task_id" text not null, "id" text not null, "url" text not null, "token" text null, "scheme" text null, "credentials" text null, "key_id" text not null default '', "created_at" timestamptz(3) not null default current_timestamp(3), primary key ("tenant_id", "task_id", "id"));`,
    );
  }

  override down(): void | Promise<void> {
    this.addSql(`drop table if exists "a2a_push_configs" cascade;`);
  }
}
