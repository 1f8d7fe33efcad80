// What every real-browser script shares: the page's server and Debian's chromium (flags from
// DESIGN.md §6), each with a fresh profile so the weights cache starts empty.
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
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

// `webgpu`: give the page Chromium's software WebGPU adapter (SwiftShader; ../shared/WEBGPU.md).
// Without it the page has no adapter and runs on the CPU.
export function launchBrowser({ webgpu = false } = {}) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'medsee-chromium-'));
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    acceptDownloads: true,
    args: ['--no-sandbox', '--disable-gpu-sandbox', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-quic', ...(webgpu ? ['--enable-unsafe-webgpu'] : [])],
  });
}

// Mask decoded from a PNG by the page itself, so both masks go through the same decoder.
export async function pngMask(page, path) {
  const bytes = Array.from(readFileSync(path));
  return page.evaluate(async (data) => {
    const bitmap = await createImageBitmap(new Blob([new Uint8Array(data)], { type: 'image/png' }));
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext('2d');
    ctx.drawImage(bitmap, 0, 0);
    const px = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
    const mask = new Array(bitmap.width * bitmap.height);
    for (let i = 0; i < mask.length; i++) mask[i] = px[i * 4] > 127 ? 1 : 0;
    return mask;
  }, bytes);
}

export function iou(a, b) {
  let inter = 0, union = 0;
  for (let i = 0; i < a.length; i++) { inter += a[i] & b[i]; union += a[i] | b[i]; }
  return union === 0 ? 1 : inter / union;
}
