// Draws on the canvas in the order messages arrived. Images decode in parallel as soon as they
// arrive (createImageBitmap), but an entry is drawn only when everything before it has been:
// a copy never reads pixels an earlier image has not yet written.

export class Renderer {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d', { alpha: false });
    this.queue = [];
    this.waiting = false;
    this.width = canvas.width;
    this.height = canvas.height;
    this.onDraw = null; // called after each drawing operation
  }

  // Adds an operation: { ready: Promise|null, draw: () => void }.
  push(op) {
    this.queue.push(op);
    this._run();
  }

  _run() {
    while (!this.waiting && this.queue.length > 0) {
      const op = this.queue[0];
      if (op.ready && !op.done) {
        this.waiting = true;
        op.ready.then(
          () => { op.done = true; this.waiting = false; this._run(); },
          (e) => { console.error('atrium viewer: an image did not decode', e); op.failed = true; op.done = true; this.waiting = false; this._run(); },
        );
        return;
      }
      this.queue.shift();
      if (!op.failed) op.draw();
      if (this.onDraw) this.onDraw();
    }
  }

  resize(width, height) {
    this.push({
      ready: null,
      draw: () => {
        this.width = width;
        this.height = height;
        this.canvas.width = width;
        this.canvas.height = height;
        this.ctx.fillStyle = '#000';
        this.ctx.fillRect(0, 0, width, height);
      },
    });
  }

  // Runs `fn` once everything queued before has been drawn.
  then(fn) {
    this.push({ ready: null, draw: fn });
  }

  // Drops what is queued (on disconnect).
  clear() {
    this.queue = [];
    this.waiting = false;
  }
}
