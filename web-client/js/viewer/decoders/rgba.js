// RGBA: uncompressed pixels, 4 bytes each, row-major.
export function decodeRgba(msg, renderer) {
  const { rect, data } = msg;
  if (data.length !== rect.w * rect.h * 4) throw new Error('RGBA image of the wrong size');
  const pixels = new Uint8ClampedArray(data.buffer, data.byteOffset, data.length).slice();
  renderer.push({
    ready: null,
    draw: () => renderer.ctx.putImageData(new ImageData(pixels, rect.w, rect.h), rect.x, rect.y),
  });
}
