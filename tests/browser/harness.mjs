// What every real-browser script shares: the page's server and Debian's chromium (flags from
// DESIGN.md §6), each with a fresh profile so the weights cache starts empty.
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export function startServer() {
  const port = 18000 + Math.floor(Math.random() * 1000);
  const server = spawn('/usr/bin/python3', [join(root, 'scripts/serve.py'), '--port', String(port), '--quiet'], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((ok, fail) => {
    server.stdout.on('data', (chunk) => { if (String(chunk).includes('http://127.0.0.1')) ok({ server, url: `http://127.0.0.1:${port}/` }); });
    server.on('exit', (code) => fail(new Error(`server exited with ${code}`)));
  });
}

export function launchBrowser() {
  const userDataDir = mkdtempSync(join(tmpdir(), 'medsee-chromium-'));
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    acceptDownloads: true,
    args: ['--no-sandbox', '--disable-gpu-sandbox', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-quic'],
  });
}
