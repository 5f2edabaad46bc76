/**
 * Session hand-off blobs cross a trust boundary (router -> GPU node), so the router signs each
 * blob it forwards with HMAC-SHA256 under a secret it shares with the nodes, and a node that
 * takes hand-offs restores only blobs signed by one of its keys. Nodes accept two keys (the
 * current and the previous) so the secret rotates without downtime: add the new key to every
 * node, switch the router to it, then drop the old one.
 */
import { fromBase64, toBase64 } from '../util/base64.js';

/** The request field that carries the blob's signature (base64), beside kle_session. */
export const HANDOFF_MAC_FIELD = 'kle_session_mac';

const enc = new TextEncoder();

function hmacKey(secret: string, use: 'sign' | 'verify'): Promise<CryptoKey> {
  return crypto.subtle.importKey('raw', enc.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, [use]);
}

/** The blob's signature under `secret`, base64. */
export async function signHandoff(secret: string, blob: Uint8Array<ArrayBuffer>): Promise<string> {
  return toBase64(new Uint8Array(await crypto.subtle.sign('HMAC', await hmacKey(secret, 'sign'), blob)));
}

/** Whether `mac` is the blob's signature under one of `secrets` (compared in constant time by WebCrypto). */
export async function verifyHandoff(secrets: readonly string[], blob: Uint8Array<ArrayBuffer>, mac: string): Promise<boolean> {
  let sig: Uint8Array<ArrayBuffer>;
  try {
    sig = fromBase64(mac);
  } catch {
    return false;
  }
  for (const s of secrets) if (await crypto.subtle.verify('HMAC', await hmacKey(s, 'verify'), sig, blob)) return true;
  return false;
}

/** Shortest hand-off secret taken: a guessable key would let anyone forge states. */
export const MIN_HANDOFF_KEY_CHARS = 16;

/** Hand-off secrets from a comma-separated list (KLE_HANDOFF_KEYS: the current key first). */
export function handoffKeysFrom(list: string | undefined): string[] {
  const keys = (list ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  for (const k of keys) if (k.length < MIN_HANDOFF_KEY_CHARS) throw new Error(`a hand-off key must have at least ${MIN_HANDOFF_KEY_CHARS} characters`);
  if (keys.length > 2) throw new Error('at most two hand-off keys (the current and the previous)');
  return keys;
}
