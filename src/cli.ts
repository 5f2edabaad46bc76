#!/usr/bin/env node
// kimi-edge: the command line.
//   kimi-edge generate [PROMPT] [options]   generate with a model (default: the embedded one)
//   kimi-edge convert HF_DIR OUT.gguf       HF checkpoint -> GGUF (llama.cpp's Kimi-Linear layout)
//   kimi-edge eval --tokens F | --text F    held-out loss and perplexity
//   kimi-edge selftest [DIR]                verify every kernel build against the KDA vectors
//   kimi-edge serve [options]               the OpenAI-compatible server on Node
import { join } from 'node:path';
import { convert } from './cli/convert.js';
import { evaluate } from './cli/eval.js';
import { generate } from './cli/generate.js';
import { selftest } from './cli/selftest.js';
import { serveCmd } from './cli/serve.js';
import { packageRoot } from './engine/node-kernels.js';

const USAGE = `usage:
  kimi-edge serve [--port 8787] [--host H] [--model DIR|FILE.gguf] [--backend wasm|native]
                  [--model-id ID] [--api-key KEY]... [--max-concurrent N] [--max-prompt-tokens N]
  kimi-edge generate [PROMPT] [--model DIR] [--backend wasm|wasm-scalar|native] [--raw]
                     [--max-tokens N] [--temperature T] [--top-p P] [--top-k K]
                     [--repetition-penalty R] [--seed S] [--stop STR]...
  kimi-edge convert HF_DIR OUT.gguf [--type f32|bf16|q8_0|q4_0]
  kimi-edge eval (--tokens FILE.u16 | --text FILE) [--model DIR|FILE.gguf] [--backend B]
                 [--ctx 256] [--max-windows N] [--json OUT]
  kimi-edge selftest [DIR]`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === 'generate') return generate(rest);
  if (cmd === 'convert') return convert(rest);
  if (cmd === 'eval') return evaluate(rest);
  if (cmd === 'serve') return serveCmd(rest);
  if (cmd === 'selftest' && rest.length <= 1) return selftest(rest[0] ?? join(packageRoot(), 'test', 'fixtures'));
  console.error(USAGE);
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(`kimi-edge: ${(e as Error).message}`);
    process.exit(1);
  },
);
