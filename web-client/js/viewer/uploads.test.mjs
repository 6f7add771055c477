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

// Links that record each PUT and its abort signal.
function putLinks() {
  const puts = [];
  return {
    puts,
    url: (token) => `https://desk.example/files/vm-1/${token}`,
    put(url, file, signal) {
      const p = { url, file, signal };
      puts.push(p);
      return new Promise((_, reject) => signal.addEventListener('abort', () => reject(new Error('aborted'))));
    },
  };
}

const link = (id, size, b) => {
  const u64 = [size % 256, ...new Array(7).fill(0)];
  let n = size;
  for (let i = 0; i < 8; i++) { u64[i] = n % 256; n = Math.floor(n / 256); }
  return decodeServer(new Uint8Array([0x3a, id & 255, (id >>> 8) & 255, 0, 0, ...u64, ...new Array(16).fill(b)]).buffer);
};

test('with links an upload is a PUT of the file, its progress and end told by the proxy', async () => {
  const { sent, send } = recorder();
  const l = putLinks();
  const u = new Uploader(send, l);
  const changes = [];
  u.on('change', (c) => changes.push(c));
  const file = namedBlob(3 * MAX_FILE_CHUNK, 'gross.iso');
  const id = u.add(file);
  await settle();
  assert.deepEqual(sent.map((s) => s.type), [0x91], 'asked for a link, no chunk sent');
  u.message(link(id, file.size, 0xab));
  assert.equal(l.puts.length, 1);
  assert.equal(l.puts[0].url, `https://desk.example/files/vm-1/${'ab'.repeat(16)}`);
  assert.equal(l.puts[0].file, file, 'the File itself is the body: the browser reads it');
  u.message({ type: 'fileProgress', id, done: MAX_FILE_CHUNK });
  await settle();
  assert.equal(changes.at(-1).done, MAX_FILE_CHUNK);
  assert.deepEqual(sent.map((s) => s.type), [0x91], 'progress sends nothing over the connection');
  u.message({ type: 'fileSaved', id, path: '/home/alice/Transfer/gross.iso', sha256: 'cd'.repeat(32) });
  assert.equal(changes.at(-1).state, 'saved');
  assert.equal(l.puts[0].signal.aborted, false, 'a finished PUT is left alone');
});

test('a linked upload cancelled stops its PUT; one unlinked goes over the connection', async () => {
  const { sent, send } = recorder();
  const l = putLinks();
  const u = new Uploader(send, l);
  const changes = [];
  u.on('change', (c) => changes.push(c));
  const a = u.add(namedBlob(10, 'a.bin'));
  u.message(link(a, 10, 1));
  u.cancel(a);
  assert.equal(sent.at(-1).type, 0x8c);
  assert.equal(l.puts[0].signal.aborted, false, 'the proxy ends it first (the audit says cancelled)');
  u.message({ type: 'fileRefused', id: a, message: 'a.bin: the upload was cancelled' });
  assert.equal(changes.at(-1).state, 'cancelled');
  assert.equal(l.puts[0].signal.aborted, true);

  const b = u.add(namedBlob(2 * MAX_FILE_CHUNK + 5, 'b.bin'));
  u.message(link(b, 2 * MAX_FILE_CHUNK + 5, 2));
  u.message(decodeServer(new Uint8Array([0x3b, b, 0, 0, 0]).buffer));
  await settle();
  assert.equal(l.puts[1].signal.aborted, true, 'the unused link\'s PUT stops');
  const chunks = sent.filter((s) => s && s.type === 0x8b && s.id === b);
  assert.equal(chunks.reduce((n, s) => n + s.len, 0), 2 * MAX_FILE_CHUNK + 5, 'all of it over the connection');
  u.message({ type: 'fileSaved', id: b, path: '/home/alice/Transfer/b.bin', sha256: 'ef'.repeat(32) });
  assert.equal(changes.at(-1).state, 'saved');
  assert.equal(changes.at(-1).linked, false, 'an upload whose link went unused is not told as linked');

  const c = u.add(namedBlob(4, 'c.bin'));
  u.message(link(c, 5, 3));
  assert.equal(changes.at(-1).state, 'failed', 'a link for another size is refused');
});
