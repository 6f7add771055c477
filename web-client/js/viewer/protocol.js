// The display wire protocol (docs/display-protocol.md; protocol/src/display/ is the other
// end): binary WebSocket messages, little-endian, one message per WebSocket frame.

export const VERSION = 1;
export const MAX_CLIPBOARD = 256 * 1024;
// Largest clipboard image (a PNG file), in bytes.
export const MAX_CLIPBOARD_IMAGE = 1024 * 1024;
// Sound: Opus, 48 kHz stereo, 20 ms a packet.
export const AUDIO_RATE = 48000;
export const AUDIO_FRAME = 960;
const MAX_AUDIO_PACKET = 4000;
const MAX_VIDEO_FRAME = 16 << 20;
const MAX_CODE_LEN = 32;
// Uploads: chunks of at most MAX_FILE_CHUNK, never more than FILE_WINDOW beyond the progress
// the proxy told; names of at most MAX_FILE_NAME bytes. Downloads: the same sizes the other
// way, the window counted from what this viewer said it took. A listing has at most
// MAX_LISTED_FILES files.
export const MAX_FILE_CHUNK = 256 * 1024;
export const FILE_WINDOW = 4 * 1024 * 1024;
export const MAX_FILE_NAME = 255;
export const MAX_LISTED_FILES = 500;

export const Caps = Object.freeze({
  VIEW_ONLY: 1,
  CLIPBOARD_COPY_OUT: 2,
  CLIPBOARD_PASTE_IN: 4,
  FILE_UPLOAD: 8,
  FILE_DOWNLOAD: 16,
  SHADOW: 32,
  AUDIO: 64,
  VIDEO: 128,
  RECORDED: 256,
  RECORDED_INPUT: 512,
  FILE_LINKS: 1024,
  CLIPBOARD_IMAGES_IN: 2048,
  CLIPBOARD_IMAGES_OUT: 4096,
});

export const ImageFormat = Object.freeze({ PNG: 1, JPEG: 2, RGBA: 3, INDEXED: 4 });

const utf8 = new TextDecoder('utf-8', { fatal: true });
const utf8enc = new TextEncoder();

export class ProtocolError extends Error {}

class Reader {
  constructor(buf) {
    this.view = new DataView(buf);
    this.bytes = new Uint8Array(buf);
    this.pos = 0;
  }
  need(n) {
    if (this.pos + n > this.bytes.length) throw new ProtocolError('message truncated');
  }
  u8() { this.need(1); return this.view.getUint8(this.pos++); }
  u16() { this.need(2); const v = this.view.getUint16(this.pos, true); this.pos += 2; return v; }
  u32() { this.need(4); const v = this.view.getUint32(this.pos, true); this.pos += 4; return v; }
  // A u64 as a Number (exact up to 2^53: files far beyond any upload).
  u64() { this.need(8); const v = Number(this.view.getBigUint64(this.pos, true)); this.pos += 8; return v; }
  text16() { return utf8.decode(this.take(this.u16())); }
  take(n) { this.need(n); const b = this.bytes.subarray(this.pos, this.pos + n); this.pos += n; return b; }
  rect() { return { x: this.u16(), y: this.u16(), w: this.u16(), h: this.u16() }; }
  bytes32() { return this.take(this.u32()); }
  finish() {
    if (this.pos !== this.bytes.length) throw new ProtocolError(`${this.bytes.length - this.pos} trailing bytes`);
  }
}

// Decodes one server message from an ArrayBuffer; throws ProtocolError when malformed.
export function decodeServer(buf) {
  const r = new Reader(buf);
  const type = r.u8();
  let m;
  switch (type) {
    case 0x01: {
      const version = r.u16(), width = r.u16(), height = r.u16(), caps = r.u32();
      const maxFramesInFlight = r.u8();
      const name = utf8.decode(r.take(r.u8()));
      m = { type: 'hello', version, width, height, caps, maxFramesInFlight, name };
      break;
    }
    case 0x02: m = { type: 'resize', width: r.u16(), height: r.u16() }; break;
    case 0x03: m = { type: 'resizable', maxWidth: r.u16(), maxHeight: r.u16() }; break;
    case 0x10: { const rect = r.rect(); m = { type: 'fill', rect, rgba: Array.from(r.take(4)) }; break; }
    case 0x11: { const rect = r.rect(); const format = r.u8(); m = { type: 'image', rect, format, data: r.bytes32() }; break; }
    case 0x12: m = { type: 'copy', rect: r.rect(), srcX: r.u16(), srcY: r.u16() }; break;
    case 0x13: {
      const rect = r.rect();
      const key = r.u8();
      if (key > 1) throw new ProtocolError('bad key frame flag');
      const len = r.u32();
      if (len === 0 || len > MAX_VIDEO_FRAME || rect.w === 0 || rect.h === 0) throw new ProtocolError('bad video frame');
      m = { type: 'video', rect, key: key === 1, data: r.take(len) };
      break;
    }
    case 0x1f: m = { type: 'frameEnd', frame: r.u32(), inputSeq: r.u32() }; break;
    case 0x20: m = { type: 'cursor', hotX: r.u16(), hotY: r.u16(), png: r.bytes32() }; break;
    case 0x30: {
      const b = r.bytes32();
      if (b.length > MAX_CLIPBOARD) throw new ProtocolError('clipboard over the limit');
      m = { type: 'clipboard', text: utf8.decode(b) };
      break;
    }
    case 0x31: m = { type: 'pong', id: r.u32() }; break;
    case 0x32: m = { type: 'fileProgress', id: r.u32(), done: r.u64() }; break;
    case 0x33: {
      const id = r.u32();
      const sha256 = Array.from(r.take(32), (b) => b.toString(16).padStart(2, '0')).join('');
      m = { type: 'fileSaved', id, sha256, path: r.text16() };
      break;
    }
    case 0x34: m = { type: 'fileRefused', id: r.u32(), message: r.text16() }; break;
    case 0x35: {
      const out = r.u8();
      if (out > 1) throw new ProtocolError('bad clipboard direction');
      m = { type: 'clipboardRefused', out: out === 1, size: r.u32(), limit: r.u32() };
      break;
    }
    case 0x36: {
      const message = r.text16();
      const n = r.u16();
      if (n > MAX_LISTED_FILES) throw new ProtocolError('too many files listed');
      const files = [];
      for (let i = 0; i < n; i++) files.push({ name: r.text16(), size: r.u64(), modified: r.u64() });
      m = { type: 'fileList', message, files };
      break;
    }
    case 0x37: m = { type: 'fileStart', id: r.u32(), size: r.u64() }; break;
    case 0x38: {
      const id = r.u32();
      const data = r.bytes32();
      if (data.length > MAX_FILE_CHUNK) throw new ProtocolError('file chunk over the limit');
      m = { type: 'fileChunk', id, data };
      break;
    }
    case 0x39: {
      const id = r.u32();
      m = { type: 'fileDone', id, sha256: Array.from(r.take(32), (b) => b.toString(16).padStart(2, '0')).join('') };
      break;
    }
    case 0x3a: {
      const id = r.u32();
      const size = r.u64();
      m = { type: 'fileLink', id, size, token: Array.from(r.take(16), (b) => b.toString(16).padStart(2, '0')).join('') };
      break;
    }
    case 0x3b: {
      m = { type: 'fileUnlinked', id: r.u32() };
      break;
    }
    case 0x3c: {
      const png = r.bytes32();
      if (png.length > MAX_CLIPBOARD_IMAGE) throw new ProtocolError('clipboard image over the limit');
      m = { type: 'clipboardImage', png };
      break;
    }
    case 0x40: {
      const at = r.u32();
      const len = r.u16();
      if (len === 0 || len > MAX_AUDIO_PACKET) throw new ProtocolError('bad audio packet length');
      m = { type: 'audio', at, packet: r.take(len) };
      break;
    }
    // A newer proxy's message this viewer does not know: skipped (the protocol only adds).
    default: return { type: 'unknown', code: type };
  }
  r.finish();
  return m;
}

function writer(size) {
  const buf = new ArrayBuffer(size);
  return { buf, view: new DataView(buf), bytes: new Uint8Array(buf) };
}

// Client messages. Each returns an ArrayBuffer ready to send.
export function keyMessage(seq, down, keysym, code) {
  const c = utf8enc.encode(/^[A-Za-z0-9]{0,32}$/.test(code) ? code : '').subarray(0, MAX_CODE_LEN);
  const w = writer(11 + c.length);
  w.view.setUint8(0, 0x81);
  w.view.setUint32(1, seq >>> 0, true);
  w.view.setUint8(5, down ? 1 : 0);
  w.view.setUint32(6, keysym >>> 0, true);
  w.view.setUint8(10, c.length);
  w.bytes.set(c, 11);
  return w.buf;
}

export function pointerMessage(seq, x, y, buttons, wheelX, wheelY) {
  const w = writer(12);
  w.view.setUint8(0, 0x82);
  w.view.setUint32(1, seq >>> 0, true);
  w.view.setUint16(5, x, true);
  w.view.setUint16(7, y, true);
  w.view.setUint8(9, buttons & 0xff);
  w.view.setInt8(10, Math.max(-128, Math.min(127, wheelX)));
  w.view.setInt8(11, Math.max(-128, Math.min(127, wheelY)));
  return w.buf;
}

export function clipboardMessage(text) {
  let b = utf8enc.encode(text);
  if (b.length > MAX_CLIPBOARD) {
    // Cut on a character boundary.
    let end = MAX_CLIPBOARD;
    while (end > 0 && (b[end] & 0xc0) === 0x80) end--;
    b = b.subarray(0, end);
  }
  const w = writer(5 + b.length);
  w.view.setUint8(0, 0x83);
  w.view.setUint32(1, b.length, true);
  w.bytes.set(b, 5);
  return w.buf;
}

// An image for the desktop's clipboard: a PNG file's bytes (a Uint8Array), at most
// MAX_CLIPBOARD_IMAGE; null when it is larger.
export function clipboardImageMessage(png) {
  if (png.length > MAX_CLIPBOARD_IMAGE) return null;
  const w = writer(5 + png.length);
  w.view.setUint8(0, 0x92);
  w.view.setUint32(1, png.length, true);
  w.bytes.set(png, 5);
  return w.buf;
}

export function frameAckMessage(frame) {
  const w = writer(5);
  w.view.setUint8(0, 0x84);
  w.view.setUint32(1, frame >>> 0, true);
  return w.buf;
}

export function pingMessage(id) {
  const w = writer(5);
  w.view.setUint8(0, 0x85);
  w.view.setUint32(1, id >>> 0, true);
  return w.buf;
}

export function refreshMessage() {
  return new Uint8Array([0x86]).buffer;
}

// Asks the desktop to take this size (the proxy fits it to what the desktop can take).
export function resizeMessage(width, height) {
  const w = writer(5);
  w.view.setUint8(0, 0x87);
  w.view.setUint16(1, Math.max(0, Math.min(0xffff, Math.floor(width))), true);
  w.view.setUint16(3, Math.max(0, Math.min(0xffff, Math.floor(height))), true);
  return w.buf;
}

// Sends the desktop's sound (true) or stops it (muted).
export function audioMessage(enabled) {
  return new Uint8Array([0x88, enabled ? 1 : 0]).buffer;
}

// This viewer decodes VP8 (true): moving areas may come as video; false: stills only.
export function videoMessage(enabled) {
  return new Uint8Array([0x89, enabled ? 1 : 0]).buffer;
}

// Starts upload `id` of `size` bytes named `name` (cut to MAX_FILE_NAME bytes).
export function fileOpenMessage(id, size, name) {
  let n = utf8enc.encode(name);
  if (n.length > MAX_FILE_NAME) {
    let end = MAX_FILE_NAME;
    while (end > 0 && (n[end] & 0xc0) === 0x80) end--;
    n = n.subarray(0, end);
  }
  const w = writer(15 + n.length);
  w.view.setUint8(0, 0x8a);
  w.view.setUint32(1, id >>> 0, true);
  w.view.setBigUint64(5, BigInt(size), true);
  w.view.setUint16(13, n.length, true);
  w.bytes.set(n, 15);
  return w.buf;
}

// The next bytes of upload `id`: `slice`, a slice of the File being uploaded (at most
// MAX_FILE_CHUNK), after the message's header, as a Blob. The browser reads the file's bytes
// itself as it sends them, so the page holds no buffer of them.
export function fileDataBlob(id, slice) {
  if (slice.size > MAX_FILE_CHUNK) throw new RangeError('file chunk over the limit');
  const w = writer(9);
  w.view.setUint8(0, 0x8b);
  w.view.setUint32(1, id >>> 0, true);
  w.view.setUint32(5, slice.size, true);
  return new Blob([w.buf, slice]);
}

// Stops upload or download `id`.
export function fileCancelMessage(id) {
  const w = writer(5);
  w.view.setUint8(0, 0x8c);
  w.view.setUint32(1, id >>> 0, true);
  return w.buf;
}

// Asks for the files of the desktop this viewer may download (answered with a fileList).
export function fileListMessage() {
  return new Uint8Array([0x8d]).buffer;
}

// Downloads file `name` (of the list) as download `id`.
export function fileGetMessage(id, name) {
  const n = utf8enc.encode(name);
  if (n.length > MAX_FILE_NAME) throw new RangeError('file name over the limit');
  const w = writer(7 + n.length);
  w.view.setUint8(0, 0x8e);
  w.view.setUint32(1, id >>> 0, true);
  w.view.setUint16(5, n.length, true);
  w.bytes.set(n, 7);
  return w.buf;
}

// Starts upload `id` as fileOpenMessage does, its bytes to be sent as the body of a PUT to the
// link the proxy answers with (fileLink), or as FileData after a fileUnlinked.
export function filePutMessage(id, size, name) {
  const buf = fileOpenMessage(id, size, name);
  new DataView(buf).setUint8(0, 0x91);
  return buf;
}

// Downloads file `name` as download `id` over a link the browser fetches itself (fileLink), or
// as fileGet does when the link is not fetched in time.
export function fileFetchMessage(id, name) {
  const buf = fileGetMessage(id, name);
  new DataView(buf).setUint8(0, 0x90);
  return buf;
}

// This viewer has taken the first `done` bytes of download `id`.
export function fileTakenMessage(id, done) {
  const w = writer(13);
  w.view.setUint8(0, 0x8f);
  w.view.setUint32(1, id >>> 0, true);
  w.view.setBigUint64(5, BigInt(done), true);
  return w.buf;
}
