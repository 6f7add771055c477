// The viewer's downloads: a "Download files" button that opens a panel listing the files the
// user put in ~/Transfer in the desktop, a Download button for each, and a row per download
// with its progress (the proxy's virus check first, where policy asks for one), a Cancel
// button while it goes, and why it was refused. A file is saved by the browser only once it
// came whole and passed (viewer/downloads.js).
//
//   const d = new DownloadPanel();
//   toolbar.append(d.button);  page.append(d.panel);
//   d.attach(session);   // on each connection; d.allow(h.fileDownload) once connected

import { el, announce } from '../ui.js';
import { sizeText } from './uploads.js';

const going = (state) => state === 'checking' || state === 'receiving' || state === 'cancelling';

// Gives `blob` to the user as a file named `name` (the browser's own download).
function save(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = el('a', { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  // The browser has started saving by now; the URL is not needed after.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export class DownloadPanel {
  constructor() {
    this.session = null;
    this.allowed = false;
    this.rows = new Map();
    this.button = el('button', { type: 'button', id: 'download', hidden: true, 'aria-expanded': 'false',
      'aria-controls': 'download-panel', title: 'Download files you put in the Transfer folder of your desktop',
      onclick: () => this._toggle() }, 'Download files');
    this.status = el('p', { class: 'download-message', role: 'status' });
    this.files = el('ul', { class: 'download-files', id: 'download-files' });
    this.list = el('ul', { class: 'upload-list' });
    const refresh = el('button', { type: 'button', class: 'secondary', onclick: () => this._refresh() }, 'Refresh');
    const clear = el('button', { type: 'button', class: 'secondary', onclick: () => this._clear() }, 'Clear finished');
    this.panel = el('section', { class: 'upload-panel', id: 'download-panel', 'aria-label': 'Downloads', hidden: true },
      el('div', { class: 'upload-head' }, el('strong', {}, 'Files in ~/Transfer'), el('span', { class: 'download-actions' }, refresh, clear)),
      this.status, this.files, this.list);
  }

  attach(session) {
    this.session = session;
    // Download ids start again with each connection: rows are keyed by both.
    this.generation = (this.generation || 0) + 1;
    this.allow(false);
    session.on('fileList', (l) => this._listed(l));
    session.on('download', (d) => this._show(d));
  }

  allow(on) {
    this.allowed = Boolean(on);
    this.button.hidden = !this.allowed;
    if (!this.allowed) this.panel.hidden = true;
  }

  _toggle() {
    this.panel.hidden = !this.panel.hidden;
    this.button.setAttribute('aria-expanded', String(!this.panel.hidden));
    if (!this.panel.hidden) this._refresh();
  }

  _refresh() {
    if (!this.session || !this.session.listFiles()) {
      this.status.textContent = 'The desktop is not connected.';
      return;
    }
    this.status.textContent = 'Looking for files…';
  }

  _listed({ message, files }) {
    this.files.replaceChildren();
    if (message) {
      this.status.textContent = message;
      return;
    }
    this.status.textContent = files.length === 0
      ? 'No files yet: put the files you want here in the Transfer folder of your desktop, then Refresh.'
      : `${files.length} file${files.length === 1 ? '' : 's'}, newest first.`;
    for (const f of files) {
      const when = new Date(f.modified * 1000).toLocaleString();
      const get = el('button', { type: 'button', class: 'secondary', 'aria-label': `Download ${f.name}`,
        onclick: () => this._get(f) }, 'Download');
      this.files.append(el('li', { class: 'download-file' }, el('span', { class: 'upload-name', text: f.name }),
        el('span', { class: 'download-meta', text: `${sizeText(f.size)} · ${when}` }), get));
    }
  }

  _get(file) {
    if (!this.session || this.session.download(file) === null) {
      announce('The desktop is not connected: nothing was downloaded.', true);
    }
  }

  _clear() {
    for (const [key, row] of this.rows) {
      if (!going(row.dataset.state)) {
        row.remove();
        this.rows.delete(key);
      }
    }
  }

  _show(d) {
    const session = this.session;
    const key = `${this.generation}:${d.id}`;
    let row = this.rows.get(key);
    if (!row) {
      const progress = el('progress', { max: String(Math.max(1, d.size)), value: '0' });
      const status = el('span', { class: 'upload-status', role: 'status' });
      const cancel = el('button', { type: 'button', class: 'secondary', onclick: () => session.cancelDownload(d.id) }, 'Cancel');
      row = el('li', { class: 'upload-row download-row' }, el('span', { class: 'upload-name', text: d.name }), progress, status, cancel);
      Object.assign(row, { progress, status, cancel });
      this.rows.set(key, row);
      this.list.prepend(row);
      this.panel.hidden = false;
    }
    row.dataset.state = d.state;
    row.progress.max = String(Math.max(1, d.size));
    row.progress.value = String(d.state === 'checking' ? d.checked : d.done);
    row.cancel.hidden = !(d.state === 'checking' || d.state === 'receiving');
    row.classList.toggle('error', d.state === 'refused' || d.state === 'failed');
    switch (d.state) {
      case 'checking':
        row.status.textContent = d.checked > 0 ? `Checking: ${sizeText(d.checked)} of ${sizeText(d.size)}` : 'Checking…';
        break;
      case 'receiving': row.status.textContent = `${sizeText(d.done)} of ${sizeText(d.size)}`; break;
      case 'cancelling': row.status.textContent = 'Cancelling…'; break;
      case 'saved':
        // Saved by the browser as it came (the service worker), or given whole as a Blob.
        if (d.blob) save(d.blob, d.name);
        row.status.textContent = 'Downloaded';
        row.title = `SHA-256 ${d.sha256}`;
        announce(`${d.name} was downloaded.`);
        break;
      case 'cancelled': row.status.textContent = 'Cancelled.'; break;
      default:
        row.status.textContent = d.message;
        announce(d.message, true);
    }
  }
}
