// Real-browser test of the page (Debian chromium + playwright-core): load the models, open a real
// image, ask a question and compare the answer's mask with the native CLI's `ask` for the same
// input, check the explanation streams, segment a box and compare with `segment`, then reload and
// check the weights now come from the browser cache. Screenshots go to $ARTIFACTS.
//
// usage: node tests/browser/run.mjs   (after scripts/build-web.sh and `medsee convert`)
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { root, startServer, launchBrowser, pngMask, iou } from './harness.mjs';

const artifacts = process.env.ARTIFACTS ?? join(root, 'target', 'browser-artifacts');
mkdirSync(artifacts, { recursive: true });
const medseeBin = process.env.MEDSEE_BIN;
assert.ok(medseeBin, 'set MEDSEE_BIN to the native medsee binary (scripts/test does)');

const fixture = join(root, 'tests/fixtures/litemedsam/dermoscopy_lesion');
const image = join(fixture, 'input.png');
const box = JSON.parse(readFileSync(join(fixture, 'case.json'), 'utf8')).box256.map(Math.round);
const question = 'Where is the skin lesion the doctor worried about?';

async function openImage(page, file = image) {
  await page.setInputFiles('#file-input', file);
  await page.waitForSelector('body[data-image-ready="true"]', { timeout: 300_000 });
}

async function askInPage(page, text = question) {
  await page.fill('#question', text);
  const pieces = page.evaluate(() => new Promise((ok) => {
    // Count the explanation's updates while it streams.
    let updates = 0;
    const target = document.getElementById('explanation');
    new MutationObserver(() => { updates++; if (document.body.dataset.explained) ok(updates); })
      .observe(target, { childList: true, characterData: true, subtree: true });
  }));
  await page.click('#ask-button');
  await page.waitForSelector('body[data-answer-ready="true"]', { timeout: 300_000 });
  const maskBeforeExplanation = await page.evaluate(() => Array.from(window.medseeLastMask ?? []));
  await page.waitForSelector('body[data-explained="true"]', { timeout: 300_000 });
  return { mask: maskBeforeExplanation, updates: await pieces };
}

async function segmentInPage(page) {
  for (const [k, v] of Object.entries({ x0: box[0], y0: box[1], x1: box[2], y1: box[3] })) {
    await page.fill(`#box-${k}`, String(v));
  }
  await page.click('#segment-button');
  await page.waitForSelector('body[data-result-ready="true"]', { timeout: 120_000 });
}

const { server, url } = await startServer();
const context = await launchBrowser();
const requests = [];
let bench = null;
let failures = 0;
try {
  const page = await context.newPage();
  page.on('console', (m) => console.log('[page]', m.text()));
  page.on('pageerror', (e) => { console.log('[page error]', e.message); failures++; });
  context.on('request', (r) => requests.push({ url: r.url(), method: r.method() }));
  // Bytes on the wire (compressed bodies) of each file the first time it is fetched.
  const transferred = new Map();
  context.on('requestfinished', async (r) => {
    const sizes = await r.sizes().catch(() => null);
    if (sizes && !transferred.has(r.url())) transferred.set(r.url(), sizes.responseBodySize);
  });

  await page.goto(url);
  await page.waitForSelector('body[data-model-ready="true"]', { timeout: 300_000 });
  assert.match(await page.textContent('#backend'), /CPU/);
  assert.match(await page.textContent('body'), /nothing is uploaded|never uploaded/i);
  await openImage(page);

  // A question: the page's answer against the native CLI's for the same file and question.
  const asked = await askInPage(page);
  await page.screenshot({ path: join(artifacts, 'asked.png'), fullPage: true });
  const explanation = (await page.textContent('#explanation')).trim();
  console.log(`explanation (${asked.updates} updates): ${explanation}`);
  assert.ok(explanation.length > 0, 'no explanation');
  // Exports: every button downloads a file; the COCO RLE decodes to the page's mask.
  const saved = {};
  for (const button of ['export-json', 'export-rle', 'export-mask', 'export-overlay']) {
    const [download] = await Promise.all([page.waitForEvent('download'), page.click(`#${button}`)]);
    saved[button] = readFileSync(await download.path());
    assert.ok(saved[button].length > 0, `${button} saved nothing`);
  }
  const rle = JSON.parse(saved['export-rle']);
  assert.equal(rle.counts.reduce((a, b) => a + b, 0), rle.size[0] * rle.size[1], 'RLE covers the image');
  assert.equal(rle.counts.filter((_, i) => i % 2 === 1).reduce((a, b) => a + b, 0), asked.mask.reduce((a, b) => a + b, 0), 'RLE area');
  assert.equal(JSON.parse(saved['export-json']).explanation.trim(), explanation);

  const cliAskMask = join(artifacts, 'cli-ask-mask.png');
  const cliJson = join(artifacts, 'cli-ask.json');
  execFileSync(medseeBin, ['ask', image, question, '--variant', 'quantized', '--out', cliAskMask, '--json', cliJson], { stdio: 'inherit' });
  const cli = JSON.parse(readFileSync(cliJson, 'utf8'));
  assert.equal(await page.evaluate(() => document.body.dataset.answerFound), String(cli.answer.found), 'found/not found differs from the CLI');
  assert.equal(explanation, cli.explanation.trim(), 'the explanation differs from the CLI (both are greedy)');
  if (cli.answer.found && cli.answer.structure) assert.ok(asked.updates > 3, `the explanation arrived in ${asked.updates} piece(s), not streamed`);
  const askScore = iou(asked.mask, await pngMask(page, cliAskMask));
  console.log(`browser vs native CLI answer mask IoU: ${askScore.toFixed(4)}`);
  assert.ok(askScore >= 0.95, `browser answer mask IoU ${askScore} < 0.95`);

  // The page's headline (issue 5): a chest X-ray of the validation split and "Which parts help me
  // breathe?" — both lungs found and outlined, as the native CLI does.
  const chest = join(root, '../shared/data/medseg/images/jsrt_scr_chest_xray/JPCLN004.png');
  const breathe = 'Which parts help me breathe?';
  await openImage(page, chest);
  const lungs = await askInPage(page, breathe);
  await page.screenshot({ path: join(artifacts, 'headline-chest-xray.png'), fullPage: true });
  assert.equal(await page.evaluate(() => document.body.dataset.answerFound), 'true', 'the lungs were not found');
  assert.match(await page.textContent('#answer-facts'), /Found the lungs/);
  const cliLungs = join(artifacts, 'cli-lungs-mask.png');
  execFileSync(medseeBin, ['ask', chest, breathe, '--variant', 'quantized', '--out', cliLungs], { stdio: 'inherit' });
  const lungsScore = iou(lungs.mask, await pngMask(page, cliLungs));
  console.log(`headline question on a chest X-ray: browser vs native CLI mask IoU ${lungsScore.toFixed(4)}`);
  assert.ok(lungsScore >= 0.95, `browser lungs mask IoU ${lungsScore} < 0.95`);
  await openImage(page);

  // A box prompt: the page's mask against the native CLI's `segment`.
  await segmentInPage(page);
  await page.screenshot({ path: join(artifacts, 'segmented.png'), fullPage: true });
  const pageMask = await page.evaluate(() => Array.from(window.medseeLastMask ?? []));
  const cliMask = join(artifacts, 'cli-mask.png');
  execFileSync(medseeBin, ['segment', image, '--box', box.join(','), '--variant', 'quantized', '--out', cliMask], { stdio: 'inherit' });
  const reference = await pngMask(page, cliMask);
  assert.equal(pageMask.length, reference.length, 'mask sizes differ');
  const score = iou(pageMask, reference);
  console.log(`browser vs native CLI box mask IoU: ${score.toFixed(4)}`);
  assert.ok(score >= 0.95, `browser mask IoU ${score} < 0.95`);

  // The bad-input corpus through the wasm boundary: an error in the status line for each broken
  // file (no uncaught error, no dead worker), a normal image for each odd but valid one.
  const badDir = join(root, 'tests/fixtures/bad');
  for (const c of JSON.parse(readFileSync(join(badDir, 'cases.json'), 'utf8'))) {
    await page.evaluate(() => { delete document.body.dataset.imageReady; document.getElementById('status').textContent = ''; });
    await page.setInputFiles('#file-input', join(badDir, c.file));
    await page.waitForFunction(() => document.body.dataset.imageReady === 'true' || /^Error/.test(document.getElementById('status').textContent), null, { timeout: 300_000 });
    const status = await page.textContent('#status');
    if (c.expect === 'error') {
      assert.match(status, /^Error: /, `${c.file}: expected an error, got ${status}`);
      assert.ok(status.includes(c.mentions), `${c.file}: ${status} should mention ${c.mentions}`);
    } else {
      assert.equal(await page.evaluate(() => document.body.dataset.imageReady), 'true', `${c.file}: ${status}`);
    }
  }
  await openImage(page);
  const again = await askInPage(page);
  assert.ok(iou(again.mask, asked.mask) === 1, 'after the corpus the same question gives the same mask');

  // A DICOM file: decoded in the wasm with the file's window, which the page reports; a preset
  // re-windows it.
  await page.setInputFiles('#file-input', join(root, 'tests/fixtures/dicom/ct_window.dcm'));
  await page.waitForSelector('body[data-image-ready="true"]', { timeout: 300_000 });
  assert.match(await page.textContent('#dicom-text'), /CT.*window 40\/400/);
  assert.deepEqual(await page.evaluate(() => [document.getElementById('image-canvas').width, document.getElementById('image-canvas').height]), [192, 192]);
  await page.selectOption('#window-preset', '-600/1500');
  await page.waitForFunction(() => /window -600\/1500/.test(document.getElementById('dicom-text').textContent), null, { timeout: 300_000 });
  await page.screenshot({ path: join(artifacts, 'dicom.png'), fullPage: true });

  // The widget in a foreign-looking host page: it answers through its events only, and the host's
  // hostile styles do not reach into it.
  const widget = await context.newPage();
  widget.on('pageerror', (e) => { console.log('[widget page error]', e.message); failures++; });
  await widget.goto(`${url}widget-demo.html`);
  await widget.waitForFunction(() => (window.medseeEvents ?? []).some((e) => e.name === 'medsee-explained' || e.name === 'medsee-error'), null, { timeout: 300_000 });
  const events = await widget.evaluate(() => window.medseeEvents);
  assert.deepEqual(events.filter((e) => e.name === 'medsee-error'), [], 'the widget reported an error');
  const answered = events.find((e) => e.name === 'medsee-answer').detail.summary;
  const cliWidgetJson = join(artifacts, 'cli-widget.json');
  execFileSync(medseeBin, ['ask', join(fixture, 'input.png'), 'Where is the mole the doctor looked at?', '--variant', 'quantized',
    '--out', join(artifacts, 'cli-widget-mask.png'), '--json', cliWidgetJson, '--no-explanation'], { stdio: 'inherit' });
  const cliWidget = JSON.parse(readFileSync(cliWidgetJson, 'utf8')).answer;
  assert.equal(answered.found, cliWidget.found);
  assert.ok(Math.abs(answered.mask_area - cliWidget.mask_area) <= 0.02 * Math.max(1, cliWidget.mask_area),
    `widget mask area ${answered.mask_area} vs CLI ${cliWidget.mask_area}`);
  assert.equal(await widget.evaluate(() => document.querySelector('medsee-viewer').shadowRoot), null, 'the shadow root is closed');
  await widget.screenshot({ path: join(artifacts, 'widget.png'), fullPage: true });
  await widget.close();

  // Browser benchmark: what the page measured in this session (CPU path), kept with the other results.
  const timings = await page.evaluate(() => window.medseeTimings.events);
  const firstLoad = timings.find((e) => e.type === 'ready');
  const pick = (type, key) => timings.filter((e) => e.type === type && e[key] !== undefined).map((e) => e[key]);
  const median = (v) => { const s = [...v].sort((a, b) => a - b); return s.length ? s[Math.floor(s.length / 2)] : null; };
  const index = JSON.parse(readFileSync(join(root, 'models/converted/index.json'), 'utf8'));
  const wasmBytes = readFileSync(join(root, 'www/pkg/medsee_bg.wasm')).length;
  bench = {
    date: new Date().toISOString(), browser: 'Debian chromium (headless)', path: 'CPU (wasm SIMD)',
    first_load_ms: firstLoad.loadMs, download_bytes: firstLoad.totalBytes, wasm_bytes: wasmBytes,
    transferred_bytes: [...transferred.values()].reduce((a, b) => a + b, 0),
    files: Object.fromEntries(['litemedsam-q8.bpk', 'smollm2-q4.bpk', 'smollm2-tokenizer.json', 'smollm2-config.json', 'reason-heads-q8.bpk'].map((f) => [f, index.files[f].size])),
    encode_ms_median: median(pick('image', 'encodeMs')), question_to_mask_ms_median: median(pick('answer', 'askMs')),
    explanation_ms_median: median(pick('explained', 'explainMs')),
    peak_wasm_memory_bytes: Math.max(...timings.map((e) => e.memoryBytes ?? 0)),
  };
  bench.time_to_first_mask_ms = bench.first_load_ms + bench.encode_ms_median + bench.question_to_mask_ms_median;
  writeFileSync(join(artifacts, 'browser-bench.json'), JSON.stringify(bench, null, 1));
  console.log('browser bench:', JSON.stringify(bench));
  assert.ok(bench.transferred_bytes <= 100e6, `first visit downloaded ${bench.transferred_bytes} bytes (target: 100 MB)`);

  // Reload: the weights must now come from Cache Storage.
  await page.reload();
  await page.waitForSelector('body[data-model-ready="true"]', { timeout: 300_000 });
  assert.match(await page.textContent('#status'), /browser cache/);
  bench.cached_load_ms = (await page.evaluate(() => window.medseeTimings.events)).find((e) => e.type === 'ready').loadMs;
  writeFileSync(join(artifacts, 'browser-bench.json'), JSON.stringify(bench, null, 1));
  console.log(`browser bench: load from cache ${bench.cached_load_ms.toFixed(0)} ms`);
  await page.screenshot({ path: join(artifacts, 'reloaded-from-cache.png'), fullPage: true });

  // Privacy: every request of the whole session (page, asks, exports, widget) is a same-origin
  // GET of the page's own static files; images and answers never leave the page.
  const own = /^(index\.html|widget-demo\.html|[\w-]+\.(js|css)|pkg\/medsee(_bg)?\.(js|wasm)|demo\/[\w-]+\.(js|css|png)|models\/[\w.-]+)?$/;
  const offending = requests.filter((r) => {
    if (r.url.startsWith('data:') || r.url.startsWith('blob:')) return false;
    return r.method !== 'GET' || !r.url.startsWith(url) || !own.test(r.url.slice(url.length).split('?')[0]);
  });
  assert.deepEqual(offending, [], 'requests other than same-origin GETs of the page\'s own files');
  console.log(`privacy: ${requests.length} requests, all same-origin GETs of static files`);
  assert.equal(failures, 0, 'uncaught errors in the page');
  console.log('browser test: ok');
} finally {
  await context.close();
  server.kill();
}
