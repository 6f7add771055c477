// Keyboard capture: each key is sent with its DOM code (the physical key; the guest applies
// its own layout) and the keysym of what it types (for servers without scancodes). The
// browser's own handling is suppressed while the target has focus. Keys still held when focus
// leaves are released.
import { keysymOf } from './keysym.js';

export class Keyboard {
  constructor(target, send) {
    this.target = target;
    this.send = send; // (down, keysym, code)
    this.down = new Map(); // code -> keysym
    this._onKeyDown = (e) => this._key(e, true);
    this._onKeyUp = (e) => this._key(e, false);
    this._onBlur = () => this.releaseAll();
  }

  attach() {
    this.target.addEventListener('keydown', this._onKeyDown);
    this.target.addEventListener('keyup', this._onKeyUp);
    this.target.addEventListener('blur', this._onBlur);
  }

  detach() {
    this.releaseAll();
    this.target.removeEventListener('keydown', this._onKeyDown);
    this.target.removeEventListener('keyup', this._onKeyUp);
    this.target.removeEventListener('blur', this._onBlur);
  }

  _key(e, down) {
    if (e.isComposing) return;
    e.preventDefault();
    e.stopPropagation();
    const code = e.code || '';
    let keysym = keysymOf(e.key, code);
    if (!down && this.down.has(code)) keysym = this.down.get(code); // release what was pressed
    if (down) this.down.set(code, keysym);
    else this.down.delete(code);
    if (keysym === 0 && code === '') return;
    this.send(down, keysym, code);
  }

  releaseAll() {
    for (const [code, keysym] of this.down) this.send(false, keysym, code);
    this.down.clear();
  }

  // Presses a combination (for example Ctrl+Alt+Del) and releases it in reverse order.
  combo(keys) {
    for (const [code, keysym] of keys) this.send(true, keysym, code);
    for (const [code, keysym] of [...keys].reverse()) this.send(false, keysym, code);
  }
}
