// compose.js against drawing every message in order, on a screen of plain pixel arrays: random
// sequences of fills, pictures and copies (overlapping, scrolling, moving) must give the same
// pixels both ways. Run by `node --test` (tests/tests/web_client_units.rs).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { compose } from './compose.js';
import { ImageFormat } from '../viewer/protocol.js';

// A small deterministic generator (xorshift32).
function rng(seed) {
  let s = seed >>> 0 || 1;
  return (n) => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s % n;
  };
}

// One pixel of a message's picture (RGBA format): a colour from its bytes.
function pictureAt(m, x, y) {
  const o = (y * m.rect.w + x) * 4;
  return (m.data[o] << 16) | (m.data[o + 1] << 8) | m.data[o + 2];
}

// Every message drawn in order, as the viewer's renderer does.
function drawEach(messages) {
  let w = 0;
  let h = 0;
  let px = null;
  for (const m of messages) {
    if (m.type === 'resize') {
      w = m.width; h = m.height; px = new Uint32Array(w * h);
    } else if (m.type === 'fill') {
      const c = (m.rgba[0] << 16) | (m.rgba[1] << 8) | m.rgba[2];
      for (let y = m.rect.y; y < m.rect.y + m.rect.h; y++) px.fill(c, y * w + m.rect.x, y * w + m.rect.x + m.rect.w);
    } else if (m.type === 'image') {
      for (let y = 0; y < m.rect.h; y++) for (let x = 0; x < m.rect.w; x++) px[(m.rect.y + y) * w + m.rect.x + x] = pictureAt(m, x, y);
    } else if (m.type === 'copy') {
      const before = px.slice();
      for (let y = 0; y < m.rect.h; y++) for (let x = 0; x < m.rect.w; x++) {
        px[(m.rect.y + y) * w + m.rect.x + x] = before[(m.srcY + y) * w + m.srcX + x];
      }
    }
  }
  return { w, h, px };
}

// The composed screen's pieces drawn.
function drawComposed(screen) {
  const { width: w, height: h } = screen;
  const px = new Uint32Array(w * h);
  for (const p of screen.pieces) {
    for (let y = p.y; y < p.y + p.h; y++) {
      for (let x = p.x; x < p.x + p.w; x++) {
        const m = p.src;
        px[y * w + x] = m.type === 'fill'
          ? (m.rgba[0] << 16) | (m.rgba[1] << 8) | m.rgba[2]
          : pictureAt(m, x - p.ox, y - p.oy);
      }
    }
  }
  return { w, h, px };
}

function randomRect(r, w, h) {
  const x = r(w - 1);
  const y = r(h - 1);
  return { x, y, w: 1 + r(w - x), h: 1 + r(h - y) };
}

function picture(r, rect) {
  const data = new Uint8Array(rect.w * rect.h * 4);
  for (let i = 0; i < data.length; i++) data[i] = (i & 3) === 3 ? 255 : r(256);
  return { type: 'image', rect, format: ImageFormat.RGBA, data };
}

test('a composed seek gives the pixels of drawing every message', () => {
  for (let seed = 1; seed <= 200; seed++) {
    const r = rng(seed);
    const w = 8 + r(40);
    const h = 8 + r(30);
    const messages = [{ type: 'resize', width: w, height: h }];
    for (let i = 0; i < 60; i++) {
      const kind = r(10);
      if (kind < 2) {
        messages.push({ type: 'fill', rect: randomRect(r, w, h), rgba: [r(256), r(256), r(256), 255] });
      } else if (kind < 5) {
        messages.push(picture(r, randomRect(r, w, h)));
      } else if (kind < 8) {
        // A scroll: the whole width moved up or down, the uncovered rows drawn anew (or not).
        const dy = 1 + r(h - 1);
        const up = r(2) === 0;
        const rect = { x: 0, y: up ? 0 : dy, w, h: h - dy };
        messages.push({ type: 'copy', rect, srcX: 0, srcY: up ? dy : 0 });
        if (r(3) > 0) messages.push(picture(r, { x: 0, y: up ? h - dy : 0, w, h: dy }));
      } else {
        // Any copy within the screen, overlapping its source or not.
        const rect = randomRect(r, w, h);
        messages.push({ type: 'copy', rect, srcX: r(w - rect.w + 1), srcY: r(h - rect.h + 1) });
      }
      if (r(20) === 0) messages.push({ type: 'frameEnd', frame: i, inputSeq: 0 });
    }
    const screen = compose(messages);
    assert.ok(screen, `seed ${seed}: not composed`);
    assert.deepEqual(drawComposed(screen), drawEach(messages), `seed ${seed}`);
  }
});

test('a scrolled terminal leaves only its last screenful of pieces', () => {
  const w = 200;
  const h = 100;
  const line = 10;
  const messages = [{ type: 'resize', width: w, height: h }];
  const r = rng(7);
  for (let i = 0; i < 1000; i++) {
    messages.push({ type: 'copy', rect: { x: 0, y: 0, w, h: h - line }, srcX: 0, srcY: line });
    messages.push(picture(r, { x: 0, y: h - line, w, h: line }));
  }
  const screen = compose(messages);
  assert.ok(screen);
  const sources = new Set(screen.pieces.map((p) => p.src));
  assert.equal(sources.size, h / line, 'one picture per line still on the screen');
  assert.deepEqual(drawComposed(screen), drawEach(messages));
});

test('video, copies from outside the screen and drawing before a size are not composed', () => {
  const resize = { type: 'resize', width: 10, height: 10 };
  const rect = { x: 0, y: 0, w: 4, h: 4 };
  assert.equal(compose([resize, { type: 'video', rect, key: true, data: new Uint8Array(1) }]), null);
  assert.equal(compose([resize, { type: 'copy', rect, srcX: 8, srcY: 0 }]), null);
  assert.equal(compose([resize, { type: 'fill', rect: { x: 8, y: 8, w: 4, h: 4 }, rgba: [1, 2, 3, 255] }]), null);
  assert.equal(compose([{ type: 'fill', rect, rgba: [1, 2, 3, 255] }]), null);
  assert.equal(compose([]), null);
});
