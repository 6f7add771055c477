import assert from 'node:assert/strict';
import test from 'node:test';

import { DOWNLOAD_IDS, Downloader, linkUrl } from './downloads.js';
import { MAX_FILE_CHUNK, decodeServer, fileCancelMessage, fileGetMessage } from './protocol.js';

// What a downloader sent: type, id, and the `done` of a fileTaken.
function recorder() {
  const sent = [];
  const send = (buf) => {
    const v = new DataView(buf);
    const type = v.getUint8(0);
    const m = { type };
    if (buf.byteLength >= 5) m.id = v.getUint32(1, true);
    if (type === 0x8f) m.done = Number(v.getBigUint64(5, true));
    sent.push(m);
    return true;
  };
  return { sent, send };
}

// A server message, encoded as the proxy does, decoded as the session does.
function server(bytes) {
  return decodeServer(new Uint8Array(bytes).buffer);
}
const u32 = (n) => [n & 255, (n >>> 8) & 255, (n >>> 16) & 255, (n >>> 24) & 255];
const u64 = (n) => [...u32(n % 2 ** 32), ...u32(Math.floor(n / 2 ** 32))];
const start = (id, size) => server([0x37, ...u32(id), ...u64(size)]);
const chunk = (id, data) => server([0x38, ...u32(id), ...u32(data.length), ...data]);
const done = (id, b) => server([0x39, ...u32(id), ...new Array(32).fill(b)]);
// Lets the downloader's pending steps (saver writes, acknowledgements) run.
const settle = () => new Promise((resolve) => setTimeout(resolve, 0));
const refused = (id, text) => {
  const t = [...new TextEncoder().encode(text)];
  return server([0x34, ...u32(id), t.length & 255, t.length >> 8, ...t]);
};

test('a download acknowledges what it took and gives the file only once it is done', async () => {
  const { sent, send } = recorder();
  const d = new Downloader(send);
  const changes = [];
  d.on('change', (c) => changes.push(c));
  const id = d.get({ name: 'bericht.txt', size: 5 });
  assert.ok(id >= DOWNLOAD_IDS, 'download ids never meet upload ids');
  assert.deepEqual(sent[0], { type: 0x8e, id });
  assert.equal(fileGetMessage(id, 'bericht.txt').byteLength, 7 + 'bericht.txt'.length);
  assert.equal(changes.at(-1).state, 'checking');
  d.message({ type: 'fileProgress', id, done: 3 });
  assert.equal(changes.at(-1).checked, 3, 'the scanner\'s progress shows while it checks');
  d.message(start(id, 5));
  assert.equal(changes.at(-1).state, 'receiving');
  d.message(chunk(id, [104, 101, 108]));
  d.message(chunk(id, [108, 111]));
  await settle();
  assert.deepEqual(sent.filter((s) => s.type === 0x8f).map((s) => s.done), [3, 5], 'each chunk is acknowledged');
  assert.ok(changes.every((c) => c.blob === null), 'nothing is given before the proxy says it is done');
  d.message(done(id, 0xab));
  await settle();
  const last = changes.at(-1);
  assert.equal(last.state, 'saved');
  assert.equal(last.sha256, 'ab'.repeat(32));
  assert.equal(await last.blob.text(), 'hello');
});

test('a refused, cut-off or overlong download is thrown away', async () => {
  const { sent, send } = recorder();
  const d = new Downloader(send);
  const changes = [];
  d.on('change', (c) => changes.push(c));

  const a = d.get({ name: 'eicar.com', size: 68 });
  d.message(refused(a, 'eicar.com was refused: the virus scanner found Eicar-Test-Signature in it.'));
  assert.equal(changes.at(-1).state, 'refused');
  assert.match(changes.at(-1).message, /Eicar/);
  assert.equal(changes.at(-1).blob, null);

  const b = d.get({ name: 'big', size: 4 });
  d.message(start(b, 4));
  d.message(chunk(b, [1, 2, 3, 4, 5]));
  assert.equal(changes.at(-1).state, 'failed', 'more than the file is refused by the viewer too');
  assert.deepEqual(sent.at(-1), { type: 0x8c, id: b }, 'and the proxy is told to stop');
  assert.equal(new Uint8Array(fileCancelMessage(b))[0], 0x8c);

  const c = d.get({ name: 'short', size: 4 });
  d.message(start(c, 4));
  d.message(chunk(c, [1]));
  await settle();
  d.message(done(c, 1));
  assert.equal(changes.at(-1).state, 'failed', 'a file that came short is not saved');
  assert.equal(changes.at(-1).blob, null);

  const e = d.get({ name: 'cut', size: 2 ** 20 });
  d.message(start(e, 2 ** 20));
  d.message(chunk(e, new Array(MAX_FILE_CHUNK).fill(7)));
  d.closed();
  assert.equal(changes.at(-1).state, 'failed');
  assert.match(changes.at(-1).message, /lost/);
});

test('a cancelled download ends as cancelled when the proxy confirms', () => {
  const { sent, send } = recorder();
  const d = new Downloader(send);
  const changes = [];
  d.on('change', (c) => changes.push(c));
  const id = d.get({ name: 'x', size: 10 });
  d.cancel(id);
  assert.deepEqual(sent.at(-1), { type: 0x8c, id });
  assert.equal(changes.at(-1).state, 'cancelling');
  d.message(refused(id, 'x: the download was cancelled'));
  assert.equal(changes.at(-1).state, 'cancelled');
  // Late chunks of it are ignored.
  d.message(chunk(id, [1]));
  assert.equal(sent.filter((s) => s.type === 0x8f).length, 0);
});

test('a listing reaches the page, and a malformed one is a protocol error', () => {
  const { send } = recorder();
  const d = new Downloader(send);
  const lists = [];
  d.on('list', (l) => lists.push(l));
  const name = [...new TextEncoder().encode('a.txt')];
  d.message(server([0x36, 0, 0, 1, 0, name.length, 0, ...name, ...u64(3), ...u64(1700000000)]));
  assert.deepEqual(lists[0], { message: '', files: [{ name: 'a.txt', size: 3, modified: 1700000000 }] });
  assert.throws(() => server([0x36, 0, 0, 0xf5, 0x01]), /too many files/);
  assert.throws(() => server([0x38, ...u32(1), ...u32(MAX_FILE_CHUNK + 1)]), /over the limit|truncated/);
});

// A saver whose writes wait until the test lets them through, and that notes what it got.
function heldSaver(limit = 1 << 30) {
  const log = [];
  const held = [];
  return {
    log, held, limit,
    open({ name, size }) {
      log.push(['open', name, size]);
      return {
        write: (chunk) => new Promise((resolve) => held.push(() => { log.push(['write', chunk.length]); resolve(); })),
        close: () => { log.push(['close']); return Promise.resolve(null); },
        abort: (why) => log.push(['abort', why.message]),
      };
    },
  };
}

test('a chunk is acknowledged only once the saver has room for it, and the file named at the end', async () => {
  const { sent, send } = recorder();
  const saver = heldSaver();
  const d = new Downloader(send, saver);
  const changes = [];
  d.on('change', (c) => changes.push(c));
  const id = d.get({ name: 'gross.iso', size: 5 });
  assert.deepEqual(saver.log, [], 'nothing is opened while the proxy checks the file');
  d.message(start(id, 5));
  assert.deepEqual(saver.log, [['open', 'gross.iso', 5]]);
  d.message(chunk(id, [1, 2, 3]));
  d.message(chunk(id, [4, 5]));
  d.message(done(id, 0xcd));
  await settle();
  assert.equal(sent.filter((s) => s.type === 0x8f).length, 0, 'nothing is taken while the saver is full');
  saver.held.shift()();
  await settle();
  assert.deepEqual(sent.filter((s) => s.type === 0x8f).map((s) => s.done), [3]);
  assert.equal(changes.at(-1).state, 'receiving', 'not saved before every byte is with the saver');
  saver.held.shift()();
  await settle();
  assert.deepEqual(sent.filter((s) => s.type === 0x8f).map((s) => s.done), [3, 5]);
  assert.deepEqual(saver.log.slice(1), [['write', 3], ['write', 2], ['close']]);
  assert.equal(changes.at(-1).state, 'saved');
  assert.equal(changes.at(-1).blob, null, 'the browser has the file: there is no Blob to save');
});

test('a download the saver cannot hold is refused before it is asked for, and a failed one aborts the saver', async () => {
  const { sent, send } = recorder();
  const saver = heldSaver(100);
  const d = new Downloader(send, saver);
  const changes = [];
  d.on('change', (c) => changes.push(c));
  d.get({ name: 'huge.bin', size: 101 });
  assert.equal(changes.at(-1).state, 'refused');
  assert.match(changes.at(-1).message, /too large for this browser/);
  assert.equal(sent.length, 0, 'the proxy was not asked');

  const broken = new Downloader(send, { limit: 100, open() { throw new Error('the service worker is gone'); } });
  const fails = [];
  broken.on('change', (c) => fails.push(c));
  const x = broken.get({ name: 'x.bin', size: 1 });
  broken.message(start(x, 1));
  assert.equal(fails.at(-1).state, 'failed', 'a saver that cannot open fails the download, not the connection');
  assert.match(fails.at(-1).message, /service worker is gone/);
  assert.deepEqual(sent.at(-1), { type: 0x8c, id: x });

  const id = d.get({ name: 'cut.bin', size: 10 });
  d.message(start(id, 10));
  d.message(chunk(id, [1, 2]));
  await settle();
  assert.equal(saver.held.length, 1, 'the chunk waits for room in the saver');
  d.closed();
  assert.equal(changes.at(-1).state, 'failed');
  assert.deepEqual(saver.log.at(-1), ['abort', changes.at(-1).message], 'the partial file is thrown away');
  saver.held.shift()();
  await settle();
  assert.equal(sent.filter((s) => s.type === 0x8f).length, 0, 'nothing is acknowledged after the end');
  assert.ok(!saver.log.some((l) => l[0] === 'close'), 'a failed download is never named');
});

const link = (id, size, b) => server([0x3a, ...u32(id), ...u64(size), ...new Array(16).fill(b)]);

// Links that record what was opened and when each was let go.
function links() {
  const opened = [];
  return {
    opened,
    url: (token) => `https://desk.example/files/vm-1/${token}`,
    open(url) {
      const l = { url, done: false };
      opened.push(l);
      return { done: () => { l.done = true; } };
    },
  };
}

test('with links a download is fetched by the browser, its progress and end told by the proxy', () => {
  const { sent, send } = recorder();
  const l = links();
  const d = new Downloader(send, undefined, l);
  const changes = [];
  d.on('change', (c) => changes.push(c));
  const id = d.get({ name: 'gross.iso', size: 3 * 2 ** 30 });
  assert.deepEqual(sent[0], { type: 0x90, id }, 'asked for as a link, whatever the saver\'s limit');
  d.message(link(id, 3 * 2 ** 30, 0xab));
  assert.deepEqual(l.opened.map((o) => o.url), [`https://desk.example/files/vm-1/${'ab'.repeat(16)}`]);
  assert.equal(changes.at(-1).state, 'receiving');
  assert.equal(changes.at(-1).linked, true);
  d.message({ type: 'fileProgress', id, done: 2 ** 30 });
  assert.equal(changes.at(-1).done, 2 ** 30);
  assert.equal(l.opened[0].done, false, 'the frame stays while the browser downloads');
  d.message(done(id, 0xcd));
  const last = changes.at(-1);
  assert.equal(last.state, 'saved');
  assert.equal(last.sha256, 'cd'.repeat(32));
  assert.equal(last.blob, null, 'the browser has the file; the page never had it');
  assert.equal(l.opened[0].done, true);
  assert.ok(!sent.some((m) => m.type === 0x8f), 'nothing to acknowledge');
});

test('a link refused or cancelled ends, and one not fetched falls back to chunks', async () => {
  const { sent, send } = recorder();
  const l = links();
  const d = new Downloader(send, undefined, l);
  const changes = [];
  d.on('change', (c) => changes.push(c));
  const a = d.get({ name: 'a.bin', size: 10 });
  d.message(link(a, 10, 1));
  d.cancel(a);
  assert.deepEqual(sent.at(-1), { type: 0x8c, id: a });
  d.message(refused(a, 'a.bin: the download was cancelled'));
  assert.equal(changes.at(-1).state, 'cancelled');
  assert.equal(l.opened[0].done, true);

  const b = d.get({ name: 'b.txt', size: 2 });
  d.message(link(b, 2, 2));
  d.message(start(b, 2));
  assert.equal(l.opened[1].done, true, 'the withdrawn link\'s frame goes');
  d.message(chunk(b, [104, 105]));
  await settle();
  d.message(done(b, 0xee));
  await settle();
  const last = changes.at(-1);
  assert.equal(last.state, 'saved');
  assert.equal(last.linked, false);
  assert.equal(await last.blob.text(), 'hi', 'the saver has it, as without links');

  const c = d.get({ name: 'c.txt', size: 2 });
  d.message(link(c, 2, 3));
  d.message(link(c, 2, 3));
  assert.equal(changes.at(-1).state, 'failed', 'a second link for one download is refused');
});

test('a link sits beside the display connection', () => {
  const t = '0f'.repeat(16);
  assert.equal(linkUrl('wss://atrium.example/ws/vm-7?ticket=abc', t), `https://atrium.example/files/vm-7/${t}`);
  assert.equal(linkUrl('ws://127.0.0.1:8080/edge/ws/vm-7?ticket=a#x', t), `http://127.0.0.1:8080/edge/files/vm-7/${t}`);
  assert.equal(linkUrl('https://atrium.example/ws/vm-7', t), null);
  assert.equal(linkUrl('wss://atrium.example/viewer', t), null);
  assert.equal(linkUrl('not a url', t), null);
});
