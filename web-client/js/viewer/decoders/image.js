// PNG and JPEG: decoded by the browser off the main thread (createImageBitmap), drawn in order.
import { ImageFormat } from '../protocol.js';

const TYPES = { [ImageFormat.PNG]: 'image/png', [ImageFormat.JPEG]: 'image/jpeg' };

export function decodeImage(msg, renderer) {
  const { rect, format, data } = msg;
  const type = TYPES[format];
  const op = { ready: null, draw: null, bitmap: null };
  op.ready = createImageBitmap(new Blob([data], { type })).then((b) => { op.bitmap = b; });
  op.draw = () => {
    renderer.ctx.drawImage(op.bitmap, rect.x, rect.y);
    op.bitmap.close();
  };
  renderer.push(op);
}
