import type { PGlite } from "@electric-sql/pglite";
import { CompiledQuery, type DatabaseConnection, type Driver } from "kysely";
import { PGliteDialect } from "kysely-pglite-dialect";

type SavepointCompiler = (node: never) => CompiledQuery;

/**
 * PGlite dialect whose driver also speaks savepoints. MikroORM nests `em.transactional` calls with
 * savepoints, and the upstream driver lacks the three methods Kysely calls for them.
 */
export class SavepointPGliteDialect extends PGliteDialect {
  constructor(pglite: PGlite) {
    super(pglite);
  }

  override createDriver(): Driver {
    const driver = super.createDriver();
    const run = (connection: DatabaseConnection, sql: string) =>
      connection.executeQuery(CompiledQuery.raw(sql)).then(() => undefined);
    return Object.assign(driver, {
      savepoint: (connection: DatabaseConnection, name: string, _compile: SavepointCompiler) =>
        run(connection, `savepoint ${quoteIdent(name)}`),
      rollbackToSavepoint: (connection: DatabaseConnection, name: string, _compile: SavepointCompiler) =>
        run(connection, `rollback to savepoint ${quoteIdent(name)}`),
      releaseSavepoint: (connection: DatabaseConnection, name: string, _compile: SavepointCompiler) =>
        run(connection, `release savepoint ${quoteIdent(name)}`),
    });
  }
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}
