/**
 * Entry point. Node caches the compiled code of every module it loads from here on (in the OS temp
 * directory), which takes about a third off the start of a restarted server. Static imports would
 * run before this line, so everything else is loaded dynamically.
 */
import module from "node:module";

module.enableCompileCache?.();
await import("./cli.ts");
