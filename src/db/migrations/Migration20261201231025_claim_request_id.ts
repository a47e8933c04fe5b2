import { Migration } from "@mikro-orm/migrations";

export class Migration20261201231025_claim_request_id extends Migration {
  override name = "Migration20261201231025_claim_request_id";

  override up(): void | Promise<void> {
    this.addSql(`alter table "runs" add "claim_request_id" text null;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "runs" drop column "claim_request_id";`);
  }
}
