// All model work happens here, off the page's main thread. Driven by www/engine-client.js.
// Messages in: {type: 'load', stopFlag, backend: 'auto' | 'cpu', testFault?}, {type: 'image', bytes,
// window?}, {type: 'ask', question}, {type: 'segment', box}. Messages out: progress, notice, ready,
// image, answer, explain-piece, explained, result, error, and gpu-fault (the GPU failed: the
// client replaces this worker with one on the CPU).
import init, { Engine, weightFiles } from './pkg/medsee.js';

const WEIGHTS_CACHE = 'medsee-weights-v1';
let engine = null;
let wasm = null; // the module's exports: its memory size is reported with results
// Shared with the page: the stop button sets it to 1 while an explanation streams.
let stopFlag = null;
// The WebGPU device the engine runs on, seen through requestDevice (wgpu asks for it itself).
let gpuDevice = null;
let onGpu = false;
let faulted = false;
// Browser tests only (?test-fault=…, see engine-client.js).
let testFault = null;
let asked = 0;

function post(type, payload = {}, transfer = []) {
  self.postMessage({ type, ...payload }, transfer);
}

async function openCache() {
  try {
    return await caches.open(WEIGHTS_CACHE);
  } catch (error) {
    post('notice', { message: `Browser cache unavailable (${error.message}); the weights stay in memory only.` });
    return null;
  }
}

// Fetches one file (or part) with byte-level progress; Cache Storage serves it after the first time.
async function fetchCached(cache, url, size, onBytes) {
  const hit = cache ? await cache.match(url) : null;
  if (hit) {
    const bytes = new Uint8Array(await hit.arrayBuffer());
    if (bytes.length === size) {
      onBytes(bytes.length);
      return { bytes, cached: true };
    }
    await cache.delete(url); // a stale or partial copy is never used
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
    onBytes(value.length);
  }
  if (loaded !== size) throw new Error(`${url}: received ${loaded} of ${size} bytes; reload to try again`);
  return { bytes, cached: false };
}

// One weight file, whole or from its parts, with progress over every file of the model.
async function fetchWeightFile(cache, name, entry, progress) {
  const pieces = entry.parts && entry.parts.length ? entry.parts : [{ name, size: entry.size }];
  const bytes = new Uint8Array(entry.size);
  let offset = 0;
  let allCached = true;
  const fresh = [];
  for (const piece of pieces) {
    const url = `models/${piece.name}`;
    const got = await fetchCached(cache, url, piece.size, progress);
    bytes.set(got.bytes, offset);
    offset += piece.size;
    allCached &&= got.cached;
    if (!got.cached) fresh.push([url, got.bytes]);
  }
  return { bytes, cached: allCached, fresh };
}

// Reports a GPU failure once; the client then replaces this worker with one on the CPU.
function gpuFault(message) {
  if (faulted) return;
  faulted = true;
  post('gpu-fault', { message });
}

// Watches the device wgpu creates: a lost device or an uncaught GPU error (out of memory, a
// failed validation) means the GPU path cannot be trusted any more.
function watchGpuDevices() {
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = async function (...args) {
    const device = await requestDevice.apply(this, args);
    gpuDevice = device;
    if (testFault === 'gpu-error') {
      // What running out of GPU memory looks like to the page: an uncaptured GPUOutOfMemoryError.
      const error = new GPUOutOfMemoryError('out of memory (test hook)');
      setTimeout(() => device.dispatchEvent(new GPUUncapturedErrorEvent('uncapturederror', { error })), 0);
    }
    device.lost.then((info) => gpuFault(`the GPU device was lost (${info.reason || 'unknown'}${info.message ? `: ${info.message}` : ''})`));
    device.addEventListener('uncapturederror', (event) => gpuFault(`GPU error: ${event.error.message}`));
    return device;
  };
}

// WebGPU when asked for and an adapter exists; otherwise the CPU and why.
async function chooseBackend(preference) {
  if (preference === 'cpu') return { backend: 'cpu' };
  if (!self.navigator.gpu) return { backend: 'cpu', reason: 'this browser has no WebGPU' };
  let adapter = null;
  try {
    adapter = testFault === 'no-adapter' ? null : await navigator.gpu.requestAdapter();
  } catch (error) {
    return { backend: 'cpu', reason: `the WebGPU adapter request failed (${error.message})` };
  }
  if (!adapter) return { backend: 'cpu', reason: 'no WebGPU adapter' };
  const info = adapter.info ?? {};
  const name = [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'adapter';
  return { backend: 'webgpu', adapter: adapter.isFallbackAdapter || info.isFallbackAdapter ? `${name}, software` : name };
}

// Errors that mean the GPU failed rather than the request: the client falls back to the CPU.
function isGpuFailure(error) {
  return onGpu && (error?.name === 'DeviceError' || error instanceof WebAssembly.RuntimeError);
}

async function load(flag, preference) {
  // Without a shared flag (a page that is not cross-origin isolated) explanations cannot be stopped.
  stopFlag = new Int32Array(flag ?? new ArrayBuffer(4));
  const choice = await chooseBackend(preference);
  onGpu = choice.backend === 'webgpu';
  if (onGpu) watchGpuDevices();
  wasm = await init();
  const started = performance.now();
  const indexText = await (await fetch('models/index.json', { cache: 'no-cache' })).text();
  const index = JSON.parse(indexText);
  const names = weightFiles();
  const missing = names.filter((n) => !index.files[n]);
  if (missing.length) throw new Error(`not listed in models/index.json: ${missing.join(', ')}; convert the weights again`);
  const total = names.reduce((sum, n) => sum + index.files[n].size, 0);
  const cache = await openCache();
  let loaded = 0;
  let cachedFiles = 0;
  const files = [];
  const fresh = [];
  for (const name of names) {
    const got = await fetchWeightFile(cache, name, index.files[name], (n) => {
      loaded += n;
      post('progress', { file: name, loaded, total });
    });
    files.push(got.bytes);
    fresh.push(...got.fresh);
    cachedFiles += got.cached ? 1 : 0;
  }
  const fromCache = cachedFiles === names.length;
  try {
    engine = await Engine.load(indexText, files, choice.backend);
  } catch (error) {
    if (isGpuFailure(error)) throw error;
    // A damaged cached copy is dropped so the next load downloads it again.
    if (cache) await caches.delete(WEIGHTS_CACHE);
    throw error;
  }
  // Only files that passed the sha256 check are kept for offline use.
  if (cache) {
    try {
      for (const [url, bytes] of fresh) await cache.put(url, new Response(bytes));
    } catch (error) {
      post('notice', { message: `Could not store the weights for offline use (${error.message}).` });
    }
  }
  post('ready', {
    backend: engine.backend(), adapter: choice.adapter, reason: choice.reason, deviceCheck: engine.deviceCheck(),
    fromCache, totalBytes: total, loadMs: performance.now() - started, memoryBytes: wasmMemory(),
  });
}

function wasmMemory() {
  return wasm ? wasm.memory.buffer.byteLength : 0;
}

function requireEngine() {
  if (!engine) throw new Error('the model is still loading');
}

async function ask(question) {
  requireEngine();
  let started = performance.now();
  const pending = engine.ask(question);
  asked += 1;
  // Browser tests: the GPU is lost in the middle of the second question.
  if (onGpu && testFault === 'device-lost' && asked === 2) gpuDevice?.destroy();
  const answer = await pending;
  const askMs = performance.now() - started;
  post('answer', {
    summary: answer.summary,
    width: answer.width,
    height: answer.height,
    mask: answer.mask,
    heatmap: answer.heatmap,
    heatmapWidth: answer.heatmapWidth,
    heatmapHeight: answer.heatmapHeight,
    askMs,
    memoryBytes: wasmMemory(),
  }, [answer.mask.buffer, answer.heatmap.buffer]);
  Atomics.store(stopFlag, 0, 0);
  started = performance.now();
  const text = await engine.explain((piece) => {
    post('explain-piece', { text: piece });
    return Atomics.load(stopFlag, 0) === 0;
  });
  post('explained', { text, stopped: Atomics.load(stopFlag, 0) !== 0, explainMs: performance.now() - started, memoryBytes: wasmMemory() });
}

self.addEventListener('unhandledrejection', (event) => {
  if (isGpuFailure(event.reason)) gpuFault(event.reason.message);
});

self.onmessage = async ({ data }) => {
  try {
    if (data.type === 'load') {
      testFault = data.testFault ?? null;
      await load(data.stopFlag, data.backend);
    } else if (data.type === 'image') {
      requireEngine();
      const started = performance.now();
      const info = await engine.setImage(new Uint8Array(data.bytes), data.window?.center, data.window?.width);
      post('image', {
        width: info.width, height: info.height, pixels: info.pixels, dicom: info.dicom,
        encodeMs: performance.now() - started, memoryBytes: wasmMemory(),
      }, [info.pixels.buffer]);
    } else if (data.type === 'ask') {
      await ask(data.question);
    } else if (data.type === 'segment') {
      requireEngine();
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
    const message = error.message ?? String(error);
    if (isGpuFailure(error)) gpuFault(message);
    else post('error', { request: data.type, message });
  }
};
