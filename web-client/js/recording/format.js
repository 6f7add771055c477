// Session recordings as the broker serves them (protocol/src/recording.rs; docs/recordings.md):
// chunks of timed records.
//
//   chunk  = "ATRC" version:u8 t0:u32 record*       (t0 little-endian)
//   record = kind:u8 dt:varint len:varint payload[len]
//
// A record's time (ms from the recording's start) is the one before it (t0 for the first) plus
// dt; varints are LEB128, at most 32 bits.
//
// A MESSAGE record is one display message as the viewer received it; a KEY record is a key
// frame, `(len:u32 message[len])*`, drawing the whole screen from nothing; an INPUT record is
// one key or pointer message the viewer sent.

export const Kind = Object.freeze({ MESSAGE: 0, KEY: 1, INPUT: 2 });
const MAGIC = [0x41, 0x54, 0x52, 0x43];
const VERSION = 1;

export class FormatError extends Error {}

// A varint at `at`: [value, bytes it took]; throws when it is malformed.
function varint(bytes, at) {
  let v = 0;
  for (let i = 0; i < 5; i++) {
    if (at + i >= bytes.length) throw new FormatError(`a varint at byte ${at} is cut short`);
    const b = bytes[at + i];
    v += (b & 0x7f) * 2 ** (7 * i);
    if ((b & 0x80) === 0) {
      if ((b === 0 && i > 0) || v > 0xffffffff) throw new FormatError(`a bad varint at byte ${at}`);
      return [v, i + 1];
    }
  }
  throw new FormatError(`a varint at byte ${at} is too long`);
}

// The records of a chunk (an ArrayBuffer): [{ t, kind, offset, payload: ArrayBuffer }].
export function parseChunk(buf) {
  const bytes = new Uint8Array(buf);
  const view = new DataView(buf);
  if (bytes.length <= 9 || MAGIC.some((b, i) => bytes[i] !== b) || bytes[4] !== VERSION) {
    throw new FormatError('not a recording chunk');
  }
  let t = view.getUint32(5, true);
  const out = [];
  let at = 9;
  while (at < bytes.length) {
    const kind = bytes[at];
    if (kind > Kind.INPUT) throw new FormatError(`record at byte ${at} has an unknown kind`);
    const [dt, n1] = varint(bytes, at + 1);
    const [len, n2] = varint(bytes, at + 1 + n1);
    const start = at + 1 + n1 + n2;
    if (start + len > bytes.length) throw new FormatError(`record at byte ${at} is cut short`);
    t += dt;
    out.push({ t, kind, offset: at, payload: buf.slice(start, start + len) });
    at = start + len;
  }
  return out;
}

// The messages of a key frame's payload.
export function keyParts(payload) {
  const view = new DataView(payload);
  const out = [];
  let at = 0;
  while (at < payload.byteLength) {
    if (at + 4 > payload.byteLength) throw new FormatError('a key frame is cut short');
    const len = view.getUint32(at, true);
    if (len === 0 || at + 4 + len > payload.byteLength) throw new FormatError('a key frame is malformed');
    out.push(payload.slice(at + 4, at + 4 + len));
    at += 4 + len;
  }
  return out;
}

// A recorded input message: { type: 'key', down, keysym } or { type: 'pointer', x, y,
// buttons }, or null for what it is not.
export function decodeInput(payload) {
  const v = new DataView(payload);
  if (payload.byteLength >= 11 && v.getUint8(0) === 0x81) {
    return { type: 'key', down: v.getUint8(5) === 1, keysym: v.getUint32(6, true) };
  }
  if (payload.byteLength === 12 && v.getUint8(0) === 0x82) {
    return { type: 'pointer', x: v.getUint16(5, true), y: v.getUint16(7, true), buttons: v.getUint8(9) };
  }
  return null;
}

const NAMED = new Map([
  [0xff0d, '⏎\n'], [0xff8d, '⏎\n'], [0xff08, '⌫'], [0xff09, '⇥'], [0xff1b, '⎋'], [0xffff, '⌦'],
  [0xff51, '←'], [0xff52, '↑'], [0xff53, '→'], [0xff54, '↓'],
]);
// Modifiers are shown only as what they change.
const SILENT = new Set([0xffe1, 0xffe2, 0xffe3, 0xffe4, 0xffe9, 0xffea, 0xffe7, 0xffe8, 0xffeb, 0xffec, 0xffe5]);

// How a pressed key is shown in the list of keys typed.
export function keyText(keysym) {
  if (NAMED.has(keysym)) return NAMED.get(keysym);
  if (SILENT.has(keysym)) return '';
  if (keysym >= 0x20 && keysym < 0x7f) return String.fromCharCode(keysym);
  if (keysym >= 0xa0 && keysym <= 0xff) return String.fromCharCode(keysym);
  if (keysym >= 0x1000100 && keysym <= 0x110ffff) return String.fromCodePoint(keysym - 0x1000000);
  return `[${keysym.toString(16)}]`;
}
