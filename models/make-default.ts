// npm run make:default — writes models/default/: the embedded default model (config.json and
// model.safetensors with seeded random BF16 weights in KimiLinearForCausalLM's names and shapes,
// about 2.5 MB; a byte-level BPE tokenizer of 512 tokens trained on models/corpus.txt, with Kimi's
// special tokens and chat format). Reproducible: the same bytes on every run (checked by a test).
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';
import { syntheticWeights, TINY_CONFIG } from '../src/weights/synthetic.js';
import { byteToUnicode, trainBpe } from './bpe-train.js';
import { addedToken, byteLevelBpeJson, GPT2_PRE_TOKENIZER } from '../src/tokenizer/byte-level.js';

/** The seed and options the committed default model was made with. */
export const DEFAULT_MODEL_SEED = 20261124;

/** Special tokens after the 256 byte tokens, Kimi's names; eos is <|im_end|> as in Kimi's config. */
const SPECIALS = ['[BOS]', '<|im_end|>', '[PAD]', '<|im_user|>', '<|im_assistant|>', '<|im_system|>', '<|im_middle|>', '[EOS]'];

/** Kimi's chat format: <|im_ROLE|>ROLE<|im_middle|>CONTENT<|im_end|>, assistant turn opened last. */
const CHAT_TEMPLATE =
  "{%- for message in messages -%}" +
  "{%- if message['role'] == 'system' -%}<|im_system|>system<|im_middle|>" +
  "{%- elif message['role'] == 'user' -%}<|im_user|>user<|im_middle|>" +
  "{%- else -%}<|im_assistant|>assistant<|im_middle|>{%- endif -%}" +
  "{{ message['content'] }}<|im_end|>" +
  "{%- endfor -%}" +
  "{%- if add_generation_prompt -%}<|im_assistant|>assistant<|im_middle|>{%- endif -%}";

function tokenizerFiles(vocabSize: number): { tokenizer: string; tokenizerConfig: string } {
  const corpus = readFileSync(new URL('./corpus.txt', import.meta.url), 'utf8');
  const { merges, tokens } = trainBpe(corpus, vocabSize - 256 - SPECIALS.length);
  const vocab: Record<string, number> = {};
  byteToUnicode().forEach((ch, i) => (vocab[ch] = i));
  tokens.forEach((t, i) => (vocab[t] = 256 + SPECIALS.length + i));
  const added = SPECIALS.map((content, i) => addedToken(256 + i, content, true));
  const tokenizer = byteLevelBpeJson({ vocab, merges: merges.map(([a, b]) => `${a} ${b}`), added, preTokenizer: GPT2_PRE_TOKENIZER, ignoreMerges: false });
  const tokenizerConfig = {
    bos_token: '[BOS]',
    eos_token: '<|im_end|>',
    pad_token: '[PAD]',
    model_max_length: TINY_CONFIG.model_max_length,
    clean_up_tokenization_spaces: false,
    chat_template: CHAT_TEMPLATE,
    added_tokens_decoder: Object.fromEntries(added.map((t) => [String(t.id), { content: t.content, special: true, normalized: false, lstrip: false, rstrip: false, single_word: false }])),
  };
  return { tokenizer: JSON.stringify(tokenizer) + '\n', tokenizerConfig: JSON.stringify(tokenizerConfig, null, 2) + '\n' };
}

export function defaultModelFiles(): { config: string; weights: Uint8Array; tokenizer: string; tokenizerConfig: string } {
  return {
    config: JSON.stringify(TINY_CONFIG, null, 2) + '\n',
    weights: syntheticWeights(TINY_CONFIG, DEFAULT_MODEL_SEED, { dtype: 'BF16', zeroRouterBias: true }),
    ...tokenizerFiles(TINY_CONFIG.vocab_size),
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const dir = join(dirname(fileURLToPath(import.meta.url)), 'default');
  mkdirSync(dir, { recursive: true });
  const { config, weights, tokenizer, tokenizerConfig } = defaultModelFiles();
  writeFileSync(join(dir, 'config.json'), config);
  writeFileSync(join(dir, 'model.safetensors'), weights);
  writeFileSync(join(dir, 'tokenizer.json'), tokenizer);
  writeFileSync(join(dir, 'tokenizer_config.json'), tokenizerConfig);
  console.log(`wrote ${dir}: config.json, model.safetensors (${weights.length} bytes), tokenizer.json, tokenizer_config.json`);
}
