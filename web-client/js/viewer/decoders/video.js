// VP8 video of moving areas (message 0x13): decoded by the browser's WebCodecs VideoDecoder,
// drawn in order with everything else (an entry waits for its decoded picture). One stream at
// a time: a key frame sets the decoder up for its rectangle's size; the frames after it are
// predicted from the one before.

const CODEC = 'vp8';
// A picture not decoded within this long fails the stream: drawing waits for it, and nothing
// after it may be drawn (or acknowledged) before.
const DECODE_TIMEOUT_MS = 2000;

// Whether this browser decodes VP8 through WebCodecs (false without WebCodecs, or when the
// page is not a secure context).
export async function videoSupported() {
  if (typeof globalThis.VideoDecoder !== 'function' || typeof globalThis.EncodedVideoChunk !== 'function') return false;
  try {
    const s = await globalThis.VideoDecoder.isConfigSupported({ codec: CODEC, codedWidth: 640, codedHeight: 480 });
    return Boolean(s && s.supported);
  } catch {
    return false;
  }
}

export class VideoStream {
  // `onError(e)` is called once when decoding fails: the session then asks for stills.
  // `onDrawn()` after each picture drawn.
  constructor(renderer, onError, onDrawn = () => {}) {
    this.renderer = renderer;
    this.onError = onError;
    this.onDrawn = onDrawn;
    this.decoder = null;
    this.size = null;
    // Entries waiting for their picture, in decoding order.
    this.pending = [];
    this.timestamp = 0;
    // Pictures drawn, for the page's statistics (and tests).
    this.framesDrawn = 0;
    // Decoded pictures not drawn yet (closed if the connection goes first).
    this.undrawn = new Set();
    this.failed = false;
  }

  decode(msg) {
    if (this.failed) return;
    const { rect, key, data } = msg;
    if (key && (!this.decoder || this.size.w !== rect.w || this.size.h !== rect.h)) this._open(rect);
    // A frame predicted from a picture this decoder never had: nothing to draw it from, and
    // the area would stay stale while the proxy counts it drawn.
    if (!this.decoder || this.size.w !== rect.w || this.size.h !== rect.h) {
      this._fail(new Error('a video frame without its stream'));
      return;
    }
    const op = { ready: null, draw: null, picture: null };
    op.ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => this._fail(new Error('a video frame was not decoded in time')), DECODE_TIMEOUT_MS);
      this.pending.push({ op, resolve: () => { clearTimeout(timer); resolve(); }, reject: (e) => { clearTimeout(timer); reject(e); } });
    });
    op.draw = () => {
      this.renderer.ctx.drawImage(op.picture, rect.x, rect.y, rect.w, rect.h);
      op.picture.close();
      this.undrawn.delete(op.picture);
      this.framesDrawn += 1;
      this.onDrawn();
    };
    this.renderer.push(op);
    try {
      this.decoder.decode(new globalThis.EncodedVideoChunk({ type: key ? 'key' : 'delta', timestamp: this.timestamp++, data }));
    } catch (e) {
      this._fail(e);
    }
  }

  _open(rect) {
    this._closeDecoder(new Error('a new stream started'));
    this.size = { w: rect.w, h: rect.h };
    this.decoder = new globalThis.VideoDecoder({
      output: (picture) => {
        const p = this.pending.shift();
        if (!p) { picture.close(); return; }
        p.op.picture = picture;
        this.undrawn.add(picture);
        p.resolve();
      },
      error: (e) => this._fail(e),
    });
    this.decoder.configure({ codec: CODEC, codedWidth: rect.w, codedHeight: rect.h, optimizeForLatency: true });
  }

  _closeDecoder(why) {
    for (const p of this.pending.splice(0)) p.reject(why);
    if (this.decoder && this.decoder.state !== 'closed') this.decoder.close();
    this.decoder = null;
    this.size = null;
  }

  _fail(e) {
    if (this.failed) return;
    this.failed = true;
    this._closeDecoder(e);
    this.onError(e);
  }

  close() {
    this._closeDecoder(new Error('the connection closed'));
    for (const picture of this.undrawn) picture.close();
    this.undrawn.clear();
  }
}
