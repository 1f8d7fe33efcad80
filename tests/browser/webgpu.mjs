// Real-browser test of the WebGPU path, on Chromium's software adapter (SwiftShader, enabled by
// --enable-unsafe-webgpu; ../shared/WEBGPU.md):
// - the page starts on WebGPU, which means its device check matched the CPU reference;
// - a question gets the native CLI's mask (IoU ≥ 0.95) and the explanation streams the CLI's
//   words (stopped after its first pieces: on a software GPU each token is a slow model pass);
// - the GPU device is destroyed in the middle of the second question (test hook), and the page
//   answers it on the CPU, saying why;
// - two short pages: no adapter, and an uncaught GPU error while loading (the path an
//   out-of-memory error takes) — both end up on the CPU with the reason shown.
// Writes browser-bench-webgpu.json (load with the device check, encode, question → mask) to $ARTIFACTS.
//
// usage: node tests/browser/webgpu.mjs   (after scripts/build-web.sh and `medsee convert`)
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { root, startServer, launchBrowser, pngMask, iou } from './harness.mjs';

const artifacts = process.env.ARTIFACTS ?? join(root, 'target', 'browser-artifacts');
mkdirSync(artifacts, { recursive: true });
const medseeBin = process.env.MEDSEE_BIN;
assert.ok(medseeBin, 'set MEDSEE_BIN to the native medsee binary (scripts/test does)');

const image = join(root, 'tests/fixtures/litemedsam/dermoscopy_lesion/input.png');
const question = 'Where is the skin lesion the doctor worried about?';
// SwiftShader runs compute shaders on the CPU: minutes, not seconds.
const SLOW = 1_200_000;

async function ready(page) {
  await page.waitForSelector('body[data-model-ready="true"]', { timeout: SLOW });
  return { backend: await page.evaluate(() => document.body.dataset.backend), label: await page.textContent('#backend') };
}

async function ask(page, { stopAfterFirstPiece }) {
  await page.evaluate(() => { for (const k of ['answerReady', 'explained']) delete document.body.dataset[k]; });
  await page.fill('#question', question);
  await page.click('#ask-button');
  await page.waitForSelector('body[data-answer-ready="true"]', { timeout: SLOW });
  const mask = await page.evaluate(() => Array.from(window.medseeLastMask ?? []));
  if (stopAfterFirstPiece) {
    await page.waitForFunction(() => document.getElementById('explanation').textContent.trim().length > 0, null, { timeout: SLOW });
    await page.click('#stop-button');
  }
  await page.waitForSelector('body[data-explained="true"]', { timeout: SLOW });
  return { mask, explanation: (await page.textContent('#explanation')).trim() };
}

const cliMask = join(artifacts, 'cli-webgpu-mask.png');
const cliJson = join(artifacts, 'cli-webgpu.json');
execFileSync(medseeBin, ['ask', image, question, '--variant', 'quantized', '--out', cliMask, '--json', cliJson], { stdio: 'inherit' });
const cli = JSON.parse(readFileSync(cliJson, 'utf8'));

const { server, url } = await startServer();
const context = await launchBrowser({ webgpu: true });
let failures = 0;
try {
  const page = await context.newPage();
  page.on('console', (m) => console.log('[page]', m.text()));
  page.on('pageerror', (e) => { console.log('[page error]', e.message); failures++; });
  await page.goto(`${url}?test-fault=device-lost`);
  const gpu = await ready(page);
  console.log(`backend: ${gpu.label}`);
  assert.equal(gpu.backend, 'webgpu', `the page did not start on WebGPU: ${gpu.label} / ${await page.textContent('#status')}`);
  assert.match(gpu.label, /WebGPU \(.*swiftshader.*\)/i);

  await page.setInputFiles('#file-input', image);
  await page.waitForSelector('body[data-image-ready="true"]', { timeout: SLOW });
  const first = await ask(page, { stopAfterFirstPiece: true });
  await page.screenshot({ path: join(artifacts, 'webgpu-asked.png'), fullPage: true });
  const reference = await pngMask(page, cliMask);
  const score = iou(first.mask, reference);
  console.log(`WebGPU vs native CLI answer mask IoU: ${score.toFixed(4)}; explanation so far: ${first.explanation}`);
  assert.ok(score >= 0.95, `WebGPU answer mask IoU ${score} < 0.95`);
  assert.equal(await page.evaluate(() => document.body.dataset.answerFound), String(cli.answer.found));
  const streamed = first.explanation.replace(/ \[stopped\]$/, '');
  assert.ok(streamed.length > 0 && cli.explanation.trim().startsWith(streamed),
    `the WebGPU explanation ${JSON.stringify(streamed)} is not the start of the CLI's ${JSON.stringify(cli.explanation)}`);

  // The device is lost during the second question: the answer comes from the CPU.
  const second = await ask(page, { stopAfterFirstPiece: false });
  const fallback = await ready(page);
  console.log(`after the lost device: ${fallback.label}`);
  assert.equal(fallback.backend, 'cpu');
  assert.match(fallback.label, /WebGPU stopped: the GPU device was lost/);
  const cpuScore = iou(second.mask, reference);
  assert.ok(cpuScore >= 0.95, `answer after the fallback: mask IoU ${cpuScore} < 0.95`);
  assert.equal(second.explanation, cli.explanation.trim(), 'the explanation after the fallback differs from the CLI');
  await page.screenshot({ path: join(artifacts, 'webgpu-device-lost.png'), fullPage: true });

  const timings = await page.evaluate(() => window.medseeTimings.events);
  const onGpu = (type, key) => timings.find((e) => e.type === type && e.backend === 'webgpu')?.[key];
  const bench = {
    date: new Date().toISOString(), browser: 'Debian chromium (headless)', path: 'WebGPU (SwiftShader, software)',
    load_with_device_check_ms: onGpu('ready', 'loadMs'), encode_ms: onGpu('image', 'encodeMs'),
    question_to_mask_ms: onGpu('answer', 'askMs'),
  };
  bench.time_to_first_mask_ms = bench.load_with_device_check_ms + bench.encode_ms + bench.question_to_mask_ms;
  writeFileSync(join(artifacts, 'browser-bench-webgpu.json'), JSON.stringify(bench, null, 1));
  console.log('browser bench (WebGPU):', JSON.stringify(bench));

  // The other ways WebGPU fails: each ends on the CPU with the reason shown.
  for (const [fault, expected] of [['no-adapter', /CPU \(wasm SIMD\) — no WebGPU adapter/], ['gpu-error', /CPU \(wasm SIMD\) — WebGPU stopped: .*(GPU error|wgpu)/i]]) {
    const other = await context.newPage();
    other.on('pageerror', (e) => { console.log(`[page error, ${fault}]`, e.message); failures++; });
    await other.goto(`${url}?test-fault=${fault}`);
    const result = await ready(other);
    console.log(`${fault}: ${result.label}`);
    assert.equal(result.backend, 'cpu');
    assert.match(result.label, expected);
    await other.close();
  }
  assert.equal(failures, 0, 'uncaught errors in the page');
  console.log('WebGPU browser test: ok');
} finally {
  await context.close();
  server.kill();
}
