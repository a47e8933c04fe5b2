import { Migration } from "@mikro-orm/migrations";

export class Migration20261201202151_watch_versions extends Migration {
  override name = "Migration20261201202151_watch_versions";

  override up(): void | Promise<void> {
    this.addSql(
      `create table "server_keys" ("name" text not null, "secret" bytea not null, "created_at" timestamptz(3) not null default current_timestamp(3), primary key ("name"));`,
    );

    this.addSql(
      `create table "watch_versions" ("tenant_id" text not null, "stream" text not null, "version" bigint not null default '0', primary key ("tenant_id", "stream"));`,
    );

    this.addSql(`alter table "runs" add "version" bigint not null default '0';`);
    this.addSql(`create index "runs_version_idx" on "runs" ("tenant_id", "version");`);

    // Runs created before versions existed join each tenant's stream in creation order, so that
    // WatchRuns from version 0 sends them too.
    this.addSql(`update "runs" r set "version" = v.n
      from (select "tenant_id", "id", row_number() over (partition by "tenant_id" order by "created_at", "id") as n from "runs") v
      where r."tenant_id" = v."tenant_id" and r."id" = v."id";`);
    this.addSql(`insert into "watch_versions" ("tenant_id", "stream", "version")
      select "tenant_id", 'runs', max("version") from "runs" group by "tenant_id";`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop table if exists "server_keys" cascade;`);
    this.addSql(`drop table if exists "watch_versions" cascade;`);

    this.addSql(`drop index "runs_version_idx";`);
    this.addSql(`alter table "runs" drop column "version";`);
  }
}
