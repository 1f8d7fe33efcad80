// All model work happens here, off the page's main thread. Messages in: {type: 'load'},
// {type: 'image', bytes}, {type: 'segment', box}. Messages out: progress, ready, image, result, error.
import init, { Engine } from './pkg/medsee.js';

const WEIGHTS_CACHE = 'medsee-weights-v1';
const MODEL_FILE = 'litemedsam-q8.bpk';
let engine = null;

function post(type, payload = {}, transfer = []) {
  self.postMessage({ type, ...payload }, transfer);
}

// Fetches a file with byte-level progress; serves it from Cache Storage after the first time.
async function fetchCached(url, size) {
  let cache = null;
  try {
    cache = await caches.open(WEIGHTS_CACHE);
    const hit = await cache.match(url);
    if (hit) {
      const bytes = new Uint8Array(await hit.arrayBuffer());
      post('progress', { file: url, loaded: bytes.length, total: size, cached: true });
      return { bytes, cached: true, cache };
    }
  } catch (error) {
    post('notice', { message: `Browser cache unavailable (${error.message}); the weights stay in memory only.` });
    cache = null;
  }
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  const reader = response.body.getReader();
  const bytes = new Uint8Array(size);
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (loaded + value.length > size) throw new Error(`${url} is larger than expected (${size} bytes)`);
    bytes.set(value, loaded);
    loaded += value.length;
    post('progress', { file: url, loaded, total: size, cached: false });
  }
  if (loaded !== size) throw new Error(`${url}: received ${loaded} of ${size} bytes; reload to try again`);
  return { bytes, cached: false, cache };
}

async function load() {
  await init();
  const index = await (await fetch('models/index.json', { cache: 'no-cache' })).json();
  const entry = index.files[MODEL_FILE];
  if (!entry) throw new Error(`${MODEL_FILE} is not listed in models/index.json`);
  const url = `models/${MODEL_FILE}`;
  const { bytes, cached, cache } = await fetchCached(url, entry.size);
  try {
    engine = Engine.load(MODEL_FILE, bytes, entry.size, entry.sha256, 'q8');
  } catch (error) {
    // A damaged cached copy is dropped so the next load downloads it again.
    if (cached && cache) await cache.delete(url);
    throw error;
  }
  if (!cached && cache) {
    try {
      await cache.put(url, new Response(bytes));
    } catch (error) {
      post('notice', { message: `Could not store the weights for offline use (${error.message}).` });
    }
  }
  post('ready', { backend: engine.backend(), fromCache: cached });
}

self.onmessage = async ({ data }) => {
  try {
    if (data.type === 'load') {
      await load();
    } else if (data.type === 'image') {
      if (!engine) throw new Error('the model is still loading');
      const started = performance.now();
      const info = engine.setImage(new Uint8Array(data.bytes));
      post('image', { width: info.width, height: info.height, encodeMs: performance.now() - started });
    } else if (data.type === 'segment') {
      if (!engine) throw new Error('the model is still loading');
      const [x0, y0, x1, y1] = data.box;
      const started = performance.now();
      const result = await engine.segmentBox(x0, y0, x1, y1);
      post('result', {
        width: result.width,
        height: result.height,
        mask: result.mask,
        area: result.area,
        iouPrediction: result.iouPrediction,
        maskBox: result.maskBox ? Array.from(result.maskBox) : null,
        prompt: Array.from(result.prompt),
        decodeMs: performance.now() - started,
      }, [result.mask.buffer]);
    }
  } catch (error) {
    post('error', { request: data.type, message: error.message ?? String(error) });
  }
};
