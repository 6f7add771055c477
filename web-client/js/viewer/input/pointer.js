// Pointer: absolute position in desktop pixels (the canvas may be scaled by CSS), buttons,
// and wheel steps. Moves are coalesced to one per animation frame.

// DOM `buttons` bits (left, right, middle, back, forward) to the protocol's (left, middle,
// right, back, forward).
function protocolButtons(b) {
  return (b & 1) | ((b & 4) >> 1) | ((b & 2) << 1) | (b & 8) | (b & 16);
}

const WHEEL_STEP_PX = 50;

export class Pointer {
  constructor(canvas, send) {
    this.canvas = canvas;
    this.send = send; // (x, y, buttons, wheelX, wheelY)
    this.x = 0;
    this.y = 0;
    this.buttons = 0;
    this.pendingMove = false;
    this.wheelAcc = [0, 0];
    this._handlers = {
      mousemove: (e) => this._move(e),
      mousedown: (e) => this._button(e),
      mouseup: (e) => this._button(e),
      wheel: (e) => this._wheel(e),
      contextmenu: (e) => e.preventDefault(),
    };
  }

  attach() {
    for (const [name, fn] of Object.entries(this._handlers)) {
      this.canvas.addEventListener(name, fn, { passive: false });
    }
  }

  detach() {
    for (const [name, fn] of Object.entries(this._handlers)) this.canvas.removeEventListener(name, fn);
  }

  _position(e) {
    const r = this.canvas.getBoundingClientRect();
    const sx = this.canvas.width / (r.width || 1);
    const sy = this.canvas.height / (r.height || 1);
    this.x = Math.max(0, Math.min(this.canvas.width - 1, Math.floor((e.clientX - r.left) * sx)));
    this.y = Math.max(0, Math.min(this.canvas.height - 1, Math.floor((e.clientY - r.top) * sy)));
  }

  _move(e) {
    this._position(e);
    this.buttons = protocolButtons(e.buttons);
    if (this.pendingMove) return;
    this.pendingMove = true;
    requestAnimationFrame(() => {
      this.pendingMove = false;
      this.send(this.x, this.y, this.buttons, 0, 0);
    });
  }

  _button(e) {
    e.preventDefault();
    this.canvas.focus();
    this._position(e);
    this.buttons = protocolButtons(e.buttons);
    this.send(this.x, this.y, this.buttons, 0, 0);
  }

  _wheel(e) {
    e.preventDefault();
    this._position(e);
    const scale = e.deltaMode === 1 ? WHEEL_STEP_PX / 3 : e.deltaMode === 2 ? WHEEL_STEP_PX * 10 : 1;
    this.wheelAcc[0] += e.deltaX * scale;
    this.wheelAcc[1] += e.deltaY * scale;
    const steps = this.wheelAcc.map((a) => Math.trunc(a / WHEEL_STEP_PX));
    if (steps[0] === 0 && steps[1] === 0) return;
    this.wheelAcc = this.wheelAcc.map((a, i) => a - steps[i] * WHEEL_STEP_PX);
    this.send(this.x, this.y, this.buttons, steps[0], steps[1]);
  }
}
