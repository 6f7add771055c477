// Downloads: files of the desktop's ~/Transfer sent to the browser over the display connection
// (docs/display-protocol.md, "Downloads"). The proxy sends at most FILE_WINDOW beyond what
// this viewer said it took; the chunks gather into a Blob (which the browser may keep on its
// disk), and the file is given to the user only once the proxy said it is whole and passed
// its checks (fileDone). A refused or cut-off download is thrown away.
//
//   const d = new Downloader((buf) => transport.send(buf));
//   d.on('list', ({ message, files }) => ...);   // files: [{ name, size, modified }]
//   d.on('change', (dl) => ...);   // { id, name, size, done, state, message, sha256, blob }
//   d.list();  const id = d.get({ name, size });  d.cancel(id);
//   d.message(m);   // a decoded fileList / fileProgress / fileStart / fileChunk / fileDone / fileRefused
//   d.closed();     // the connection went: unfinished downloads failed
//
// state: 'checking' (the proxy reads the file and its scanner checks it), 'receiving',
// 'cancelling', then 'saved' (blob set), 'refused', 'cancelled' or 'failed'.
// Ids: uploads count from 1, downloads from DOWNLOAD_IDS, so the answers the two share
// (fileProgress, fileRefused, and the fileCancel this viewer sends) never mix.
import { Emitter } from './events.js';
import { fileCancelMessage, fileGetMessage, fileListMessage, fileTakenMessage } from './protocol.js';

export const DOWNLOAD_IDS = 0x80000000;
// Received chunks are merged into the download's Blob every so many bytes.
const MERGE_BYTES = 16 << 20;
const LOST = 'the connection to the desktop was lost before the file arrived';

const going = (dl) => dl.state === 'checking' || dl.state === 'receiving' || dl.state === 'cancelling';

export class Downloader extends Emitter {
  constructor(send) {
    super();
    this.send = send;
    this.downloads = new Map();
    this._next = DOWNLOAD_IDS;
  }

  // Asks for the list of files; it comes as a 'list' event. False when not connected.
  list() {
    return this.send(fileListMessage());
  }

  // Downloads `file` (an entry of the list); returns its id.
  get({ name, size }) {
    const id = this._next++;
    const dl = {
      id, name, size, done: 0, state: 'checking', message: '', sha256: '',
      parts: [], partBytes: 0, blob: new Blob([]), started: false,
    };
    this.downloads.set(id, dl);
    if (!this.send(fileGetMessage(id, name))) {
      this._end(dl, 'failed', LOST);
      return id;
    }
    this._changed(dl);
    return id;
  }

  cancel(id) {
    const dl = this.downloads.get(id);
    if (!dl || !(dl.state === 'checking' || dl.state === 'receiving')) return;
    dl.state = 'cancelling';
    this.send(fileCancelMessage(id));
    this._changed(dl);
  }

  message(m) {
    if (m.type === 'fileList') {
      this.emit('list', { message: m.message, files: m.files });
      return;
    }
    const dl = this.downloads.get(m.id);
    if (!dl || !going(dl)) return;
    switch (m.type) {
      case 'fileProgress':
        // The proxy has read (and scanned) this much of it from the desktop.
        if (dl.state === 'checking') {
          dl.checked = Math.min(m.done, dl.size);
          this._changed(dl);
        }
        return;
      case 'fileStart':
        if (dl.started) return this._fail(dl, 'the proxy started this download twice');
        dl.started = true;
        dl.size = m.size;
        if (dl.state === 'checking') dl.state = 'receiving';
        this._changed(dl);
        return;
      case 'fileChunk': {
        if (!dl.started || dl.done + m.data.length > dl.size) {
          return this._fail(dl, 'the proxy sent more than the file');
        }
        // A copy: the message's buffer is not kept.
        dl.parts.push(m.data.slice());
        dl.partBytes += m.data.length;
        dl.done += m.data.length;
        if (dl.partBytes >= MERGE_BYTES) this._merge(dl);
        this.send(fileTakenMessage(dl.id, dl.done));
        this._changed(dl);
        return;
      }
      case 'fileDone':
        if (!dl.started || dl.done !== dl.size) return this._fail(dl, 'the file arrived incomplete');
        this._merge(dl);
        dl.sha256 = m.sha256;
        this._end(dl, 'saved', '');
        return;
      case 'fileRefused':
        this._end(dl, dl.state === 'cancelling' ? 'cancelled' : 'refused', m.message);
        return;
      default:
    }
  }

  closed() {
    for (const dl of this.downloads.values()) {
      if (going(dl)) this._end(dl, 'failed', LOST);
    }
  }

  // Forgets finished downloads.
  clearFinished() {
    for (const [id, dl] of this.downloads) {
      if (!going(dl)) this.downloads.delete(id);
    }
  }

  _merge(dl) {
    if (dl.parts.length === 0) return;
    dl.blob = new Blob([dl.blob, ...dl.parts]);
    dl.parts = [];
    dl.partBytes = 0;
  }

  _fail(dl, why) {
    this.send(fileCancelMessage(dl.id));
    this._end(dl, 'failed', `${dl.name}: ${why}`);
  }

  _end(dl, state, message) {
    dl.state = state;
    dl.message = message;
    dl.parts = [];
    this._changed(dl);
    // The file is the page's now (or gone): this viewer keeps nothing of it.
    dl.blob = null;
  }

  _changed(dl) {
    const { id, name, size, done, state, message, sha256 } = dl;
    const checked = dl.checked || 0;
    this.emit('change', { id, name, size, done, checked, state, message, sha256, blob: state === 'saved' ? dl.blob : null });
  }
}
