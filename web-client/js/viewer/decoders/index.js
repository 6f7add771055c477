// One decoder per kind of drawing message.
import { ImageFormat } from '../protocol.js';
import { decodeCopy } from './copy.js';
import { decodeFill } from './fill.js';
import { decodeImage } from './image.js';
import { decodeIndexed } from './indexed.js';
import { decodeRgba } from './rgba.js';

export function decode(msg, renderer) {
  switch (msg.type) {
    case 'fill': return decodeFill(msg, renderer);
    case 'copy': return decodeCopy(msg, renderer);
    case 'image':
      if (msg.format === ImageFormat.RGBA) return decodeRgba(msg, renderer);
      if (msg.format === ImageFormat.INDEXED) return decodeIndexed(msg, renderer);
      if (msg.format === ImageFormat.PNG || msg.format === ImageFormat.JPEG) return decodeImage(msg, renderer);
      throw new Error(`unknown image format ${msg.format}`);
    default:
      throw new Error(`not a drawing message: ${msg.type}`);
  }
}
