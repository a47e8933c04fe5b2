// Generates the next migration from the difference between the entities and the committed
// migrations: it replays them on a throwaway in-memory PGlite, then diffs. Usage:
//   npm run migration:create -- <name>
import { allEntities } from "../src/app.ts";
import { migrate, openDatabase } from "../src/db/database.ts";

const name = process.argv[2];
const db = await openDatabase({ kind: "pglite", dataDir: undefined }, { entities: allEntities() });
try {
  await migrate(db);
  const result = await db.orm.migrator.create(undefined, false, false, name);
  console.log(result.fileName ? `created ${result.fileName}` : "no schema changes");
  for (const line of result.diff.up) console.log(`  ${line}`);
} finally {
  await db.close();
}
