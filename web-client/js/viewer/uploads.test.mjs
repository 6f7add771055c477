import assert from 'node:assert/strict';
import test from 'node:test';

import { Uploader } from './uploads.js';
import { FILE_WINDOW, MAX_FILE_CHUNK, decodeServer } from './protocol.js';

// What an uploader sent, decoded far enough to check: type, id and the chunk's length (checked
// against the bytes that follow). A chunk is a Blob, read here as the browser would send it.
function recorder() {
  const sent = [];
  const decode = (buf) => {
    const v = new DataView(buf);
    const type = v.getUint8(0);
    const id = v.getUint32(1, true);
    const len = type === 0x8b ? v.getUint32(5, true) : 0;
    if (type === 0x8b) assert.equal(buf.byteLength, 9 + len, 'the chunk is as long as it says');
    return { type, id, len };
  };
  const send = (msg) => {
    if (msg instanceof Blob) {
      const at = sent.push(null) - 1;
      msg.arrayBuffer().then((buf) => { sent[at] = decode(buf); });
    } else {
      sent.push(decode(msg));
    }
    return true;
  };
  return { sent, send };
}

const settle = () => new Promise((r) => setTimeout(r, 20));

function namedBlob(size, name) {
  const b = new Blob([new Uint8Array(size)]);
  Object.defineProperty(b, 'name', { value: name });
  return b;
}

test('an upload keeps to its window and finishes when the proxy says where the file is', async () => {
  const { sent, send } = recorder();
  const u = new Uploader(send);
  const changes = [];
  u.on('change', (c) => changes.push(c));
  const size = FILE_WINDOW + 3 * MAX_FILE_CHUNK + 7;
  const id = u.add(namedBlob(size, 'report.pdf'));
  await settle();
  assert.equal(sent[0].type, 0x8a);
  const bytes = () => sent.filter((s) => s.type === 0x8b).reduce((n, s) => n + s.len, 0);
  assert.equal(bytes(), FILE_WINDOW, 'no more than the window before any progress');
  assert.ok(sent.every((s) => s.len <= MAX_FILE_CHUNK));
  u.message({ type: 'fileProgress', id, done: 2 * MAX_FILE_CHUNK });
  await settle();
  assert.equal(bytes(), FILE_WINDOW + 2 * MAX_FILE_CHUNK);
  u.message({ type: 'fileProgress', id, done: size });
  await settle();
  assert.equal(bytes(), size, 'the whole file, once the window allows');
  u.message({ type: 'fileSaved', id, sha256: 'ab', path: '/home/alice/Transfer/report.pdf' });
  const last = changes.at(-1);
  assert.equal(last.state, 'saved');
  assert.equal(last.path, '/home/alice/Transfer/report.pdf');
  // Messages after the end change nothing.
  u.message({ type: 'fileRefused', id, message: 'late' });
  assert.equal(changes.at(-1).state, 'saved');
});

test('a cancel stops the data and ends as cancelled; a lost connection fails the rest', async () => {
  const { sent, send } = recorder();
  const u = new Uploader(send);
  const states = new Map();
  u.on('change', (c) => states.set(c.id, c));
  const a = u.add(namedBlob(FILE_WINDOW * 3, 'a.iso'));
  const b = u.add(namedBlob(10, 'b.txt'));
  await settle();
  u.cancel(a);
  assert.equal(sent.at(-1).type, 0x8c);
  u.message({ type: 'fileProgress', id: a, done: FILE_WINDOW });
  await settle();
  assert.ok(!sent.some((s, i) => i > sent.findIndex((x) => x.type === 0x8c) && s.type === 0x8b && s.id === a),
    'no data after the cancel');
  u.message({ type: 'fileRefused', id: a, message: 'the upload of a.iso was cancelled' });
  assert.equal(states.get(a).state, 'cancelled');
  u.closed();
  assert.equal(states.get(b).state, 'failed');
  assert.match(states.get(b).message, /connection/);
  u.clearFinished();
  assert.equal(u.uploads.size, 0);
});

test('upload answers decode', () => {
  const progress = new Uint8Array([0x32, 5, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 0]);
  assert.deepEqual(decodeServer(progress.buffer), { type: 'fileProgress', id: 5, done: 1 << 30 });
  const path = new TextEncoder().encode('/home/a/Transfer/x');
  const saved = new Uint8Array(1 + 4 + 32 + 2 + path.length);
  saved.set([0x33, 1, 0, 0, 0]);
  saved.fill(0xab, 5, 37);
  saved.set([path.length, 0], 37);
  saved.set(path, 39);
  const m = decodeServer(saved.buffer);
  assert.equal(m.path, '/home/a/Transfer/x');
  assert.equal(m.sha256, 'ab'.repeat(32));
  assert.throws(() => decodeServer(new Uint8Array([0x34, 1, 0, 0, 0, 9, 0, 65]).buffer), /truncated/);
});

test('a clipboard refusal decodes', () => {
  const b = new Uint8Array([0x35, 1, 0x88, 0x13, 0, 0, 0, 4, 0, 0]);
  assert.deepEqual(decodeServer(b.buffer), { type: 'clipboardRefused', out: true, size: 5000, limit: 1024 });
  assert.throws(() => decodeServer(new Uint8Array([0x35, 2, 0, 0, 0, 0, 0, 0, 0, 0]).buffer), /direction/);
});
