// Uploads: files sent into the desktop over the display connection (docs/display-protocol.md,
// "Uploads"). Each file goes in chunks, slices of the File that the browser reads as it sends
// them (never whole, never copied into the page), and never more than FILE_WINDOW beyond what
// the proxy said it has taken; the proxy's answer says where the file
// landed (~/Transfer in the desktop) or why it was refused.
//
//   const u = new Uploader((msg) => transport.send(msg));   // msg: an ArrayBuffer or a Blob
//   u.on('change', (up) => ...);   // { id, name, size, done, state, message, path, sha256 }
//   const id = u.add(file);        // a File or Blob with a name
//   u.cancel(id);
//   u.message(m);                  // a decoded fileProgress / fileSaved / fileRefused
//   u.closed();                    // the connection went: unfinished uploads failed
//
// state: 'sending', 'cancelling', then 'saved', 'refused', 'cancelled' or 'failed'.
import { Emitter } from './events.js';
import { FILE_WINDOW, MAX_FILE_CHUNK, fileCancelMessage, fileDataBlob, fileOpenMessage } from './protocol.js';

const LOST = 'the connection to the desktop was lost before the file arrived';

export class Uploader extends Emitter {
  constructor(send) {
    super();
    this.send = send;
    this.uploads = new Map();
    this._next = 1;
  }

  // Starts uploading `file`; returns its id.
  add(file) {
    const id = this._next++;
    const up = {
      id, name: file.name, size: file.size, sent: 0, done: 0, state: 'sending',
      message: '', path: '', sha256: '', file,
    };
    this.uploads.set(id, up);
    if (!this.send(fileOpenMessage(id, file.size, file.name))) {
      this._end(up, 'failed', LOST);
      return id;
    }
    this._changed(up);
    this._pump(up);
    return id;
  }

  cancel(id) {
    const up = this.uploads.get(id);
    if (!up || up.state !== 'sending') return;
    up.state = 'cancelling';
    this.send(fileCancelMessage(id));
    this._changed(up);
  }

  message(m) {
    const up = this.uploads.get(m.id);
    if (!up || !(up.state === 'sending' || up.state === 'cancelling')) return;
    switch (m.type) {
      case 'fileProgress':
        up.done = Math.min(m.done, up.size);
        this._changed(up);
        this._pump(up);
        return;
      case 'fileSaved':
        up.done = up.size;
        up.path = m.path;
        up.sha256 = m.sha256;
        this._end(up, 'saved', '');
        return;
      case 'fileRefused':
        this._end(up, up.state === 'cancelling' ? 'cancelled' : 'refused', m.message);
        return;
      default:
    }
  }

  closed() {
    for (const up of this.uploads.values()) {
      if (up.state === 'sending' || up.state === 'cancelling') this._end(up, 'failed', LOST);
    }
  }

  // Forgets finished uploads.
  clearFinished() {
    for (const [id, up] of this.uploads) {
      if (up.state !== 'sending' && up.state !== 'cancelling') this.uploads.delete(id);
    }
  }

  _end(up, state, message) {
    up.state = state;
    up.message = message;
    up.file = null;
    this._changed(up);
  }

  _changed(up) {
    const { id, name, size, done, state, message, path, sha256 } = up;
    this.emit('change', { id, name, size, done, state, message, path, sha256 });
  }

  // Sends chunks while the window allows; called again by each progress.
  _pump(up) {
    while (up.state === 'sending' && up.sent < up.size && up.sent < up.done + FILE_WINDOW) {
      const end = Math.min(up.size, up.sent + MAX_FILE_CHUNK);
      // A slice of the File, read by the browser as it sends: no copy of it in the page. A file
      // that can no longer be read (changed or removed since it was chosen) fails the
      // connection, and with it the upload.
      if (!this.send(fileDataBlob(up.id, up.file.slice(up.sent, end)))) {
        this._end(up, 'failed', LOST);
        return;
      }
      up.sent = end;
    }
  }
}
