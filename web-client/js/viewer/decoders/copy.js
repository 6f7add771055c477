// Copy: a rectangle from elsewhere on the canvas (scrolls and moves). Drawing a canvas onto
// itself copies as if through a temporary buffer, so overlapping areas are safe.
export function decodeCopy(msg, renderer) {
  const { rect, srcX, srcY } = msg;
  renderer.push({
    ready: null,
    draw: () => {
      const c = renderer.canvas;
      renderer.ctx.drawImage(c, srcX, srcY, rect.w, rect.h, rect.x, rect.y, rect.w, rect.h);
    },
  });
}
