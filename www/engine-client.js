// The page's and the widget's handle on the model worker (www/worker.js). It starts the worker on
// WebGPU when the browser offers it. When the GPU fails — at start, or later: device lost, a GPU
// error, wrong values in the device check — the worker reports `gpu-fault`; the client then starts
// a fresh worker on the CPU, sends it the current image again and repeats the request that was
// running, so the question is still answered. The worker's messages reach `onMessage` unchanged,
// except that `ready` gains `backendLabel` (the active path in words, with why it is not WebGPU).
//
// `preference`: 'auto' (WebGPU when available) or 'cpu'. `testFault` (browser tests only) makes
// the worker fail on purpose: 'no-adapter' (none found), 'gpu-error' (an uncaught out-of-memory
// error while loading) or 'device-lost' (the device is destroyed during the second
// question).
export class EngineClient {
  constructor(workerUrl, { onMessage, stopFlag = null, preference = 'auto', testFault = null }) {
    this.workerUrl = workerUrl;
    this.onMessage = onMessage;
    this.stopFlag = stopFlag;
    this.testFault = testFault;
    this.image = null; // {bytes, window}: kept to send again after a fallback
    this.running = null; // the request whose answer has not arrived yet
    this.replaying = false;
    this.replayedImage = false;
    this.fallbackReason = null;
    this.start(preference);
  }

  start(backend) {
    const worker = new Worker(this.workerUrl, { type: 'module' });
    this.worker = worker;
    // A replaced worker may still have messages in flight: they are dropped.
    worker.onmessage = ({ data }) => { if (worker === this.worker) this.receive(data); };
    // A trap in the wasm instance or a failed module load ends up here.
    worker.onerror = (event) => {
      event.preventDefault();
      if (worker !== this.worker) return;
      this.receive({ type: this.backend === 'webgpu' ? 'gpu-fault' : 'error', message: event.message || 'the model worker stopped' });
    };
    this.backend = backend === 'cpu' ? 'cpu' : 'webgpu';
    this.worker.postMessage({ type: 'load', stopFlag: this.stopFlag, backend, testFault: this.testFault });
  }

  send(message, transfer = []) {
    if (message.type === 'image') {
      // The worker takes the bytes; keep a copy to send again after a fallback.
      this.image = { bytes: message.bytes.slice(0), window: message.window };
    }
    this.running = message;
    this.worker.postMessage(message, transfer);
  }

  terminate() {
    this.worker.terminate();
  }

  receive(data) {
    switch (data.type) {
      case 'gpu-fault':
        this.fallBack(data.message);
        return;
      case 'ready':
        this.backend = data.backend;
        data.backendLabel = data.backend === 'webgpu'
          ? `WebGPU (${data.adapter || 'adapter'})`
          : `CPU (wasm SIMD)${this.fallbackReason ?? (data.reason ? ` — ${data.reason}` : '')}`;
        if (this.replaying) {
          this.replaying = false;
          this.onMessage(data);
          this.replay();
          return;
        }
        break;
      case 'image':
        if (this.running?.type === 'image') {
          this.running = null;
          break;
        }
        // The image sent again after a fallback: the page already shows it.
        if (this.replayedImage) {
          this.replayedImage = false;
          return;
        }
        break;
      case 'result':
      case 'explained':
      case 'error':
        this.running = null;
        break;
    }
    this.onMessage(data);
  }

  fallBack(reason) {
    this.worker.terminate();
    this.fallbackReason = ` — WebGPU stopped: ${reason}`;
    this.onMessage({ type: 'notice', message: `WebGPU failed (${reason}); continuing on the CPU.` });
    this.replaying = true;
    this.start('cpu');
  }

  replay() {
    const running = this.running;
    if (this.image && running?.type !== 'image') {
      const bytes = this.image.bytes.slice(0);
      this.replayedImage = true;
      this.worker.postMessage({ type: 'image', bytes, window: this.image.window }, [bytes]);
    }
    if (running) {
      const message = running.type === 'image' ? { ...running, bytes: this.image.bytes.slice(0) } : running;
      this.worker.postMessage(message, running.type === 'image' ? [message.bytes] : []);
    }
  }
}
