// Uploads: files sent into the desktop (docs/display-protocol.md, "Uploads"); the proxy's
// answer says where the file landed (~/Transfer in the desktop) or why it was refused.
//
// With `links` (a browser page), an upload is started with filePut: the proxy answers with a
// one-time link (fileLink), and the File is the body of a PUT to it, which the browser streams
// from the disk itself: none of its bytes pass through the page. The proxy tells the progress
// (fileProgress) as the desktop takes it. A link the proxy withdrew unused (fileUnlinked: the
// PUT could not reach it) and uploads without links go over the display connection: in chunks,
// slices of the File that the browser reads as it sends them (never whole, never copied into
// the page), and never more than FILE_WINDOW beyond what the proxy said it has taken.
//
//   const u = new Uploader((msg) => transport.send(msg), links);   // msg: an ArrayBuffer or a Blob
//   // links: { url(token) -> the link's URL, put(url, file, signal) -> a Promise }, or null
//   u.on('change', (up) => ...);   // { id, name, size, done, state, message, path, sha256, linked }
//   const id = u.add(file);        // a File or Blob with a name
//   u.cancel(id);
//   u.message(m);                  // a decoded fileProgress / fileLink / fileUnlinked / fileSaved / fileRefused
//   u.closed();                    // the connection went: unfinished uploads failed
//
// state: 'sending', 'cancelling', then 'saved', 'refused', 'cancelled' or 'failed'.
import { Emitter } from './events.js';
import { FILE_WINDOW, MAX_FILE_CHUNK, fileCancelMessage, fileDataBlob, fileOpenMessage, filePutMessage } from './protocol.js';

const LOST = 'the connection to the desktop was lost before the file arrived';

export class Uploader extends Emitter {
  constructor(send, links = null) {
    super();
    this.send = send;
    this.links = links;
    this.uploads = new Map();
    this._next = 1;
  }

  // Starts uploading `file`; returns its id.
  add(file) {
    const id = this._next++;
    const up = {
      id, name: file.name, size: file.size, sent: 0, done: 0, state: 'sending',
      message: '', path: '', sha256: '', file,
      // Set while the bytes go over the link (or wait for it): the PUT's AbortController.
      linked: this.links ? new AbortController() : null,
    };
    this.uploads.set(id, up);
    const start = up.linked ? filePutMessage(id, file.size, file.name) : fileOpenMessage(id, file.size, file.name);
    if (!this.send(start)) {
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
    // A PUT going on stops when the proxy has ended the upload (and says it was cancelled).
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
      case 'fileLink': {
        if (!up.linked || !this.links || up.putting || m.size !== up.size) {
          this.send(fileCancelMessage(up.id));
          this._end(up, 'failed', `${up.name}: the proxy offered a link this upload did not ask for`);
          return;
        }
        up.putting = true;
        // The proxy tells how it ends (fileSaved or fileRefused), whatever the PUT says.
        this.links.put(this.links.url(m.token), up.file, up.linked.signal).catch(() => {});
        return;
      }
      case 'fileUnlinked':
        // The link was not reached (another gateway, a page that may not PUT there): the
        // bytes go over this connection.
        if (up.linked) up.linked.abort();
        up.linked = null;
        up.putting = false;
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
    // A PUT still going (refused, cancelled) stops; a finished one is left alone.
    if (up.linked && state !== 'saved') up.linked.abort();
    up.file = null;
    this._changed(up);
  }

  _changed(up) {
    const { id, name, size, done, state, message, path, sha256 } = up;
    // linked: the file went (or goes) as the PUT of its link.
    const linked = Boolean(up.putting);
    this.emit('change', { id, name, size, done, state, message, path, sha256, linked });
  }

  // Sends chunks while the window allows; called again by each progress.
  _pump(up) {
    while (!up.linked && up.state === 'sending' && up.sent < up.size && up.sent < up.done + FILE_WINDOW) {
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

// The browser's side of an upload's link: the File as the body of a PUT, which the browser reads
// from the disk as it sends. Cookies go only to this page's own origin (an edge that keeps a
// browser on one gateway by a cookie sees it); the link's token is the credential.
export function putLink(url, file, signal) {
  return fetch(url, {
    method: 'PUT', body: file, signal, credentials: 'same-origin', cache: 'no-store',
    headers: { 'Content-Type': 'application/octet-stream' },
  });
}
