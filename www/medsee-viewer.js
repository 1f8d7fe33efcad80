// <medsee-viewer src="image.png" question="Which part helps me breathe?">: medsee as a widget.
// One script tag (type="module") from the same origin as medsee's files; everything it draws lives
// in its shadow DOM, and the host page hears from it only through these events (detail in brackets):
//   medsee-ready   {backend, backendLabel}   models loaded ('webgpu' or 'cpu', and in words)
//   medsee-answer  {summary}                 mask, box, presence… (summary as `medsee ask --json`)
//   medsee-explained {text}                  the explanation, once complete
//   medsee-error   {message}
// Attributes: src (image URL: PNG, JPEG or DICOM), question. Changing either asks again.
// backend="cpu" skips WebGPU (otherwise used when the browser has it, with a CPU fallback).
// A constructed style sheet: it stays inside the shadow root, and a strict Content-Security-Policy
// (no inline styles) allows it.
import { EngineClient } from './engine-client.js';

const STYLE = new CSSStyleSheet();
STYLE.replaceSync(`
    :host { display: inline-block; font: 14px/1.4 system-ui, sans-serif; color: #1b1b1f; max-width: 100%; }
    .frame { border: 1px solid #c9c9d1; border-radius: 8px; padding: 8px; background: #fff; }
    .stage { position: relative; display: inline-block; max-width: 100%; line-height: 0; }
    canvas { display: block; max-width: 100%; height: auto; }
    canvas.overlay { position: absolute; inset: 0; width: 100%; height: 100%; }
    .status { color: #555; margin: 6px 0 0; }
    .explanation { margin: 6px 0 0; }
    .notice { font-size: 12px; color: #6b4e00; margin: 6px 0 0; }
    .not-found { color: #b00020; font-weight: 600; }
`);
const TEMPLATE = `  <div class="frame">
    <div class="stage"><canvas class="image" role="img"></canvas><canvas class="overlay" aria-hidden="true"></canvas></div>
    <p class="status" role="status">Loading medsee…</p>
    <p class="explanation" aria-live="polite"></p>
    <p class="notice">Runs on your device; nothing is uploaded. Not a medical device.</p>
  </div>`;

class MedseeViewer extends HTMLElement {
  static observedAttributes = ['src', 'question'];

  constructor() {
    super();
    this.root = this.attachShadow({ mode: 'closed' });
    this.root.adoptedStyleSheets = [STYLE];
    this.root.innerHTML = TEMPLATE;
    this.ready = false;
    this.imageUrl = null;
  }

  part(selector) {
    return this.root.querySelector(selector);
  }

  connectedCallback() {
    if (this.worker) return;
    // A stop flag needs cross-origin isolation; without it explanations simply run to the end.
    const stopFlag = globalThis.crossOriginIsolated ? new SharedArrayBuffer(4) : null;
    this.worker = new EngineClient(new URL('worker.js', import.meta.url), {
      onMessage: (data) => this.onWorkerMessage(data),
      stopFlag,
      preference: this.getAttribute('backend') === 'cpu' ? 'cpu' : 'auto',
    });
  }

  disconnectedCallback() {
    this.worker?.terminate();
    this.worker = null;
    this.ready = false;
  }

  attributeChangedCallback() {
    if (this.ready) this.run();
  }

  emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail, bubbles: true, composed: true }));
  }

  setStatus(text) {
    this.part('.status').textContent = text;
  }

  async run() {
    const src = this.getAttribute('src');
    if (!src) return;
    try {
      if (src !== this.imageUrl) {
        this.setStatus('Reading the image…');
        const response = await fetch(new URL(src, document.baseURI));
        if (!response.ok) throw new Error(`${src}: HTTP ${response.status}`);
        const bytes = await response.arrayBuffer();
        this.imageUrl = src;
        this.worker.send({ type: 'image', bytes }, [bytes]);
      } else {
        this.ask();
      }
    } catch (error) {
      this.fail(error.message);
    }
  }

  ask() {
    const question = this.getAttribute('question');
    if (!question) {
      this.setStatus('Image ready.');
      return;
    }
    this.setStatus('Looking…');
    this.part('.explanation').textContent = '';
    this.worker.send({ type: 'ask', question });
  }

  fail(message) {
    this.setStatus(`Error: ${message}`);
    this.emit('medsee-error', { message });
  }

  onWorkerMessage(data) {
    switch (data.type) {
      case 'progress':
        this.setStatus(`Loading medsee… ${(data.loaded / 1e6).toFixed(0)} / ${(data.total / 1e6).toFixed(0)} MB`);
        break;
      case 'ready':
        this.ready = true;
        this.emit('medsee-ready', { backend: data.backend, backendLabel: data.backendLabel });
        this.run();
        break;
      case 'image':
        this.drawImage(data);
        this.ask();
        break;
      case 'answer':
        this.drawAnswer(data);
        this.emit('medsee-answer', { summary: data.summary });
        break;
      case 'explain-piece':
        this.part('.explanation').textContent += data.text;
        break;
      case 'explained':
        this.part('.explanation').textContent = data.text;
        this.part('.image').setAttribute('aria-label', data.text);
        this.emit('medsee-explained', { text: data.text });
        break;
      case 'error':
        this.fail(data.message);
        break;
    }
  }

  drawImage(data) {
    for (const canvas of [this.part('.image'), this.part('.overlay')]) {
      canvas.width = data.width;
      canvas.height = data.height;
    }
    const rgba = new ImageData(data.width, data.height);
    for (let i = 0, j = 0; i < data.pixels.length; i += 3, j += 4) {
      rgba.data.set([data.pixels[i], data.pixels[i + 1], data.pixels[i + 2], 255], j);
    }
    this.part('.image').getContext('2d').putImageData(rgba, 0, 0);
  }

  drawAnswer(data) {
    const s = data.summary;
    const overlay = this.part('.overlay');
    const ctx = overlay.getContext('2d');
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    const status = this.part('.status');
    status.classList.toggle('not-found', !s.found);
    if (!s.found) {
      status.textContent = 'Not found in this image.';
      return;
    }
    const pixels = new ImageData(data.width, data.height);
    data.mask.forEach((v, i) => { if (v) pixels.data.set([0, 200, 255, 100], i * 4); });
    ctx.putImageData(pixels, 0, 0);
    ctx.strokeStyle = '#ff4040';
    ctx.lineWidth = Math.max(1, Math.ceil(Math.max(data.width, data.height) / 300));
    ctx.strokeRect(s.box.x0, s.box.y0, s.box.x1 - s.box.x0, s.box.y1 - s.box.y0);
    status.textContent = `Found${s.structure ? ` the ${s.structure.name}` : ''}.`;
    this.lastMask = data.mask;
  }
}

customElements.define('medsee-viewer', MedseeViewer);
