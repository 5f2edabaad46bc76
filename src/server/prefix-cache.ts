/**
 * Saved session states keyed by the prompt tokens they hold, so a conversation's next turn
 * resumes after its shared prefix instead of prefilling it again, and so a conversation that
 * outgrows the edge can move to a GPU node with its state. Least recently used entries go first
 * once the byte budget is spent.
 *
 * The keys live in a radix tree (edges labelled with runs of tokens): finding the longest saved
 * prefix of a prompt walks one path, comparing each of the prompt's tokens at most once,
 * instead of comparing the prompt with every saved state.
 */

interface Entry {
  readonly node: Node;
  readonly length: number;
  readonly blob: Uint8Array;
}

interface Node {
  /** the tokens from the parent to here */
  edge: number[];
  parent: Node | null;
  /** by the first token of the child's edge */
  children: Map<number, Node>;
  entry: Entry | null;
}

const newNode = (edge: number[], parent: Node | null): Node => ({ edge, parent, children: new Map(), entry: null });

export class PrefixCache {
  private readonly root: Node = newNode([], null);
  /** every entry, least recently used first (a Map keeps insertion order) */
  private readonly lru = new Map<Entry, true>();
  private bytes = 0;

  constructor(readonly maxBytes = 64 << 20) {}

  put(tokens: readonly number[], blob: Uint8Array): void {
    if (!tokens.length || blob.length > this.maxBytes) return; // no prefix of anything to resume
    const node = this.nodeFor(tokens);
    if (node.entry) this.remove(node.entry, false);
    const e: Entry = { node, length: tokens.length, blob };
    node.entry = e;
    this.lru.set(e, true);
    this.bytes += blob.length;
    while (this.bytes > this.maxBytes) this.remove(this.lru.keys().next().value as Entry, true);
  }

  /** The saved state whose tokens are the longest prefix of `tokens` (at least one token). */
  longestPrefix(tokens: readonly number[]): { tokens: number; blob: Uint8Array } | null {
    let node = this.root, i = 0, best: Entry | null = null;
    for (;;) {
      const child = node.children.get(tokens[i]!);
      if (!child || i + child.edge.length > tokens.length) break;
      let k = 0;
      while (k < child.edge.length && child.edge[k] === tokens[i + k]) k++;
      if (k < child.edge.length) break;
      node = child;
      i += k;
      if (node.entry) best = node.entry;
    }
    if (!best) return null;
    // most recently used last
    this.lru.delete(best);
    this.lru.set(best, true);
    return { tokens: best.length, blob: best.blob };
  }

  get size(): number {
    return this.lru.size;
  }

  /** The node whose path spells `tokens`, made (splitting an edge if need be) when missing. */
  private nodeFor(tokens: readonly number[]): Node {
    let node = this.root, i = 0;
    while (i < tokens.length) {
      const child = node.children.get(tokens[i]!);
      if (!child) {
        const leaf = newNode(tokens.slice(i), node);
        node.children.set(tokens[i]!, leaf);
        return leaf;
      }
      let k = 0;
      while (k < child.edge.length && i + k < tokens.length && child.edge[k] === tokens[i + k]) k++;
      if (k < child.edge.length) {
        // the path leaves this edge part way: a node where it does
        const mid = newNode(child.edge.slice(0, k), node);
        node.children.set(tokens[i]!, mid);
        child.edge = child.edge.slice(k);
        child.parent = mid;
        mid.children.set(child.edge[0]!, child);
        node = mid;
      } else node = child;
      i += k;
    }
    return node;
  }

  private remove(e: Entry, evicted: boolean): void {
    this.lru.delete(e);
    this.bytes -= e.blob.length;
    if (!evicted) return; // the node is about to hold the entry that replaces it
    let node: Node | null = e.node;
    node.entry = null;
    // drop the branches that now lead to no entry, then merge a lone child into its parent
    while (node && node !== this.root && !node.entry && node.children.size === 0) {
      const parent: Node = node.parent!;
      parent.children.delete(node.edge[0]!);
      node = parent;
    }
    if (node && node !== this.root && !node.entry && node.children.size === 1) {
      const only = [...node.children.values()][0]!;
      only.edge = [...node.edge, ...only.edge];
      only.parent = node.parent;
      node.parent!.children.set(only.edge[0]!, only);
    }
  }
}
