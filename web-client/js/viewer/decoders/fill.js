// Fill: one colour over a rectangle.
export function decodeFill(msg, renderer) {
  const { rect, rgba } = msg;
  const style = `rgb(${rgba[0]},${rgba[1]},${rgba[2]})`;
  renderer.push({
    ready: null,
    draw: () => {
      renderer.ctx.fillStyle = style;
      renderer.ctx.fillRect(rect.x, rect.y, rect.w, rect.h);
    },
  });
}
