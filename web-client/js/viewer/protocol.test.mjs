import assert from 'node:assert/strict';
import test from 'node:test';

import { MAX_CLIPBOARD_IMAGE, ProtocolError, clipboardImageMessage, decodeServer } from './protocol.js';

const u32 = (n) => [n & 255, (n >>> 8) & 255, (n >>> 16) & 255, (n >>> 24) & 255];

test('a clipboard image from the desktop is decoded, one over the limit is an error', () => {
  const png = [0x89, 0x50, 0x4e, 0x47];
  const m = decodeServer(new Uint8Array([0x3c, ...u32(png.length), ...png]).buffer);
  assert.equal(m.type, 'clipboardImage');
  assert.deepEqual(Array.from(m.png), png);
  const over = new Uint8Array(5 + MAX_CLIPBOARD_IMAGE + 1);
  over.set([0x3c, ...u32(MAX_CLIPBOARD_IMAGE + 1)]);
  assert.throws(() => decodeServer(over.buffer), ProtocolError);
  // Cut short.
  assert.throws(() => decodeServer(new Uint8Array([0x3c, ...u32(9), 1, 2]).buffer), ProtocolError);
});

test('an image for the desktop is framed as 0x92 with its length, and one over the limit is not sent', () => {
  const png = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 13, 10]);
  const b = new Uint8Array(clipboardImageMessage(png));
  assert.deepEqual(Array.from(b), [0x92, ...u32(png.length), ...png]);
  assert.equal(clipboardImageMessage(new Uint8Array(MAX_CLIPBOARD_IMAGE)).byteLength, 5 + MAX_CLIPBOARD_IMAGE);
  assert.equal(clipboardImageMessage(new Uint8Array(MAX_CLIPBOARD_IMAGE + 1)), null);
});
