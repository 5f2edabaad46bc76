/** GPT-2's byte -> printable-character table, as byte-level BPE vocabularies spell bytes. */
export function byteToUnicode(): string[] {
  const keep = new Set<number>();
  for (let b = 33; b <= 126; b++) keep.add(b);
  for (let b = 161; b <= 172; b++) keep.add(b);
  for (let b = 174; b <= 255; b++) keep.add(b);
  const out: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCodePoint(keep.has(b) ? b : 256 + extra++);
  return out;
}
