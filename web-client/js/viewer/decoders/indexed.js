// Indexed: a small palette (2 to 16 colours) and packed indices, uncompressed; the proxy uses it
// for tiny text-like areas (a typed character) where a PNG's own overhead would dominate.

// The pixels of an indexed image (RGBA, row-major); an error when it is malformed.
export function indexedPixels(msg) {
  const { rect, data } = msg;
  const n = data[0];
  if (n < 2 || n > 16) throw new Error(`indexed image with ${n} colours`);
  const bits = n <= 2 ? 1 : n <= 4 ? 2 : 4;
  const row = Math.ceil((rect.w * bits) / 8);
  const base = 1 + n * 3;
  if (data.length !== base + row * rect.h) throw new Error('indexed image of the wrong size');
  const px = new Uint8ClampedArray(rect.w * rect.h * 4);
  const mask = (1 << bits) - 1;
  for (let y = 0; y < rect.h; y++) {
    for (let x = 0; x < rect.w; x++) {
      const bit = x * bits;
      const i = (data[base + y * row + (bit >> 3)] >> (8 - bits - (bit & 7))) & mask;
      if (i >= n) throw new Error('indexed image: index out of range');
      const o = (y * rect.w + x) * 4;
      px[o] = data[1 + i * 3];
      px[o + 1] = data[2 + i * 3];
      px[o + 2] = data[3 + i * 3];
      px[o + 3] = 255;
    }
  }
  return px;
}

export function decodeIndexed(msg, renderer) {
  const { rect } = msg;
  const px = indexedPixels(msg);
  renderer.push({
    ready: null,
    draw: () => renderer.ctx.putImageData(new ImageData(px, rect.w, rect.h), rect.x, rect.y),
  });
}
