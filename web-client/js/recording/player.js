// RecordingPlayer: plays a session recording on a canvas with the viewer's own decoders and
// renderer: the messages are the ones the user's viewer received, drawn the same way.
//
//   const p = new RecordingPlayer({ canvas, index, load });   // index: GET /recordings/{id}
//   p.on('time', ({ t }) => ...);        // the position, in ms from the start
//   p.on('state', ({ playing }) => ...);
//   p.on('input', ({ t, text }) => ...); // a key pressed (input recorded), as text
//   p.on('error', (e) => ...);           // a chunk that cannot be played (tampered, gone)
//   await p.seek(ms);  p.play();  p.pause();  p.setSpeed(4);
//
// Seeking starts from the last key frame before the position (the index says where each is)
// and draws the screen the messages after it make, composed (compose.js: only what is still on
// the screen is drawn) where it can be, else each message without waiting; playing then draws
// each record at its time,
// faster or slower by the speed. Video after a seek waits for its next key frame (the key
// frame's still picture stands until then).
import { decode } from '../viewer/decoders/index.js';
import { VideoStream, videoSupported } from '../viewer/decoders/video.js';
import { Emitter } from '../viewer/events.js';
import * as P from '../viewer/protocol.js';
import { Renderer } from '../viewer/renderer.js';
import { compose, drawComposed } from './compose.js';
import { Kind, decodeInput, keyParts, keyText, parseChunk } from './format.js';

// How far ahead of the clock records are drawn in one go.
const TICK_MS = 15;

export class RecordingPlayer extends Emitter {
  // `load(n)`: resolves to chunk n's bytes (ArrayBuffer).
  constructor({ canvas, index, load }) {
    super();
    this.canvas = canvas;
    this.renderer = new Renderer(canvas);
    this.chunks = index.chunks;
    this.duration = index.recording.duration_ms;
    this.load = load;
    this.cache = new Map();
    this.speed = 1;
    this.t = 0;
    this.playing = false;
    // The next record to draw: chunk `n`, record `i`.
    this.at = { n: 0, i: 0 };
    this.video = null;
    this.videoOk = false;
    this._timer = null;
    this._epoch = 0;
    // Set by a seek: the first record drawn may be a key frame.
    this._startKey = false;
    // Video streams replaced while their pictures wait to be drawn.
    this._retired = new Set();
    // The play loop's token: a loop whose token is not the current one stops.
    this._run = 0;
    // The seek under way, if any: play() waits for it.
    this._seeking = null;
    this._videoChecked = videoSupported().then((ok) => { this.videoOk = ok; });
  }

  async _records(n) {
    if (!this.cache.has(n)) {
      this.cache.set(n, this.load(n).then(parseChunk));
      // Keep a few chunks: a seek back reuses them.
      if (this.cache.size > 16) this.cache.delete(this.cache.keys().next().value);
    }
    try {
      return await this.cache.get(n);
    } catch (e) {
      this.cache.delete(n);
      throw e;
    }
  }

  // Where to start drawing for position `t`: the last key frame at or before it, or the start.
  _startFor(t) {
    let best = { n: 0, offset: null, t: 0 };
    for (const c of this.chunks) {
      if (c.t_first > t) break;
      for (const [kt, offset] of c.keys) {
        if (kt <= t) best = { n: c.n, offset, t: kt };
      }
    }
    return best;
  }

  _reset() {
    this.renderer.clear();
    if (this.video) this.video.close();
    this.video = null;
    for (const v of this._retired) v.close();
    this._retired.clear();
  }

  _apply(rec) {
    if (rec.kind === Kind.MESSAGE) {
      this._message(rec.payload);
    } else if (rec.kind === Kind.KEY) {
      // A key frame starts a seek; in between, the stream draws what the user saw (the key
      // frame is the whole screen losslessly, which the user may not have had yet).
      if (!this._startKey) return;
      this._reset();
      for (const m of keyParts(rec.payload)) this._message(m);
    } else if (rec.kind === Kind.INPUT) {
      const i = decodeInput(rec.payload);
      if (i && i.type === 'key' && i.down) this.emit('input', { t: rec.t, text: keyText(i.keysym) });
    }
  }

  _message(buf) {
    this._draw(P.decodeServer(buf));
  }

  _draw(m) {
    switch (m.type) {
      case 'resize': this.renderer.resize(m.width, m.height); return;
      case 'fill':
      case 'copy':
      case 'image': decode(m, this.renderer); return;
      case 'video': {
        if (!this.videoOk) return;
        const v = this.video;
        // A stream of another size: a decoder of its own. Drawing all at once (a seek) queues
        // the old stream's pictures; its decoder closes once they are drawn.
        if (m.key && (!v || !v.size || v.size.w !== m.rect.w || v.size.h !== m.rect.h)) {
          if (v) {
            this._retired.add(v);
            this.renderer.then(() => { v.close(); this._retired.delete(v); });
          }
          const stream = new VideoStream(this.renderer, () => { if (this.video === stream) this.video = null; });
          this.video = stream;
        }
        if (this.video) this.video.decode(m);
        return;
      }
      default:
    }
  }

  // Hands `visit` every record up to time `t` from where the player is, moving on; false when
  // a later seek took over.
  async _walkUntil(t, epoch, visit) {
    while (this.at.n < this.chunks.length) {
      const recs = await this._records(this.at.n);
      if (epoch !== this._epoch) return false;
      while (this.at.i < recs.length) {
        const r = recs[this.at.i];
        if (r.t > t) return true;
        visit(r);
        this._startKey = false;
        this.at.i += 1;
      }
      this.at = { n: this.at.n + 1, i: 0 };
    }
    return true;
  }

  // Draws every record up to time `t` (without waiting between them).
  _drawUntil(t, epoch) {
    return this._walkUntil(t, epoch, (r) => this._apply(r));
  }

  // The drawing messages of every record up to time `t` (parsed; a key frame at the start gives
  // its parts), moving on as drawing would; null when a later seek took over.
  async _collectUntil(t, epoch) {
    const out = [];
    const ok = await this._walkUntil(t, epoch, (r) => {
      if (r.kind === Kind.MESSAGE) {
        out.push(P.decodeServer(r.payload));
      } else if (r.kind === Kind.KEY && this._startKey) {
        out.length = 0;
        for (const m of keyParts(r.payload)) out.push(P.decodeServer(m));
      } else if (r.kind === Kind.INPUT) {
        this._apply(r);
      }
    });
    return ok ? out : null;
  }

  // Shows the screen at `t` ms; resolves once it is drawn (or a later seek took over).
  seek(t) {
    const p = this._seek(t).finally(() => {
      if (this._seeking !== p) return;
      this._seeking = null;
      // Playing before the seek (or asked to play during it): it plays on from here.
      if (this.playing && !this._timer) this.play();
    });
    this._seeking = p;
    return p;
  }

  async _seek(t) {
    const epoch = ++this._epoch;
    this._stopClock();
    this.t = Math.max(0, Math.min(t, this.duration));
    await this._videoChecked;
    if (this.chunks.length === 0) {
      this.emit('time', { t: 0 });
      return;
    }
    const start = this._startFor(this.t);
    // The chunks up to the position, asked for at once rather than one after another.
    for (let n = start.n + 1; n < this.chunks.length && n < start.n + 15 && this.chunks[n].t_first <= this.t; n++) {
      this._records(n).catch(() => {});
    }
    const recs = await this._records(start.n);
    if (epoch !== this._epoch) return;
    this._reset();
    this._startKey = true;
    this.at = { n: start.n, i: start.offset === null ? 0 : Math.max(0, recs.findIndex((r) => r.offset === start.offset)) };
    const messages = await this._collectUntil(this.t, epoch);
    if (messages === null) return;
    const screen = compose(messages);
    if (screen) {
      drawComposed(screen, this.renderer);
    } else {
      for (const m of messages) this._draw(m);
    }
    // Drawn once the renderer reaches this point (a later seek clears the queue: it takes over).
    await new Promise((resolve) => {
      this.renderer.then(resolve);
      const poll = setInterval(() => { if (epoch !== this._epoch) { clearInterval(poll); resolve(); } }, 100);
      this.renderer.then(() => clearInterval(poll));
    });
    if (epoch !== this._epoch) return;
    this.emit('time', { t: this.t });
  }

  play() {
    if (this.chunks.length === 0) return;
    if (this._seeking) {
      this.playing = true;
      this.emit('state', { playing: true });
      // The seek resumes playing when it is done.
      return;
    }
    if (this._timer) return;
    if (this.t >= this.duration) {
      // From the start again (the seek plays on when it is done).
      this.playing = true;
      this.emit('state', { playing: true });
      this.seek(0);
      return;
    }
    this.playing = true;
    this.emit('state', { playing: true });
    const epoch = this._epoch;
    const run = ++this._run;
    let wall = performance.now();
    const live = () => epoch === this._epoch && run === this._run && this.playing;
    const tick = async () => {
      this._timer = null;
      if (!live()) return;
      const now = performance.now();
      this.t = Math.min(this.duration, this.t + (now - wall) * this.speed);
      wall = now;
      try {
        await this._drawUntil(this.t, epoch);
      } catch (e) {
        if (!live()) return;
        this.pause();
        this.emit('error', e);
        return;
      }
      if (!live()) return;
      this.emit('time', { t: this.t });
      if (this.t >= this.duration) {
        this.pause();
        return;
      }
      this._timer = setTimeout(tick, TICK_MS);
    };
    this._timer = setTimeout(tick, 0);
  }

  pause() {
    this._run += 1;
    this._stopClock();
    if (this.playing) {
      this.playing = false;
      this.emit('state', { playing: false });
    }
  }

  _stopClock() {
    if (this._timer) clearTimeout(this._timer);
    this._timer = null;
  }

  setSpeed(s) {
    this.speed = Math.max(0.25, Math.min(16, Number(s) || 1));
  }

  close() {
    this._epoch += 1;
    this.pause();
    this._reset();
  }
}
