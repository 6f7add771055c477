// The viewer's uploads: an "Upload files" button, files dropped on the desktop, and a panel
// with each file's progress, a Cancel button while it goes, and where it landed or why it was
// refused. The files go through the display session (viewer/uploads.js).
//
//   const u = new UploadPanel({ dropTarget });
//   toolbar.append(u.button);  page.append(u.panel);
//   u.attach(session);   // on each connection; u.allow(h.fileUpload) once connected

import { el, announce } from '../ui.js';

export function sizeText(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${(n / (1 << 30)).toFixed(2)} GiB`;
}

export class UploadPanel {
  constructor({ dropTarget }) {
    this.session = null;
    this.allowed = false;
    this.rows = new Map();
    this.input = el('input', { type: 'file', multiple: true, id: 'upload-input', hidden: true,
      onchange: () => { this._send([...this.input.files]); this.input.value = ''; } });
    this.button = el('button', { type: 'button', id: 'upload', hidden: true,
      title: 'Upload files into your desktop (they land in the Transfer folder of your home)',
      onclick: () => this.input.click() }, 'Upload files');
    this.list = el('ul', { class: 'upload-list' });
    const clear = el('button', { type: 'button', class: 'secondary', onclick: () => this._clear() }, 'Clear finished');
    this.panel = el('section', { class: 'upload-panel', id: 'upload-panel', 'aria-label': 'Uploads', hidden: true },
      el('div', { class: 'upload-head' }, el('strong', {}, 'Uploads to ~/Transfer'), clear), this.list, this.input);
    this.hint = el('div', { class: 'drop-hint', hidden: true }, 'Drop files to upload them to the Transfer folder of your desktop');
    dropTarget.append(this.hint);
    dropTarget.addEventListener('dragover', (e) => {
      if (!e.dataTransfer || ![...e.dataTransfer.types].includes('Files')) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = this.allowed ? 'copy' : 'none';
      this.hint.hidden = !this.allowed;
    });
    dropTarget.addEventListener('dragleave', () => { this.hint.hidden = true; });
    dropTarget.addEventListener('drop', (e) => {
      if (!e.dataTransfer || e.dataTransfer.files.length === 0) return;
      e.preventDefault();
      this.hint.hidden = true;
      if (!this.allowed) {
        announce('Uploading files into this desktop is not allowed for you.', true);
        return;
      }
      this._send([...e.dataTransfer.files]);
    });
  }

  attach(session) {
    this.session = session;
    // Upload ids start again with each connection: rows are keyed by both.
    this.generation = (this.generation || 0) + 1;
    this.allow(false);
    session.on('upload', (u) => this._show(u));
  }

  allow(on) {
    this.allowed = Boolean(on);
    this.button.hidden = !this.allowed;
  }

  _send(files) {
    if (!this.session || !this.allowed) return;
    for (const f of files) {
      if (this.session.upload(f) === null) {
        announce('The desktop is not connected: the file was not uploaded.', true);
        return;
      }
    }
    this.panel.hidden = false;
  }

  _clear() {
    for (const [key, row] of this.rows) {
      if (row.dataset.state !== 'sending' && row.dataset.state !== 'cancelling') {
        row.remove();
        this.rows.delete(key);
      }
    }
    if (this.rows.size === 0) this.panel.hidden = true;
  }

  _show(u) {
    const session = this.session;
    const key = `${this.generation}:${u.id}`;
    let row = this.rows.get(key);
    if (!row) {
      const progress = el('progress', { max: String(Math.max(1, u.size)), value: '0' });
      const status = el('span', { class: 'upload-status', role: 'status' });
      const cancel = el('button', { type: 'button', class: 'secondary', onclick: () => session.cancelUpload(u.id) }, 'Cancel');
      row = el('li', { class: 'upload-row' }, el('span', { class: 'upload-name', text: u.name }), progress, status, cancel);
      row.progress = progress;
      row.status = status;
      row.cancel = cancel;
      this.rows.set(key, row);
      this.list.prepend(row);
      this.panel.hidden = false;
    }
    row.dataset.state = u.state;
    // How the bytes went: over the upload's own link, or the display connection.
    row.dataset.via = u.linked ? 'link' : 'connection';
    row.progress.value = String(u.done);
    row.cancel.hidden = u.state !== 'sending';
    row.classList.toggle('error', u.state === 'refused' || u.state === 'failed');
    switch (u.state) {
      case 'sending': row.status.textContent = `${sizeText(u.done)} of ${sizeText(u.size)}`; break;
      case 'cancelling': row.status.textContent = 'Cancelling…'; break;
      case 'saved':
        row.status.textContent = `Saved as ${u.path}`;
        row.title = `SHA-256 ${u.sha256}`;
        announce(`${u.name} was uploaded to ${u.path}.`);
        break;
      case 'cancelled': row.status.textContent = 'Cancelled: nothing was left in the desktop.'; break;
      default:
        row.status.textContent = u.message;
        announce(u.message, true);
    }
  }
}
