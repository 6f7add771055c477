// The WebSocket under a display session: binary messages in, binary messages out, with byte
// counts for the statistics.
import { Emitter } from './events.js';

export class Transport extends Emitter {
  constructor(url) {
    super();
    this.url = url;
    this.ws = null;
    this.bytesIn = 0;
    this.bytesOut = 0;
  }

  open() {
    const ws = new WebSocket(this.url);
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => this.emit('open');
    ws.onmessage = (e) => {
      if (!(e.data instanceof ArrayBuffer)) {
        this.close(1003, 'text messages are not part of the display protocol');
        return;
      }
      this.bytesIn += e.data.byteLength;
      this.emit('message', e.data);
    };
    ws.onclose = (e) => {
      this.ws = null;
      this.emit('close', { code: e.code, reason: e.reason, clean: e.wasClean });
    };
    ws.onerror = () => this.emit('error');
    this.ws = ws;
  }

  get open_() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  // Sends one message: an ArrayBuffer, or a Blob (an upload's chunk, read by the browser).
  send(buf) {
    if (!this.open_) return false;
    this.bytesOut += buf instanceof Blob ? buf.size : buf.byteLength;
    this.ws.send(buf);
    return true;
  }

  close(code = 1000, reason = '') {
    if (this.ws) this.ws.close(code, reason);
  }
}
