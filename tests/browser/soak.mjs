// Long-session soak of the page (CPU path): 500 questions over 20 real images in one page
// session, wasm memory and the page's JS heap sampled every 50 questions (a quarter of a
// shorter run). It fails if memory keeps growing in the second half or questions get slower.
// Takes ~25 min on 2 cores, so it is run by hand, not by the test command; results go to
// benches/results/browser-soak.json.
//
// usage: node tests/browser/soak.mjs [QUESTIONS] [IMAGES]   (after scripts/build-web.sh)
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { root, startServer, launchBrowser } from './harness.mjs';

const questions = Number(process.argv[2] ?? 500);
const imageCount = Number(process.argv[3] ?? 20);
const SAMPLE_EVERY = Math.min(50, Math.max(1, Math.floor(questions / 4)));
// Over the second half of the session, when every kind of buffer has been sized, wasm memory
// (a high-water mark: it never shrinks) may grow by at most this much.
const GROWTH_BOUND_BYTES = 64 * 2 ** 20;
// The last window's median question may be at most this much slower than the first's.
const SLOWDOWN_BOUND = 1.25;

const data = join(root, '../shared/data/medseg');
const records = readFileSync(join(data, 'index.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
// Val images, round-robin over the data sets so every modality is in the session.
const bySet = new Map();
for (const r of records.filter((r) => r.split === 'val')) {
  if (!bySet.has(r.set)) bySet.set(r.set, new Map());
  const images = bySet.get(r.set);
  if (!images.has(r.image)) images.set(r.image, []);
  images.get(r.image).push(r.class.replaceAll('_', ' '));
}
const images = [];
for (let i = 0; images.length < imageCount; i++) {
  const before = images.length;
  for (const set of bySet.values()) {
    const entry = [...set.entries()][i];
    if (entry && images.length < imageCount) images.push({ file: join(data, entry[0]), classes: entry[1] });
  }
  if (images.length === before) break;
}
const templates = ['Where is the %?', 'Segment the %.', 'Show me the %, please.', 'Which part is the %?', 'Is there a % in this image?'];
const absent = ['heart', 'optic disc', 'polyp', 'kidney', 'skin lesion'];

const { server, url } = await startServer();
const context = await launchBrowser();
const samples = [];
let failures = 0;
try {
  const page = await context.newPage();
  page.on('pageerror', (e) => { console.log('[page error]', e.message); failures++; });
  await page.goto(url);
  await page.waitForSelector('body[data-model-ready="true"]', { timeout: 600_000 });
  const perImage = Math.ceil(questions / images.length);
  let asked = 0;
  let times = [];
  for (const [n, image] of images.entries()) {
    await page.evaluate(() => { delete document.body.dataset.imageReady; });
    await page.setInputFiles('#file-input', image.file);
    await page.waitForSelector('body[data-image-ready="true"]', { timeout: 300_000 });
    for (let q = 0; q < perImage && asked < questions; q++) {
      const names = q % 4 === 3 ? absent : image.classes;
      const question = templates[q % templates.length].replace('%', names[q % names.length]);
      await page.fill('#question', question);
      const started = Date.now();
      await page.click('#ask-button');
      await page.waitForSelector('body[data-answer-ready="true"]', { timeout: 300_000 });
      times.push(Date.now() - started);
      // Stop the explanation once it streams: the soak is about the engine, not the text length.
      await page.evaluate(() => document.getElementById('stop-button').click());
      await page.waitForSelector('body[data-explained="true"]', { timeout: 300_000 });
      asked++;
      if (asked % SAMPLE_EVERY === 0) {
        const memory = await page.evaluate(() => {
          const events = window.medseeTimings.events;
          return { wasm: events[events.length - 1].memoryBytes, heap: performance.memory?.usedJSHeapSize ?? null };
        });
        times.sort((a, b) => a - b);
        const sample = { questions: asked, image: n + 1, wasm_memory_bytes: memory.wasm, js_heap_bytes: memory.heap, median_question_ms: times[times.length >> 1] };
        samples.push(sample);
        console.log(`soak: ${JSON.stringify(sample)}`);
        times = [];
      }
    }
  }
} finally {
  await context.close();
  server.kill();
}

const first = samples[0];
const middle = samples[Math.floor((samples.length - 1) / 2)];
const last = samples[samples.length - 1];
const result = {
  date: new Date().toISOString(),
  browser: 'Debian chromium (headless)',
  path: 'CPU (wasm SIMD)',
  questions,
  images: images.length,
  samples,
  wasm_growth_over_the_session_bytes: last.wasm_memory_bytes - first.wasm_memory_bytes,
  wasm_growth_over_the_second_half_bytes: last.wasm_memory_bytes - middle.wasm_memory_bytes,
  slowdown_last_over_first: last.median_question_ms / first.median_question_ms,
};
mkdirSync(join(root, 'benches/results'), { recursive: true });
writeFileSync(join(root, 'benches/results/browser-soak.json'), JSON.stringify(result, null, 1));
assert.equal(failures, 0, 'uncaught errors in the page');
assert.ok(result.wasm_growth_over_the_second_half_bytes <= GROWTH_BOUND_BYTES, `wasm memory grew by ${result.wasm_growth_over_the_second_half_bytes} bytes over the second half`);
assert.ok(result.slowdown_last_over_first <= SLOWDOWN_BOUND, `questions got ${result.slowdown_last_over_first.toFixed(2)}× slower`);
console.log(`soak: ok — ${questions} questions over ${images.length} images, wasm memory +${(result.wasm_growth_over_the_session_bytes / 2 ** 20).toFixed(1)} MiB over the session, +${(result.wasm_growth_over_the_second_half_bytes / 2 ** 20).toFixed(1)} MiB over its second half, last/first median question ${result.slowdown_last_over_first.toFixed(2)}×`);
