import { type DescField, type DescMessage, ScalarType } from "@bufbuild/protobuf";

/**
 * Checks every request message for values that protobuf accepts but the database cannot hold,
 * before any handler runs, so that no service has to remember them:
 *
 * - strings with NUL (U+0000): PostgreSQL text and jsonb cannot store it;
 * - strings that are not well-formed UTF-16 (a lone surrogate, as JSON "\udfff" decodes): jsonb
 *   refuses them, and UTF-8 cannot encode them faithfully;
 * - numbers in JSON values (google.protobuf.Value) that are NaN or infinite, which binary protobuf
 *   carries and JSON cannot;
 * - google.protobuf.Timestamp outside 0001-01-01 .. 9999-12-31 and Duration outside ±10,000
 *   years (the ranges the protobuf spec defines, and that JS dates and PostgreSQL both hold), or
 *   with nanos out of range.
 *
 * The walk covers nested messages, repeated and map fields (keys too), oneofs, and the JSON inside
 * Struct / Value / ListValue fields (keys and string values), at any depth.
 */
export interface GuardViolation {
  /** Field path as protovalidate writes it: run.metadata["key"], events[0].payload.text. */
  field: string;
  /** Rule id, e.g. "string.no_nul". */
  rule: string;
  message: string;
}

const MIN_TIMESTAMP_SECONDS = -62_135_596_800n; // 0001-01-01T00:00:00Z
const MAX_TIMESTAMP_SECONDS = 253_402_300_799n; // 9999-12-31T23:59:59Z
const MAX_DURATION_SECONDS = 315_576_000_000n; // 10,000 years
const MAX_NANOS = 999_999_999;
/** Deeper JSON than this is refused rather than walked (and could not be stored usefully). */
const MAX_JSON_DEPTH = 64;

export function guardMessage(desc: DescMessage, message: unknown): GuardViolation[] {
  const violations: GuardViolation[] = [];
  walkMessage(desc, message, "", violations);
  return violations;
}

const join = (path: string, name: string) => (path === "" ? name : `${path}.${name}`);

function checkString(value: string, path: string, violations: GuardViolation[]): void {
  if (value.includes("\u0000")) {
    violations.push({
      field: path,
      rule: "string.no_nul",
      message: "must not contain the NUL character (U+0000)",
    });
  } else if (!value.isWellFormed()) {
    violations.push({
      field: path,
      rule: "string.well_formed",
      message: "must be well-formed Unicode (valid UTF-8, no lone surrogate)",
    });
  }
}

function walkMessage(desc: DescMessage, message: unknown, path: string, violations: GuardViolation[]): void {
  if (message === undefined || message === null) return;
  switch (desc.typeName) {
    case "google.protobuf.Struct":
    case "google.protobuf.Value":
    case "google.protobuf.ListValue":
      // protobuf-es holds these as plain JSON values in message fields.
      walkJson(message, path, violations, 0);
      return;
    case "google.protobuf.Timestamp":
      checkSecondsAndNanos(
        message,
        path,
        violations,
        "timestamp",
        MIN_TIMESTAMP_SECONDS,
        MAX_TIMESTAMP_SECONDS,
      );
      return;
    case "google.protobuf.Duration":
      checkSecondsAndNanos(
        message,
        path,
        violations,
        "duration",
        -MAX_DURATION_SECONDS,
        MAX_DURATION_SECONDS,
      );
      return;
    case "google.protobuf.StringValue":
      if (typeof message === "string") checkString(message, path, violations);
      return;
  }
  const fields = message as Record<string, unknown>;
  for (const field of desc.fields) {
    const value = field.oneof === undefined ? fields[field.localName] : oneofValue(fields, field);
    if (value === undefined) continue;
    walkField(field, value, join(path, field.name), violations);
  }
}

function oneofValue(fields: Record<string, unknown>, field: DescField): unknown {
  const group = fields[field.oneof?.localName ?? ""] as { case?: string; value?: unknown } | undefined;
  return group?.case === field.localName ? group.value : undefined;
}

function walkField(field: DescField, value: unknown, path: string, violations: GuardViolation[]): void {
  switch (field.fieldKind) {
    case "scalar":
      if (field.scalar === ScalarType.STRING && typeof value === "string")
        checkString(value, path, violations);
      return;
    case "enum":
      return;
    case "message":
      walkMessage(field.message, value, path, violations);
      return;
    case "list":
      (value as unknown[]).forEach((item, i) => {
        const itemPath = `${path}[${i}]`;
        if (field.listKind === "message") walkMessage(field.message, item, itemPath, violations);
        else if (
          field.listKind === "scalar" &&
          field.scalar === ScalarType.STRING &&
          typeof item === "string"
        ) {
          checkString(item, itemPath, violations);
        }
      });
      return;
    case "map":
      for (const [key, item] of Object.entries(value as Record<string, unknown>)) {
        const itemPath = `${path}[${JSON.stringify(key)}]`;
        if (field.mapKey === ScalarType.STRING) checkString(key, itemPath, violations);
        if (field.mapKind === "message") walkMessage(field.message, item, itemPath, violations);
        else if (
          field.mapKind === "scalar" &&
          field.scalar === ScalarType.STRING &&
          typeof item === "string"
        ) {
          checkString(item, itemPath, violations);
        }
      }
      return;
  }
}

function walkJson(value: unknown, path: string, violations: GuardViolation[], depth: number): void {
  if (depth > MAX_JSON_DEPTH) {
    violations.push({
      field: path,
      rule: "json.max_depth",
      message: `JSON nests deeper than ${MAX_JSON_DEPTH} levels`,
    });
    return;
  }
  if (typeof value === "string") {
    checkString(value, path, violations);
  } else if (typeof value === "number") {
    if (!Number.isFinite(value)) {
      violations.push({
        field: path,
        rule: "number.finite",
        message: "must be a finite number (not NaN or infinity)",
      });
    }
  } else if (Array.isArray(value)) {
    for (const [i, item] of value.entries()) walkJson(item, `${path}[${i}]`, violations, depth + 1);
  } else if (value !== null && typeof value === "object") {
    for (const [key, item] of Object.entries(value)) {
      const itemPath = `${path}[${JSON.stringify(key)}]`;
      checkString(key, itemPath, violations);
      walkJson(item, itemPath, violations, depth + 1);
    }
  }
}

function checkSecondsAndNanos(
  message: unknown,
  path: string,
  violations: GuardViolation[],
  kind: "timestamp" | "duration",
  minSeconds: bigint,
  maxSeconds: bigint,
): void {
  const { seconds, nanos } = message as { seconds: bigint; nanos: number };
  const nanosOk =
    kind === "timestamp"
      ? nanos >= 0 && nanos <= MAX_NANOS
      : Math.abs(nanos) <= MAX_NANOS && (seconds === 0n || nanos === 0 || seconds > 0n === nanos > 0);
  if (seconds < minSeconds || seconds > maxSeconds || !nanosOk) {
    violations.push({
      field: path,
      rule: `${kind}.range`,
      message:
        kind === "timestamp"
          ? "must lie between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999999Z"
          : "must lie within ±10,000 years, with nanos of the same sign as seconds",
    });
  }
}
