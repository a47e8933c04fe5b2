import { create, type DescMessage, type Message } from "@bufbuild/protobuf";
import { pathToString } from "@bufbuild/protobuf/reflect";
import { createValidator, type Violation } from "@bufbuild/protovalidate";
import { Code, ConnectError, type Interceptor, type StreamResponse } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import type { Logger } from "../core/logger.ts";
import { tenantKey } from "./auth.ts";
import { connectError, ERROR_DOMAIN, toConnectError } from "./errors.ts";
import { type GuardViolation, guardMessage } from "./request-guard.ts";

const compiledPatterns = new Map<string, RegExp>();

/**
 * `string.pattern` rules matched with V8's own RegExp instead of protovalidate's RE2 written in
 * JavaScript, which took ~4 % of the server's CPU when every event of a 100-event append checked
 * its type against `^[a-z][a-z0-9_.:-]{0,63}$` (bench/write-path.ts profile). RE2 exists to bound
 * the time of patterns an attacker could write; ours all come from the proto, none from input,
 * and each is an anchored run of character classes that V8 matches in linear time. A pattern added
 * to the proto must keep that property.
 */
function nativeRegexMatch(pattern: string, against: string): boolean {
  let regex = compiledPatterns.get(pattern);
  if (regex === undefined) {
    regex = new RegExp(pattern, "u");
    compiledPatterns.set(pattern, regex);
  }
  return regex.test(against);
}

interface FieldViolation {
  field: string;
  description: string;
  reason: string;
}

/**
 * Validates every request message before any handler runs: first against the protovalidate rules
 * written in the proto, then against what the database can hold (server/request-guard.ts: no NUL,
 * well-formed strings, finite JSON numbers, timestamps in range). A violation answers
 * INVALID_ARGUMENT with reason INVALID_ARGUMENT and a google.rpc.BadRequest listing each field and
 * rule, so any client can show the exact problem, and nothing is stored.
 */
export function validationInterceptor(): Interceptor {
  const validator = createValidator({ regexMatch: nativeRegexMatch });
  const check = (schema: DescMessage, message: Message) => {
    const result = validator.validate(schema, message);
    if (result.kind === "invalid") throw invalidArgumentError(result.error.violations.map(fromProtovalidate));
    if (result.kind === "error") throw result.error;
    const guarded = guardMessage(schema, message);
    if (guarded.length > 0) throw invalidArgumentError(guarded.map(fromGuard));
  };
  return (next) => async (req) => {
    if (!req.stream) {
      check(req.method.input, req.message);
      return next(req);
    }
    // Server-streaming calls arrive as a stream of one request: check each message as it is read.
    const input = req.method.input;
    const messages = req.message;
    return next({
      ...req,
      message: (async function* () {
        for await (const message of messages) {
          check(input, message);
          yield message;
        }
      })(),
    });
  };
}

const fromProtovalidate = (v: Violation): FieldViolation => ({
  field: pathToString(v.field),
  description: v.message,
  reason: v.ruleId,
});

const fromGuard = (v: GuardViolation): FieldViolation => ({
  field: v.field,
  description: v.message,
  reason: v.rule,
});

function invalidArgumentError(fields: readonly FieldViolation[]): ConnectError {
  return new ConnectError(
    fields.map((v) => `${v.field}: ${v.description}`).join("; "),
    Code.InvalidArgument,
    undefined,
    [
      {
        desc: ErrorInfoSchema,
        value: create(ErrorInfoSchema, {
          reason: "INVALID_ARGUMENT",
          domain: ERROR_DOMAIN,
          metadata: { field: fields[0]?.field ?? "", rule: fields[0]?.reason ?? "" },
        }),
      },
      { desc: BadRequestSchema, value: create(BadRequestSchema, { fieldViolations: [...fields] }) },
    ],
  );
}

/**
 * Maps every error to its wire form (server/errors.ts) and logs each call at debug level once it
 * ends, with the procedure, code, tenant and duration. Streaming responses are wrapped so that
 * errors thrown mid-stream are mapped too.
 */
export function observeInterceptor(logger: Logger): Interceptor {
  return (next) => async (req) => {
    const started = performance.now();
    const procedure = `${req.service.typeName}/${req.method.name}`;
    const done = (err: unknown) => {
      const mapped = err === undefined ? undefined : toConnectError(err, logger, procedure);
      const code = mapped === undefined ? "ok" : Code[mapped.code];
      const entry = {
        procedure,
        tenant: req.contextValues.get(tenantKey),
        code,
        ms: Math.round((performance.now() - started) * 10) / 10,
      };
      // INTERNAL and a lost database were logged with their cause by toConnectError; the rest
      // (the caller's mistakes, cancellations, streams ended by a shutdown) are routine.
      logger.debug(entry, mapped === undefined ? "call" : mapped.message);
      return mapped;
    };
    let res: Awaited<ReturnType<typeof next>>;
    try {
      res = await next(req);
    } catch (err) {
      throw done(err);
    }
    if (!res.stream) {
      done(undefined);
      return res;
    }
    return { ...res, message: mapStreamErrors(res, done) } satisfies StreamResponse;
  };
}

async function* mapStreamErrors<O>(
  res: { message: AsyncIterable<O> },
  done: (err: unknown) => ConnectError | undefined,
): AsyncIterable<O> {
  try {
    yield* res.message;
  } catch (err) {
    throw done(err);
  }
  done(undefined);
}

/**
 * Caps the streaming calls one tenant holds open on this replica, so that one tenant's runaway
 * client cannot take every file descriptor and all the memory of a shared server. Past the cap a
 * new stream is RESOURCE_EXHAUSTED (TOO_MANY_STREAMS); the ones already open are untouched.
 * Health and reflection have no tenant and are not counted.
 */
export function streamLimitInterceptor(maxPerTenant: number): Interceptor {
  const open = new Map<string, number>();
  return (next) => async (req) => {
    const tenant = req.contextValues.get(tenantKey);
    if (req.method.methodKind !== "server_streaming" || tenant === undefined) return next(req);
    const count = open.get(tenant) ?? 0;
    if (count >= maxPerTenant) {
      throw connectError(
        Code.ResourceExhausted,
        "TOO_MANY_STREAMS",
        `this tenant already has ${count} open streams on this server, the most it may hold; close some first`,
        { limit: String(maxPerTenant) },
      );
    }
    open.set(tenant, count + 1);
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      const left = (open.get(tenant) ?? 1) - 1;
      if (left > 0) open.set(tenant, left);
      else open.delete(tenant);
    };
    let res: Awaited<ReturnType<typeof next>>;
    try {
      res = await next(req);
    } catch (err) {
      release();
      throw err;
    }
    if (!res.stream) {
      release();
      return res;
    }
    return { ...res, message: releaseWhenDone(res.message, release) } satisfies StreamResponse;
  };
}

async function* releaseWhenDone<O>(messages: AsyncIterable<O>, release: () => void): AsyncIterable<O> {
  try {
    yield* messages;
  } finally {
    release();
  }
}
