// Downloads: files of the desktop's ~/Transfer, to the browser (docs/display-protocol.md,
// "Downloads").
//
// With `links` (a browser page), a download is asked for over a one-time link (fileFetch): the
// proxy answers with fileLink, and the link opens in a hidden frame, so the browser's own
// download takes the bytes from its connection to disk; none pass through this page. The
// proxy tells how far it got (fileProgress) and that all of it went (fileDone). A cancel, a
// refusal or a failure ends the link's response early, so the browser's download fails.
//
// Without links, or when the link was not fetched in time (the proxy then sends fileStart),
// the bytes come over the display connection: the proxy sends at most FILE_WINDOW beyond what
// this viewer said it took, and this viewer says it took a chunk once its saver had room for
// it (viewer/savers.js: the browser's own download through the service worker, or a Blob), so
// memory stays bounded end to end. The file is the user's only once the proxy said it is whole
// and passed its checks (fileDone); a refused or cut-off download is thrown away.
//
//   const d = new Downloader((buf) => transport.send(buf), saver, links);   // saver: blobSaver by default
//   // links: { url(token) -> the link's URL, open(url) -> { done() } }, or null
//   d.on('list', ({ message, files }) => ...);   // files: [{ name, size, modified }]
//   d.on('change', (dl) => ...);   // { id, name, size, done, state, message, sha256, blob }
//   d.list();  const id = d.get({ name, size });  d.cancel(id);
//   d.message(m);   // a decoded fileList / fileProgress / fileLink / fileStart / fileChunk / fileDone / fileRefused
//   d.closed();     // the connection went: unfinished downloads failed
//
// state: 'checking' (the proxy reads the file and its scanner checks it), 'receiving',
// 'cancelling', then 'saved' (blob set when the saver made one; `linked` when the browser
// fetched the link), 'refused', 'cancelled' or 'failed'.
// Ids: uploads count from 1, downloads from DOWNLOAD_IDS, so the answers the two share
// (fileProgress, fileRefused, and the fileCancel this viewer sends) never mix.
import { Emitter } from './events.js';
import { fileCancelMessage, fileFetchMessage, fileGetMessage, fileListMessage, fileTakenMessage } from './protocol.js';
import { blobSaver } from './savers.js';

export const DOWNLOAD_IDS = 0x80000000;
const LOST = 'the connection to the desktop was lost before the file arrived';

const going = (dl) => dl.state === 'checking' || dl.state === 'receiving' || dl.state === 'cancelling';

export class Downloader extends Emitter {
  constructor(send, saver = blobSaver, links = null) {
    super();
    this.send = send;
    this.saver = saver;
    this.links = links;
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
      sink: null, tail: Promise.resolve(), blob: null, started: false, link: null,
    };
    this.downloads.set(id, dl);
    if (this.links) {
      // The saver is needed only if the link is not fetched: its limit is checked then.
      if (!this.send(fileFetchMessage(id, name))) this._end(dl, 'failed', LOST);
      else this._changed(dl);
      return id;
    }
    if (size > this.saver.limit) {
      this._end(dl, 'refused', `${name} is too large for this browser to download `
        + `(at most ${Math.floor(this.saver.limit / 2 ** 20)} MiB here; open Atrium over https for larger files).`);
      return id;
    }
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
        if (dl.link) {
          // The browser's download has this much of it.
          dl.done = Math.min(m.done, dl.size);
          this._changed(dl);
          return;
        }
        // The proxy has read (and scanned) this much of it from the desktop.
        if (dl.state === 'checking') {
          dl.checked = Math.min(m.done, dl.size);
          this._changed(dl);
        }
        return;
      case 'fileLink': {
        if (dl.started || dl.link || !this.links) return this._fail(dl, 'the proxy started this download twice');
        dl.size = m.size;
        try {
          dl.link = this.links.open(this.links.url(m.token));
        } catch (e) {
          return this._fail(dl, `the browser could not start the download (${e && e.message ? e.message : e})`);
        }
        if (dl.state === 'checking') dl.state = 'receiving';
        this._changed(dl);
        return;
      }
      case 'fileStart':
        if (dl.started) return this._fail(dl, 'the proxy started this download twice');
        if (dl.link) {
          // The link was not fetched in time (withdrawn): the bytes come this way instead.
          dl.link.done();
          dl.link = null;
        }
        if (m.size > this.saver.limit) return this._fail(dl, 'the file grew too large for this browser to download');
        dl.started = true;
        dl.size = m.size;
        try {
          dl.sink = this.saver.open({ name: dl.name, size: dl.size });
        } catch (e) {
          return this._fail(dl, `the browser could not save it (${e && e.message ? e.message : e})`);
        }
        if (dl.state === 'checking') dl.state = 'receiving';
        this._changed(dl);
        return;
      case 'fileChunk': {
        if (!dl.started || dl.done + m.data.length > dl.size) {
          return this._fail(dl, 'the proxy sent more than the file');
        }
        // Not copied: the saver takes the bytes over (the message's buffer is this chunk's own).
        const { data } = m;
        dl.done += data.length;
        const upTo = dl.done;
        // Taken once the saver has room: the proxy's window then holds the rest.
        this._then(dl, () => dl.sink.write(data), () => {
          this.send(fileTakenMessage(dl.id, upTo));
          this._changed(dl);
        });
        return;
      }
      case 'fileDone':
        if (dl.link) {
          dl.done = dl.size;
          dl.sha256 = m.sha256;
          this._end(dl, 'saved', '');
          return;
        }
        if (!dl.started || dl.done !== dl.size) return this._fail(dl, 'the file arrived incomplete');
        this._then(dl, () => dl.sink.close(), (blob) => {
          dl.blob = blob;
          dl.sha256 = m.sha256;
          this._end(dl, 'saved', '');
        });
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

  // Runs `step` after the download's earlier steps, then `after` with its result, while the
  // download goes on; a step that fails fails the download.
  _then(dl, step, after) {
    dl.tail = dl.tail.then(() => (going(dl) ? step() : undefined)).then((r) => {
      if (going(dl)) after(r);
    }, (e) => {
      if (going(dl)) this._fail(dl, `the browser could not save it (${e && e.message ? e.message : e})`);
    });
  }

  _fail(dl, why) {
    this.send(fileCancelMessage(dl.id));
    this._end(dl, 'failed', `${dl.name}: ${why}`);
  }

  _end(dl, state, message) {
    dl.state = state;
    dl.message = message;
    if (state !== 'saved' && dl.sink) dl.sink.abort(new Error(message || state));
    dl.sink = null;
    // The frame stays a while: removing it at once can stop the browser's download.
    if (dl.link) dl.link.done();
    this._changed(dl);
    // The file is the page's now (or gone): this viewer keeps nothing of it.
    dl.blob = null;
  }

  _changed(dl) {
    const { id, name, size, done, state, message, sha256 } = dl;
    const checked = dl.checked || 0;
    const linked = dl.link !== null;
    this.emit('change', { id, name, size, done, checked, state, message, sha256, linked, blob: state === 'saved' ? dl.blob : null });
  }
}

// Opens a download's link in a hidden frame of this page: the browser's own download takes it
// from there. The frame may do nothing but download (no script, whatever the link answers).
// It is removed a minute after the download ended.
export function frameLink(url) {
  const frame = document.createElement('iframe');
  frame.hidden = true;
  frame.sandbox = 'allow-downloads';
  frame.src = url;
  document.body.append(frame);
  return { done: () => setTimeout(() => frame.remove(), 60_000) };
}

// The URL of a download's link beside the display connection `wsUrl` (`ws[s]://host/…/ws/{vm}?…`
// -> `http[s]://host/…/files/{vm}/{token}`); null when `wsUrl` is not of that form.
export function linkUrl(wsUrl, token) {
  let u;
  try {
    u = new URL(wsUrl);
  } catch {
    return null;
  }
  const m = /^(.*)\/ws\/([^/]+)$/.exec(u.pathname);
  if (!m || !(u.protocol === 'ws:' || u.protocol === 'wss:')) return null;
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  u.pathname = `${m[1]}/files/${m[2]}/${token}`;
  u.search = '';
  u.hash = '';
  return u.href;
}
