/** A one-line progress bar on stderr (only when stderr is a terminal; a plain line otherwise). */
export class ProgressBar {
  private last = 0;
  private readonly tty = Boolean(process.stderr.isTTY);

  constructor(private readonly label: string) {}

  update(done: number, total: number | null): void {
    const now = performance.now();
    if (now - this.last < 80 && (total === null || done < total)) return;
    this.last = now;
    if (!this.tty) return;
    const mb = (n: number) => (n / 2 ** 20).toFixed(1);
    let line: string;
    if (total) {
      const f = Math.min(1, done / total);
      const w = 30;
      line = `${this.label} [${'#'.repeat(Math.round(f * w)).padEnd(w, '.')}] ${(f * 100).toFixed(0).padStart(3)}% ${mb(done)}/${mb(total)} MiB`;
    } else line = `${this.label} ${mb(done)} MiB`;
    process.stderr.write(`\r${line}`);
  }

  done(message: string): void {
    process.stderr.write(this.tty ? `\r\x1b[K${message}\n` : `${message}\n`);
  }
}
