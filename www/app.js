// Page logic: file input, box drawing, overlay and exports. No model logic: the worker does that.
import { EngineClient } from './engine-client.js';

const $ = (id) => document.getElementById(id);
// ?backend=cpu skips WebGPU; ?test-fault=… is for the browser tests (see engine-client.js).
const params = new URLSearchParams(location.search);

const state = {
  image: null, file: null, box: null, result: null, answer: null, explanation: '', ready: false, busy: false,
};
// Shared with the worker: set to 1 to stop a streaming explanation.
const stopFlag = new Int32Array(new SharedArrayBuffer(4));
const imageCanvas = $('image-canvas');
const overlayCanvas = $('overlay-canvas');

function setStatus(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

function updateButtons() {
  const canRun = state.ready && state.image && !state.busy;
  $('segment-button').disabled = !(canRun && state.box);
  $('ask-button').disabled = !canRun;
  $('export-mask').disabled = !state.result;
  $('export-overlay').disabled = !state.result;
  $('export-json').disabled = !state.answer;
  $('export-rle').disabled = !state.answer;
}

function showAnswer(data) {
  const s = data.summary;
  state.answer = data;
  state.result = { width: data.width, height: data.height, mask: data.mask };
  state.box = s.box ? [s.box.x0, s.box.y0, s.box.x1, s.box.y1] : null;
  window.medseeLastMask = data.mask; // read by the browser tests
  drawOverlay();
  const weights = (w) => w.map((v) => v.toFixed(2)).join(' / ');
  $('answer-facts').textContent = s.found
    ? `Found${s.structure ? ` the ${s.structure.name}` : ''}: ${s.mask_area} pixels, presence ${(s.presence * 100).toFixed(0)} %, `
      + `mask quality ${(s.score * 100).toFixed(0)} % (in ${(data.askMs / 1000).toFixed(1)} s). `
      + `Fusion weights [SEG]/[BBOX]/extra: mask ${weights(s.seg_weights)}, box ${weights(s.box_weights)}; `
      + `mask prompted by ${PROMPT_BOXES[s.box_source] ?? s.box_source}`
      + `${s.box_scale !== 1 ? ` scaled ×${s.box_scale.toFixed(1)}` : ''}`
      + `${s.seg_token ? ' and the [SEG] token' : ''}; `
      + `${s.box_from === 'prompt' ? 'the box drawn is that prompt box' : 'the box drawn fits the mask'}.`
    : `Not found in this image (presence ${(s.presence * 100).toFixed(0)} %).`;
  $('answer-facts').classList.toggle('not-found', !s.found);
  document.body.dataset.answerFound = String(s.found);
}

// How the answer's `box_source` reads in the facts line.
const PROMPT_BOXES = {
  anchor: 'the box where it usually lies',
  corrected: 'the predicted box',
  map: 'the box of where the model found it',
};

// Timings and memory of this session, for the browser benchmark (window.medseeTimings).
const timings = (window.medseeTimings = { events: [] });
function onWorkerMessage(data) {
  if (data.loadMs !== undefined || data.encodeMs !== undefined || data.askMs !== undefined || data.explainMs !== undefined) {
    const { type, loadMs, encodeMs, askMs, explainMs, memoryBytes, totalBytes, fromCache } = data;
    const backend = data.backend ?? document.body.dataset.backend;
    timings.events.push({ type, backend, loadMs, encodeMs, askMs, explainMs, memoryBytes, totalBytes, fromCache });
  }
  switch (data.type) {
    case 'progress': {
      $('download-progress').max = data.total;
      $('download-progress').value = data.loaded;
      const mb = (n) => (n / 1e6).toFixed(1);
      $('download-text').textContent = `${mb(data.loaded)} / ${mb(data.total)} MB (${data.file})`;
      break;
    }
    case 'ready':
      state.ready = true;
      $('download-text').textContent += ` (${(data.totalBytes / 1e6).toFixed(1)} MB in all)`;
      $('backend').textContent = data.backendLabel;
      document.body.dataset.backend = data.backend;
      setStatus(data.fromCache ? 'Model ready (loaded from the browser cache).' : 'Model ready.');
      document.body.dataset.modelReady = 'true';
      updateButtons();
      break;
    case 'notice':
      setStatus(data.message);
      break;
    case 'image':
      state.busy = false;
      showImage(data);
      setStatus(`Image encoded in ${(data.encodeMs / 1000).toFixed(1)} s. Ask a question, or draw a box around a structure.`);
      document.body.dataset.imageReady = 'true';
      updateButtons();
      break;
    case 'result':
      state.busy = false;
      state.result = data;
      window.medseeLastMask = data.mask; // read by the browser tests
      drawOverlay();
      $('result-text').textContent = data.area === 0
        ? 'Nothing was segmented inside this box.'
        : `Segmented ${data.area} pixels; the model rates this mask ${(data.iouPrediction * 100).toFixed(0)}% `
          + `(predicted IoU), computed in ${(data.decodeMs / 1000).toFixed(2)} s.`;
      setStatus('Done.');
      document.body.dataset.resultReady = 'true';
      updateButtons();
      break;
    case 'answer':
      showAnswer(data);
      state.explanation = '';
      $('explanation').textContent = '';
      $('stop-button').disabled = false;
      setStatus('Explaining…');
      document.body.dataset.answerReady = 'true';
      break;
    case 'explain-piece':
      state.explanation += data.text;
      $('explanation').textContent = state.explanation;
      break;
    case 'explained':
      state.busy = false;
      state.explanation = data.text;
      $('explanation').textContent = data.text + (data.stopped ? ' [stopped]' : '');
      $('stop-button').disabled = true;
      setStatus('Done.');
      document.body.dataset.explained = 'true';
      updateButtons();
      break;
    case 'error':
      state.busy = false;
      $('stop-button').disabled = true;
      setStatus(`Error: ${data.message}`, true);
      updateButtons();
      break;
  }
}

// The file's bytes go to the worker, which decodes them (PNG, JPEG or DICOM) and sends back the
// pixels to show: the page never decodes medical formats itself.
async function openFile(file, dicomWindow = null) {
  if (!file || state.busy) return;
  state.file = file;
  delete document.body.dataset.imageReady;
  const bytes = await file.arrayBuffer();
  state.busy = true;
  updateButtons();
  setStatus(`Reading ${file.name} and encoding it on your device…`);
  engine.send({ type: 'image', bytes, window: dicomWindow }, [bytes]);
}

// A new image replaces the old one (and its answers) only once it decoded and encoded.
function showImage(data) {
  state.image = { width: data.width, height: data.height };
  state.result = null;
  state.answer = null;
  state.box = null;
  for (const key of ['resultReady', 'answerReady', 'explained', 'answerFound']) delete document.body.dataset[key];
  $('answer-facts').textContent = '';
  $('explanation').textContent = '';
  $('result-text').textContent = '';
  for (const k of ['x0', 'y0', 'x1', 'y1']) $(`box-${k}`).value = '';
  for (const canvas of [imageCanvas, overlayCanvas]) {
    canvas.width = data.width;
    canvas.height = data.height;
  }
  const rgba = new ImageData(data.width, data.height);
  for (let i = 0, j = 0; i < data.pixels.length; i += 3, j += 4) {
    rgba.data[j] = data.pixels[i];
    rgba.data[j + 1] = data.pixels[i + 1];
    rgba.data[j + 2] = data.pixels[i + 2];
    rgba.data[j + 3] = 255;
  }
  imageCanvas.getContext('2d').putImageData(rgba, 0, 0);
  $('dicom-window').hidden = !data.dicom;
  if (data.dicom) {
    const w = data.dicom.appliedWindow;
    $('window-center').value = w ? w.center : '';
    $('window-width').value = w ? w.width : '';
    $('dicom-text').textContent = `DICOM${data.dicom.modality ? ` (${data.dicom.modality})` : ''}: `
      + (w ? `window ${w.center}/${w.width}` : 'no window in the file; values scaled to their full range');
  }
  drawOverlay();
}

// A box from a drag (any corner order) becomes x0 < x1, y0 < y1 and is shown in the fields.
function setBox(box) {
  const [x0, y0, x1, y1] = box.map(Math.round);
  state.box = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
  ['x0', 'y0', 'x1', 'y1'].forEach((k, i) => { $(`box-${k}`).value = state.box[i]; });
  drawOverlay();
  updateButtons();
}

// The box typed in the fields, or null while it is incomplete or inverted.
function typedBox() {
  const box = ['x0', 'y0', 'x1', 'y1'].map((k) => $(`box-${k}`).value.trim() === '' ? NaN : Number($(`box-${k}`).value));
  if (box.some((v) => !Number.isFinite(v)) || box[2] <= box[0] || box[3] <= box[1]) return null;
  return box;
}

function drawOverlay() {
  const ctx = overlayCanvas.getContext('2d');
  ctx.clearRect(0, 0, overlayCanvas.width, overlayCanvas.height);
  const r = state.result;
  if (r && r.width === overlayCanvas.width && r.height === overlayCanvas.height) {
    const alpha = Math.round(Number($('fill-opacity').value) * 255);
    const pixels = new ImageData(r.width, r.height);
    const m = r.mask;
    for (let y = 0; y < r.height; y++) {
      for (let x = 0; x < r.width; x++) {
        const i = y * r.width + x;
        if (!m[i]) continue;
        const edge = x === 0 || y === 0 || x === r.width - 1 || y === r.height - 1
          || !m[i - 1] || !m[i + 1] || !m[i - r.width] || !m[i + r.width];
        pixels.data.set(edge ? [255, 230, 0, 255] : [0, 200, 255, alpha], i * 4);
      }
    }
    ctx.putImageData(pixels, 0, 0);
  }
  const a = state.answer;
  if ($('show-heatmap').checked && a && a.heatmapWidth) {
    // Cells of 4 model pixels; the model sees the image with its longest side at 256.
    const cell = Math.max(overlayCanvas.width, overlayCanvas.height) / 64;
    const heat = new OffscreenCanvas(a.heatmapWidth, a.heatmapHeight);
    const px = new ImageData(a.heatmapWidth, a.heatmapHeight);
    a.heatmap.forEach((v, i) => px.data.set([255, Math.max(0, 2 * v - 255), 0, Math.round(v * 0.6)], i * 4));
    heat.getContext('2d').putImageData(px, 0, 0);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(heat, 0, 0, a.heatmapWidth * cell, a.heatmapHeight * cell);
  }
  if (state.box) {
    const [x0, y0, x1, y1] = state.box;
    ctx.strokeStyle = '#ff4040';
    ctx.lineWidth = Math.max(1, Math.ceil(Math.max(overlayCanvas.width, overlayCanvas.height) / 400));
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
}

function canvasPoint(event) {
  const rect = overlayCanvas.getBoundingClientRect();
  return [
    ((event.clientX - rect.left) / rect.width) * overlayCanvas.width,
    ((event.clientY - rect.top) / rect.height) * overlayCanvas.height,
  ];
}

let dragStart = null;
overlayCanvas.addEventListener('pointerdown', (e) => {
  if (!state.image) return;
  dragStart = canvasPoint(e);
  overlayCanvas.setPointerCapture(e.pointerId);
});
overlayCanvas.addEventListener('pointermove', (e) => {
  if (dragStart) setBox([...dragStart, ...canvasPoint(e)]);
});
overlayCanvas.addEventListener('pointerup', (e) => {
  if (dragStart) setBox([...dragStart, ...canvasPoint(e)]);
  dragStart = null;
});

$('box-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const box = typedBox();
  if (!box) {
    setStatus('The box needs four numbers with x0 < x1 and y0 < y1.', true);
    return;
  }
  state.box = box;
  drawOverlay();
  if (state.busy) return;
  state.busy = true;
  updateButtons();
  setStatus('Segmenting…');
  engine.send({ type: 'segment', box: state.box });
});
for (const k of ['x0', 'y0', 'x1', 'y1']) {
  $(`box-${k}`).addEventListener('input', () => {
    state.box = typedBox();
    drawOverlay();
    updateButtons();
  });
}

$('fill-opacity').addEventListener('input', drawOverlay);
$('dicom-window').addEventListener('submit', (e) => {
  e.preventDefault();
  const center = Number($('window-center').value);
  const width = Number($('window-width').value);
  if (!Number.isFinite(center) || !(width > 0)) {
    setStatus('The window needs a centre and a positive width.', true);
    return;
  }
  openFile(state.file, { center, width });
});
$('window-preset').addEventListener('change', () => {
  const [center, width] = $('window-preset').value.split('/').map(Number);
  if (!Number.isFinite(center)) return;
  $('window-center').value = center;
  $('window-width').value = width;
  openFile(state.file, { center, width });
});
$('show-heatmap').addEventListener('change', drawOverlay);

function askQuestion(question) {
  if (!question.trim()) {
    setStatus('Type a question first.', true);
    return;
  }
  if (state.busy || !state.ready || !state.image) return;
  state.busy = true;
  delete document.body.dataset.answerReady;
  delete document.body.dataset.explained;
  updateButtons();
  setStatus('Looking…');
  engine.send({ type: 'ask', question });
}
$('ask-form').addEventListener('submit', (e) => {
  e.preventDefault();
  askQuestion($('question').value);
});
for (const example of document.querySelectorAll('.example-question')) {
  example.addEventListener('click', () => {
    $('question').value = example.textContent;
    askQuestion(example.textContent);
  });
}
$('stop-button').addEventListener('click', () => Atomics.store(stopFlag, 0, 1));
$('file-input').addEventListener('change', (e) => openFile(e.target.files[0]));
const drop = $('drop-zone');
drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') $('file-input').click(); });
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('dragging'); });
drop.addEventListener('dragleave', () => drop.classList.remove('dragging'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('dragging');
  openFile(e.dataTransfer.files[0]);
});

function download(name, canvas) {
  canvas.toBlob((blob) => {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }, 'image/png');
}

$('export-mask').addEventListener('click', () => {
  const r = state.result;
  const canvas = document.createElement('canvas');
  canvas.width = r.width;
  canvas.height = r.height;
  const pixels = new ImageData(r.width, r.height);
  r.mask.forEach((v, i) => pixels.data.set(v ? [255, 255, 255, 255] : [0, 0, 0, 255], i * 4));
  canvas.getContext('2d').putImageData(pixels, 0, 0);
  download('mask.png', canvas);
});
$('export-overlay').addEventListener('click', () => {
  const canvas = document.createElement('canvas');
  canvas.width = imageCanvas.width;
  canvas.height = imageCanvas.height;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(imageCanvas, 0, 0);
  ctx.drawImage(overlayCanvas, 0, 0);
  download('overlay.png', canvas);
});

function downloadJson(name, value) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([JSON.stringify(value, null, 2)], { type: 'application/json' }));
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}
$('export-json').addEventListener('click', () => downloadJson('medsee.json', { ...state.answer.summary, explanation: state.explanation }));
$('export-rle').addEventListener('click', () => downloadJson('medsee-mask-rle.json', state.answer.summary.mask_rle));

const engine = new EngineClient('worker.js', {
  onMessage: onWorkerMessage,
  stopFlag: stopFlag.buffer,
  preference: params.get('backend') === 'cpu' ? 'cpu' : 'auto',
  testFault: params.get('test-fault'),
});
