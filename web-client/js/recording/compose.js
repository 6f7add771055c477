// Composing a seek: the screen at a moment, drawn from the messages since a key frame without
// drawing each of them. Where every pixel of the final screen came from is followed through the
// messages as rectangles (a picture drawn, a fill, a copy moving pixels), and only the pieces
// still on the screen at the end are drawn: a terminal that scrolled a thousand lines after the
// key frame costs its last screenful, not a thousand pictures and a thousand whole-screen
// copies. The pixels are the same as drawing every message in order; a stretch with video in it
// (each frame predicted from the one before) is not composed, and neither is anything the
// proxy never sends (a copy reaching outside the screen).
import { ImageFormat } from '../viewer/protocol.js';
import { indexedPixels } from '../viewer/decoders/indexed.js';

// Beyond this many pieces composing stops paying (and bounds the work on a hostile recording).
const MAX_PIECES = 20000;

const BLACK = [0, 0, 0, 255];

// What is on the screen: rectangles, each taking its pixels from one source. `src`: a message
// (a picture or a fill); the pixel at (x, y) is the source's at (x - ox, y - oy).
function piece(x, y, w, h, src, ox, oy) {
  return { x, y, w, h, src, ox, oy };
}

// `a` less `b`: up to four rectangles.
function subtract(a, b) {
  const x0 = Math.max(a.x, b.x);
  const y0 = Math.max(a.y, b.y);
  const x1 = Math.min(a.x + a.w, b.x + b.w);
  const y1 = Math.min(a.y + a.h, b.y + b.h);
  if (x0 >= x1 || y0 >= y1) return [a];
  const out = [];
  if (a.y < y0) out.push(piece(a.x, a.y, a.w, y0 - a.y, a.src, a.ox, a.oy));
  if (y1 < a.y + a.h) out.push(piece(a.x, y1, a.w, a.y + a.h - y1, a.src, a.ox, a.oy));
  if (a.x < x0) out.push(piece(a.x, y0, x0 - a.x, y1 - y0, a.src, a.ox, a.oy));
  if (x1 < a.x + a.w) out.push(piece(x1, y0, a.x + a.w - x1, y1 - y0, a.src, a.ox, a.oy));
  return out;
}

function intersect(a, b) {
  const x0 = Math.max(a.x, b.x);
  const y0 = Math.max(a.y, b.y);
  const x1 = Math.min(a.x + a.w, b.x + b.w);
  const y1 = Math.min(a.y + a.h, b.y + b.h);
  if (x0 >= x1 || y0 >= y1) return null;
  return piece(x0, y0, x1 - x0, y1 - y0, a.src, a.ox, a.oy);
}

function within(r, w, h) {
  return r.x >= 0 && r.y >= 0 && r.x + r.w <= w && r.y + r.h <= h;
}

// The screen after `messages` (parsed server messages, in order, from a key frame: the first
// drawing one is a resize), as { width, height, pieces }; null when it is not to be composed.
//
// The messages are followed backwards from the end: what is still to be found of the screen
// starts as all of it; a picture or fill settles the part of it that it covers, a copy sends
// the part of it that it wrote back to where the pixels came from, and the resize before them
// all leaves the rest black. Once the whole screen is settled, earlier messages cannot show:
// a scrolling terminal is done after its last screenful of lines.
export function compose(messages) {
  // Forward: the screen's size, and nothing that cannot be composed.
  let width = 0;
  let height = 0;
  let first = -1;
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i];
    if (m.type === 'resize') {
      width = m.width;
      height = m.height;
      first = i;
    } else if (m.type === 'video') {
      return null;
    } else if (m.type === 'fill' || m.type === 'image' || m.type === 'copy') {
      if (width === 0 || !within(m.rect, width, height)) return null;
      if (m.type === 'copy' && !within({ x: m.srcX, y: m.srcY, w: m.rect.w, h: m.rect.h }, width, height)) return null;
    }
  }
  if (first < 0 || width === 0 || height === 0) return null;
  // Backward. `open`: parts of the final screen not settled yet, each where its pixels were at
  // the message being looked at; the final place is that plus (ox, oy).
  let open = [piece(0, 0, width, height, null, 0, 0)];
  const settled = [];
  const settle = (m, r) => {
    const next = [];
    for (const u of open) {
      const i = intersect(u, r);
      if (!i) {
        next.push(u);
        continue;
      }
      // Final place: i + (u.ox, u.oy); the source's pixel there is at (final - r.x - u.ox).
      settled.push(piece(i.x + u.ox, i.y + u.oy, i.w, i.h, m, r.x + u.ox, r.y + u.oy));
      for (const rest of subtract(u, r)) next.push(rest);
    }
    open = next;
  };
  for (let i = messages.length - 1; i > first && open.length > 0; i--) {
    const m = messages[i];
    if (m.type === 'fill' || m.type === 'image') {
      settle(m, m.rect);
    } else if (m.type === 'copy') {
      const dx = m.rect.x - m.srcX;
      const dy = m.rect.y - m.srcY;
      const next = [];
      for (const u of open) {
        const i2 = intersect(u, m.rect);
        if (!i2) {
          next.push(u);
          continue;
        }
        // Written by the copy: before it, these pixels were at the source.
        next.push(piece(i2.x - dx, i2.y - dy, i2.w, i2.h, null, u.ox + dx, u.oy + dy));
        for (const rest of subtract(u, m.rect)) next.push(rest);
      }
      open = next;
    }
    if (open.length + settled.length > MAX_PIECES) return null;
  }
  const black = { type: 'fill', rgba: BLACK };
  for (const u of open) settled.push(piece(u.x + u.ox, u.y + u.oy, u.w, u.h, black, 0, 0));
  return { width, height, pieces: settled };
}

// Draws a composed screen with `renderer`: each picture still on the screen decoded once,
// then every piece drawn in one go.
export function drawComposed(screen, renderer) {
  const sources = new Map();
  for (const p of screen.pieces) {
    const m = p.src;
    if (m.type !== 'image' || sources.has(m)) continue;
    if (m.format === ImageFormat.PNG || m.format === ImageFormat.JPEG) {
      const type = m.format === ImageFormat.PNG ? 'image/png' : 'image/jpeg';
      sources.set(m, createImageBitmap(new Blob([m.data], { type })));
    } else if (m.format === ImageFormat.INDEXED) {
      sources.set(m, Promise.resolve(new ImageData(indexedPixels(m), m.rect.w, m.rect.h)));
    } else if (m.format === ImageFormat.RGBA) {
      if (m.data.length !== m.rect.w * m.rect.h * 4) throw new Error('RGBA image of the wrong size');
      const px = new Uint8ClampedArray(m.data.buffer, m.data.byteOffset, m.data.length).slice();
      sources.set(m, Promise.resolve(new ImageData(px, m.rect.w, m.rect.h)));
    } else {
      throw new Error(`unknown image format ${m.format}`);
    }
  }
  const decoded = new Map();
  const ready = Promise.all([...sources].map(([m, p]) => p.then((d) => decoded.set(m, d))));
  renderer.resize(screen.width, screen.height);
  const op = { ready, draw: null, failed: false };
  op.draw = () => {
    const ctx = renderer.ctx;
    for (const p of screen.pieces) {
      const m = p.src;
      if (m.type === 'fill') {
        ctx.fillStyle = `rgb(${m.rgba[0]},${m.rgba[1]},${m.rgba[2]})`;
        ctx.fillRect(p.x, p.y, p.w, p.h);
        continue;
      }
      const d = decoded.get(m);
      const sx = p.x - p.ox;
      const sy = p.y - p.oy;
      if (d instanceof ImageData) {
        ctx.putImageData(d, p.ox, p.oy, sx, sy, p.w, p.h);
      } else {
        ctx.drawImage(d, sx, sy, p.w, p.h, p.x, p.y, p.w, p.h);
      }
    }
    for (const d of decoded.values()) if (d.close) d.close();
  };
  renderer.push(op);
}
