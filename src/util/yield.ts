/** Lets the event loop run (I/O, timers, other requests) before going on. */
export function yieldToEventLoop(): Promise<void> {
  const si = (globalThis as { setImmediate?: (f: () => void) => void }).setImmediate;
  return new Promise((r) => (si ? si(r) : setTimeout(r, 0)));
}
