// Page logic: file input, box drawing, overlay and exports. No model logic: the worker does that.
const $ = (id) => document.getElementById(id);
const worker = new Worker('worker.js', { type: 'module' });

const state = { image: null, imageBitmap: null, box: null, result: null, ready: false, busy: false };
const imageCanvas = $('image-canvas');
const overlayCanvas = $('overlay-canvas');

function setStatus(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

function updateButtons() {
  $('segment-button').disabled = !(state.ready && state.image && state.box && !state.busy);
  $('export-mask').disabled = !state.result;
  $('export-overlay').disabled = !state.result;
}

worker.onmessage = ({ data }) => {
  switch (data.type) {
    case 'progress': {
      $('download-progress').max = data.total;
      $('download-progress').value = data.loaded;
      const mb = (n) => (n / 1e6).toFixed(1);
      $('download-text').textContent = data.cached
        ? `${mb(data.total)} MB from the browser cache`
        : `${mb(data.loaded)} / ${mb(data.total)} MB`;
      break;
    }
    case 'ready':
      state.ready = true;
      $('backend').textContent = data.backend;
      setStatus(data.fromCache ? 'Model ready (loaded from the browser cache).' : 'Model ready.');
      document.body.dataset.modelReady = 'true';
      updateButtons();
      break;
    case 'notice':
      setStatus(data.message);
      break;
    case 'image':
      state.busy = false;
      setStatus(`Image encoded in ${(data.encodeMs / 1000).toFixed(1)} s. Draw a box around a structure.`);
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
    case 'error':
      state.busy = false;
      setStatus(`Error: ${data.message}`, true);
      updateButtons();
      break;
  }
};

async function openFile(file) {
  if (!file) return;
  const bytes = await file.arrayBuffer();
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]));
  } catch {
    setStatus(`Cannot show ${file.name}: not a PNG or JPEG image.`, true);
    return;
  }
  state.image = { width: bitmap.width, height: bitmap.height, name: file.name };
  state.imageBitmap = bitmap;
  state.result = null;
  state.box = null;
  delete document.body.dataset.resultReady;
  delete document.body.dataset.imageReady;
  for (const canvas of [imageCanvas, overlayCanvas]) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
  }
  imageCanvas.getContext('2d').drawImage(bitmap, 0, 0);
  drawOverlay();
  state.busy = true;
  updateButtons();
  setStatus('Encoding the image on your device…');
  worker.postMessage({ type: 'image', bytes }, [bytes]);
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
  worker.postMessage({ type: 'segment', box: state.box });
});
for (const k of ['x0', 'y0', 'x1', 'y1']) {
  $(`box-${k}`).addEventListener('input', () => {
    state.box = typedBox();
    drawOverlay();
    updateButtons();
  });
}

$('fill-opacity').addEventListener('input', drawOverlay);
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

worker.postMessage({ type: 'load' });
