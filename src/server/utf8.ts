import { configureTextEncoding, getTextEncoding } from "@bufbuild/protobuf/wire";

/** What an invalid UTF-8 sequence in a binary request's string becomes: a lone surrogate. */
const INVALID_UTF8_MARK = "\uDFFF";

let installed = false;

/**
 * A string field of a binary request with invalid UTF-8 makes protobuf-es throw while Connect
 * parses the message, before any interceptor runs, and Connect answers every parse failure with
 * INTERNAL: a client is told the server failed when its own request was wrong. Instead, such a
 * string decodes leniently with a lone surrogate appended, which is not well-formed Unicode, so
 * the request guard (request-guard.ts) refuses it with INVALID_ARGUMENT and the field's name,
 * exactly as it refuses a lone surrogate that a JSON client sent ("\udfff"). Valid strings decode
 * as before, strictly; nothing with the mark can reach a store.
 *
 * configureTextEncoding is marked deprecated for runtimes that lack TextDecoder, but it is the one
 * place the decoding of this process's copy of protobuf-es can be set.
 */
export function refuseInvalidUtf8AsBadInput(): void {
  if (installed) return;
  installed = true;
  const base = getTextEncoding();
  const strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  const lenient = new TextDecoder("utf-8", { ignoreBOM: true });
  configureTextEncoding({
    ...base,
    decodeUtf8(bytes: Uint8Array, checked?: boolean) {
      if (!checked) return lenient.decode(bytes);
      try {
        return strict.decode(bytes);
      } catch {
        return `${lenient.decode(bytes)}${INVALID_UTF8_MARK}`;
      }
    },
  });
}
