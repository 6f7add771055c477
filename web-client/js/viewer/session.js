// DisplaySession: one connection to a desktop's display, the public API that pages use.
//
//   const s = new DisplaySession({ url, canvas });
//   s.on('connected', ({ width, height, name, viewOnly, clipboardIn, clipboardOut, audio }) => ...);
//   s.on('disconnected', ({ code, reason, clean }) => ...);
//   s.on('resize', ({ width, height }) => ...);
//   s.on('resizable', ({ maxWidth, maxHeight }) => ...);   // this viewer may call requestSize
//   s.on('clipboard', ({ text }) => ...);
//   s.on('clipboardImage', ({ png }) => ...);            // a PNG file's bytes
//   s.on('clipboardRefused', ({ out, size, limit }) => ...);   // over the policy's limit
//   s.on('audio', ({ at, packet }) => ...);   // Opus packets, once setAudio(true)
//   s.on('stats', ({ fps, bytesPerSecond, latencyMs, inputLatencyMs, videoFps, videoFrames }) => ...);
//   s.on('frame', ({ frame, inputSeq }) => ...);
//   s.on('upload', ({ id, name, size, done, state, message, path, sha256 }) => ...);
//   s.connect();  s.sendClipboard(text);  s.sendClipboardImage(png);  s.sendCtrlAltDel();  s.requestSize(w, h);
//   s.setAudio(on);  s.stillHere();  s.disconnect();
//   s.upload(file);  s.cancelUpload(id);   // when s.fileUpload (see viewer/uploads.js)
//   s.on('download', ({ id, name, size, done, checked, state, message, sha256, blob }) => ...);
//   s.on('fileList', ({ message, files }) => ...);
//   s.listFiles();  s.download({ name, size });  s.cancelDownload(id);   // when s.fileDownload
//                                                                       // (viewer/downloads.js)
//   s.lastInputAt   // performance.now() of the last key or pointer input sent (or of connect)
//
// `url` is the WebSocket URL with its ticket (`wss://.../ws/{vm}?ticket=...`), as the broker
// returns it. A ticket is accepted once: reconnecting needs a new one from the broker.
//
// Moving areas come as VP8 video where the browser decodes it (WebCodecs); elsewhere, or if
// decoding fails, the viewer asks for still images only and nothing else changes.
import { decode } from './decoders/index.js';
import { VideoStream, videoSupported } from './decoders/video.js';
import { Emitter } from './events.js';
import { Keyboard } from './input/keyboard.js';
import { Pointer } from './input/pointer.js';
import * as P from './protocol.js';
import { Renderer } from './renderer.js';
import { Stats } from './stats.js';
import { Transport } from './transport.js';
import { Downloader, frameLink, linkUrl } from './downloads.js';
import { bestSaver } from './savers.js';
import { Uploader, putLink } from './uploads.js';

const PING_INTERVAL_MS = 2000;
// Frame acknowledgements wait at most this long for an input event to travel with.
const ACK_DELAY_MS = 1000;
// A frame this large is acknowledged at once: its timing measures the throughput.
const ACK_NOW_BYTES = 16 * 1024;
// Video is offered again this long after decoding failed, at most this many times in all.
const VIDEO_RETRY_MS = 5000;
const VIDEO_TRIES = 3;

export class DisplaySession extends Emitter {
  constructor({ url, canvas, keyboardTarget = null, statsIntervalMs = 1000, saver = bestSaver() }) {
    super();
    if (!url || !canvas) throw new Error('DisplaySession needs { url, canvas }');
    this.url = url;
    this.canvas = canvas;
    if (!canvas.hasAttribute('tabindex')) canvas.tabIndex = 0;
    this.renderer = new Renderer(canvas);
    this.stats = new Stats();
    this.statsIntervalMs = statsIntervalMs;
    this.keyboard = new Keyboard(keyboardTarget || canvas, (down, keysym, code) => this._key(down, keysym, code));
    this.pointer = new Pointer(canvas, (x, y, b, wx, wy) => this._pointer(x, y, b, wx, wy));
    this.transport = null;
    this.connected = false;
    this.width = 0;
    this.height = 0;
    this.name = '';
    this.caps = 0;
    this.maxFramesInFlight = 0;
    // Set when the desktop's screen can take this viewer's size: the largest it takes.
    this.maxSize = null;
    this._seq = 0;
    this.lastInputAt = performance.now();
    this._frameBytes = 0;
    this._unacked = 0;
    this._ackFrame = 0;
    this._ackTimer = null;
    this._pings = new Map();
    this._pingId = 0;
    this._lastPing = 0;
    this._statsTimer = null;
    this.video = null;
    // Files move over links the browser uses itself (a download's frame, an upload's PUT),
    // where this page can reach them.
    // The proxy says in its Hello whether it takes links (caps FILE_LINKS).
    this._linkable = typeof document !== 'undefined' && linkUrl(url, '0'.repeat(32)) !== null;
    this.uploader = new Uploader((buf) => (this.transport ? this.transport.send(buf) : false));
    this.uploader.on('change', (u) => this.emit('upload', u));
    this.downloader = new Downloader((buf) => (this.transport ? this.transport.send(buf) : false), saver);
    this.downloader.on('change', (d) => this.emit('download', d));
    this.downloader.on('list', (l) => this.emit('fileList', l));
  }

  get viewOnly() { return (this.caps & P.Caps.VIEW_ONLY) !== 0; }
  get clipboardIn() { return (this.caps & P.Caps.CLIPBOARD_PASTE_IN) !== 0; }
  get clipboardOut() { return (this.caps & P.Caps.CLIPBOARD_COPY_OUT) !== 0; }
  get clipboardImagesIn() { return (this.caps & P.Caps.CLIPBOARD_IMAGES_IN) !== 0; }
  get audio() { return (this.caps & P.Caps.AUDIO) !== 0; }
  get fileUpload() { return (this.caps & P.Caps.FILE_UPLOAD) !== 0 && !this.viewOnly; }
  get fileDownload() { return (this.caps & P.Caps.FILE_DOWNLOAD) !== 0 && !this.viewOnly; }

  connect() {
    if (this.transport) return;
    const t = new Transport(this.url);
    this.transport = t;
    t.on('message', (buf) => this._message(buf));
    t.on('close', (e) => this._closed(e));
    t.open();
  }

  disconnect() {
    if (this.transport) this.transport.close(1000, 'the viewer left');
  }

  // Sends text to the guest's clipboard; false when the ticket does not allow it.
  sendClipboard(text) {
    if (!this.connected || !this.clipboardIn) return false;
    return this.transport.send(P.clipboardMessage(String(text)));
  }

  // Sends an image (a PNG file's bytes) to the guest's clipboard; false when the ticket does
  // not allow it (pasting, or images) or it is over P.MAX_CLIPBOARD_IMAGE.
  sendClipboardImage(png) {
    if (!this.connected || !this.clipboardIn || !this.clipboardImagesIn) return false;
    const m = P.clipboardImageMessage(png);
    return m !== null && this.transport.send(m);
  }

  sendCtrlAltDel() {
    if (!this.connected || this.viewOnly) return false;
    this.keyboard.combo([['ControlLeft', 0xffe3], ['AltLeft', 0xffe9], ['Delete', 0xffff]]);
    return true;
  }

  // Asks for the desktop's sound (true) or stops it (muted); false when the ticket or the
  // desktop offers none.
  setAudio(enabled) {
    if (!this.connected || !this.audio) return false;
    return this.transport.send(P.audioMessage(Boolean(enabled)));
  }

  // Asks the desktop's screen to take this size; false when this viewer may not (the screen
  // cannot change size, or the viewer only watches). The answer is a 'resize' event.
  requestSize(width, height) {
    if (!this.connected || !this.maxSize || this.viewOnly) return false;
    return this.transport.send(P.resizeMessage(width, height));
  }

  // Uploads a File into the desktop (its ~/Transfer); returns the upload's id, or null when
  // this viewer may not upload. Progress and the end come as 'upload' events.
  upload(file) {
    if (!this.connected || !this.fileUpload) return null;
    return this.uploader.add(file);
  }

  cancelUpload(id) {
    this.uploader.cancel(id);
  }

  // Asks for the files of the desktop's ~/Transfer this viewer may download; they come as a
  // 'fileList' event. False when this viewer may not download.
  listFiles() {
    if (!this.connected || !this.fileDownload) return false;
    return this.downloader.list();
  }

  // Downloads a file of the list; returns the download's id, or null when this viewer may not
  // download. Progress and the end (with the file as a Blob) come as 'download' events.
  download(file) {
    if (!this.connected || !this.fileDownload) return null;
    return this.downloader.get(file);
  }

  cancelDownload(id) {
    this.downloader.cancel(id);
  }

  // Tells the desktop that the user is here, changing nothing in it: the pointer where it is,
  // sent again as input (a session's idle time counts from its last input). False when this
  // viewer sends no input.
  stillHere() {
    if (!this.connected || this.viewOnly) return false;
    this._pointer(this.pointer.x, this.pointer.y, this.pointer.buttons, 0, 0);
    return true;
  }

  // Asks for a whole new picture (after the canvas was lost).
  refresh() {
    if (this.connected) this.transport.send(P.refreshMessage());
  }

  focus() {
    this.canvas.focus();
  }

  _closed(e) {
    const was = this.connected;
    this.connected = false;
    this.transport = null;
    this.maxSize = null;
    this.renderer.clear();
    if (this.video) this.video.close();
    this.video = null;
    if (this._ackTimer) clearTimeout(this._ackTimer);
    this._ackTimer = null;
    this._unacked = 0;
    if (this._statsTimer) clearInterval(this._statsTimer);
    this._statsTimer = null;
    this.uploader.closed();
    this.downloader.closed();
    if (was) {
      this.keyboard.detach();
      this.pointer.detach();
    }
    this.emit('disconnected', e);
  }

  _protocolError(e) {
    console.error('atrium viewer:', e);
    if (this.transport) this.transport.close(1002, String(e.message).slice(0, 100));
  }

  _message(buf) {
    let m;
    try {
      m = P.decodeServer(buf);
    } catch (e) {
      this._protocolError(e);
      return;
    }
    switch (m.type) {
      case 'hello': return this._hello(m);
      case 'resize':
        this.width = m.width;
        this.height = m.height;
        this.renderer.resize(m.width, m.height);
        this.emit('resize', { width: m.width, height: m.height });
        return;
      case 'resizable':
        this.maxSize = { width: m.maxWidth, height: m.maxHeight };
        this.emit('resizable', { maxWidth: m.maxWidth, maxHeight: m.maxHeight });
        return;
      case 'fill':
      case 'copy':
      case 'image':
        this._frameBytes += buf.byteLength;
        try {
          decode(m, this.renderer);
        } catch (e) {
          this._protocolError(e);
        }
        return;
      case 'video':
        this._frameBytes += buf.byteLength;
        if (this.video) this.video.decode(m);
        return;
      case 'frameEnd': return this._frameEnd(m, buf.byteLength);
      case 'cursor': return this._cursor(m);
      case 'clipboard': return this.emit('clipboard', { text: m.text });
      case 'clipboardImage': return this.emit('clipboardImage', { png: m.png });
      case 'clipboardRefused': return this.emit('clipboardRefused', { out: m.out, size: m.size, limit: m.limit });
      case 'audio': return this.emit('audio', { at: m.at, packet: m.packet });
      case 'fileSaved':
        return this.uploader.message(m);
      // Uploads and downloads have ids of their own: each takes only its own.
      case 'fileProgress':
      case 'fileRefused':
      case 'fileLink':
        this.uploader.message(m);
        return this.downloader.message(m);
      case 'fileUnlinked':
        return this.uploader.message(m);
      case 'fileList':
      case 'fileStart':
      case 'fileChunk':
      case 'fileDone':
        return this.downloader.message(m);
      case 'pong': {
        const sent = this._pings.get(m.id);
        if (sent !== undefined) {
          this._pings.delete(m.id);
          this.stats.pong(performance.now() - sent);
        }
        return;
      }
      default: return undefined;
    }
  }

  _hello(m) {
    if (m.version !== P.VERSION) {
      this._protocolError(new Error(`protocol version ${m.version} (this viewer speaks ${P.VERSION})`));
      return;
    }
    this.width = m.width;
    this.height = m.height;
    this.name = m.name;
    this.caps = m.caps;
    this.maxFramesInFlight = m.maxFramesInFlight;
    // Files go over links where this page can reach them and the proxy takes them.
    const links = this._linkable && (m.caps & P.Caps.FILE_LINKS) !== 0;
    const linkTo = (token) => linkUrl(this.url, token);
    this.uploader.links = links ? { url: linkTo, put: putLink } : null;
    this.downloader.links = links ? { url: linkTo, open: frameLink } : null;
    this.connected = true;
    this.renderer.resize(m.width, m.height);
    if (!this.viewOnly) {
      this.keyboard.attach();
      this.pointer.attach();
    }
    this._statsTimer = setInterval(() => this.emit('stats', this.stats.snapshot(performance.now())), this.statsIntervalMs);
    if ((m.caps & P.Caps.VIDEO) !== 0) this._offerVideo();
    this.emit('connected', {
      width: m.width, height: m.height, name: m.name, caps: m.caps,
      viewOnly: this.viewOnly, clipboardIn: this.clipboardIn, clipboardOut: this.clipboardOut,
      clipboardImagesIn: this.clipboardImagesIn,
      audio: this.audio, fileUpload: this.fileUpload, fileDownload: this.fileDownload,
    });
  }

  // Tells the proxy this viewer decodes video, once the browser is known to. If decoding
  // fails (a corrupt frame, the browser taking the decoder back from a background tab), the
  // viewer asks for still images and a whole new picture, and offers video again a little later,
  // up to VIDEO_TRIES times a connection.
  async _offerVideo(tries = 1) {
    const t = this.transport;
    if (!(await videoSupported()) || this.transport !== t || !this.connected) return;
    if (this.video) this.video.close();
    this.video = new VideoStream(this.renderer, (e) => {
      console.warn(`atrium viewer: video decoding failed (${tries} of ${VIDEO_TRIES}); still images for now`, e);
      if (this.transport !== t || !this.connected) return;
      t.send(P.videoMessage(false));
      t.send(P.refreshMessage());
      if (tries < VIDEO_TRIES) setTimeout(() => { if (this.transport === t) this._offerVideo(tries + 1); }, VIDEO_RETRY_MS);
    }, () => this.stats.video(performance.now()));
    t.send(P.videoMessage(true));
  }

  _frameEnd(m, size) {
    const bytes = this._frameBytes + size;
    this._frameBytes = 0;
    this.renderer.then(() => {
      if (!this.transport) return;
      this._drawn(m.frame, bytes);
      const now = performance.now();
      this.stats.frame(now, bytes);
      this.stats.frameForInput(m.inputSeq, now);
      this.emit('frame', { frame: m.frame, inputSeq: m.inputSeq, bytes });
    });
  }

  // Every message wakes the server, so a drawn frame is acknowledged lazily: at once when the
  // server's window is full (it sends nothing more until then) or the frame was large, else
  // together with the next input event, or after ACK_DELAY_MS. An acknowledgement covers every
  // frame before it.
  _drawn(frame, bytes) {
    this._unacked += 1;
    this._ackFrame = frame;
    if (this._unacked >= Math.max(1, this.maxFramesInFlight) || bytes >= ACK_NOW_BYTES) {
      this._flushAck();
    } else if (this._ackTimer === null) {
      this._ackTimer = setTimeout(() => this._flushAck(), ACK_DELAY_MS);
    }
  }

  _flushAck() {
    if (this._ackTimer !== null) clearTimeout(this._ackTimer);
    this._ackTimer = null;
    if (this._unacked === 0 || !this.transport) return;
    this._unacked = 0;
    this.transport.send(P.frameAckMessage(this._ackFrame));
  }

  _cursor(m) {
    if (m.png.length === 0) {
      this.canvas.style.cursor = 'none';
      return;
    }
    let s = '';
    for (const b of m.png) s += String.fromCharCode(b);
    this.canvas.style.cursor = `url(data:image/png;base64,${btoa(s)}) ${m.hotX} ${m.hotY}, auto`;
  }

  _nextSeq() {
    this._seq = (this._seq + 1) >>> 0;
    const now = performance.now();
    this.stats.input(this._seq, now);
    // Measure the round trip while the user is active only: an idle viewer sends nothing.
    if (now - this._lastPing >= PING_INTERVAL_MS) {
      this._lastPing = now;
      this._pingId = (this._pingId + 1) >>> 0;
      this._pings.set(this._pingId, now);
      if (this._pings.size > 16) this._pings.delete(this._pings.keys().next().value);
      this.transport.send(P.pingMessage(this._pingId));
    }
    return this._seq;
  }

  _key(down, keysym, code) {
    if (!this.connected || this.viewOnly) return;
    this.lastInputAt = performance.now();
    this._flushAck();
    this.transport.send(P.keyMessage(this._nextSeq(), down, keysym, code));
  }

  _pointer(x, y, buttons, wheelX, wheelY) {
    if (!this.connected || this.viewOnly) return;
    this.lastInputAt = performance.now();
    this._flushAck();
    this.transport.send(P.pointerMessage(this._nextSeq(), x, y, buttons, wheelX, wheelY));
  }
}
