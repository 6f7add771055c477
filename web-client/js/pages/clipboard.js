// The viewer's clipboard: a Clipboard button that opens a panel with what goes to the desktop
// (typed or pasted in, or taken from this computer's clipboard) and what the desktop copied:
// text, or an image (PNG) where the desktop offers one. Pasting an image into the box, or
// Paste from my clipboard when this computer's clipboard holds an image and no text, sends it.
//
// The desktop's clipboard is written to this computer's only when the user asked for it just
// before it arrived: a copy shortcut or a click in the desktop (a menu's Copy), within
// COPY_GESTURE_MS. A program in the desktop that changes its clipboard on its own cannot write
// into the user's; the panel shows what it copied, and Copy to my clipboard takes it.
//
//   const c = new ClipboardPanel();
//   toolbar.append(c.button);  page.append(c.panel);
//   c.watchGestures(canvas);
//   c.attach(session);   // on each connection; c.allow(h.clipboardIn, h.clipboardOut) once connected

import { el, announce } from '../ui.js';
import { MAX_CLIPBOARD_IMAGE } from '../viewer/protocol.js';

export const COPY_GESTURE_MS = 5000;

const kib = (n) => `${Math.ceil(n / 1024)} KiB`;

export class ClipboardPanel {
  constructor() {
    this.session = null;
    // When the user last asked the desktop to copy (performance.now()).
    this.copyAskedAt = -Infinity;
    this.fromDesktop = el('textarea', { id: 'clip-out', readonly: true, 'aria-label': 'Text copied in the desktop' });
    this.fromDesktopImage = el('img', { id: 'clip-out-image', class: 'clipboard-image', alt: 'Image copied in the desktop', hidden: true });
    // The image the desktop copied last (a Blob), while it is the newest copy.
    this.desktopImage = null;
    this.toDesktop = el('textarea', { id: 'clip-in', 'aria-label': 'Text to paste into the desktop (or paste an image here)' });
    this.toDesktop.addEventListener('paste', (e) => this._pastedInBox(e));
    this.status = el('span', { role: 'status' });
    this.send = el('button', { type: 'button', onclick: () => this._send() }, 'Send to desktop');
    this.pasteLocal = el('button', { type: 'button', class: 'secondary', onclick: () => this._pasteLocal() }, 'Paste from my clipboard');
    this.copyLocal = el('button', { type: 'button', class: 'secondary', onclick: () => this._copyLocal() }, 'Copy to my clipboard');
    this.panel = el('section', { class: 'clipboard-panel', id: 'clip-panel', 'aria-label': 'Clipboard', hidden: true },
      el('label', { for: 'clip-in' }, 'To the desktop', this.toDesktop),
      el('div', { class: 'actions' }, this.send, this.pasteLocal),
      el('label', { for: 'clip-out' }, 'From the desktop', this.fromDesktop),
      this.fromDesktopImage,
      el('div', { class: 'actions' }, this.copyLocal, this.status));
    this.button = el('button', { type: 'button', 'aria-pressed': 'false', 'aria-controls': 'clip-panel',
      onclick: () => this.toggle() }, 'Clipboard');
  }

  toggle() {
    this.panel.hidden = !this.panel.hidden;
    this.button.setAttribute('aria-pressed', String(!this.panel.hidden));
    if (!this.panel.hidden) this.toDesktop.focus();
  }

  // A copy shortcut or a click in `canvas` (the desktop) is the user asking for a copy.
  watchGestures(canvas) {
    canvas.addEventListener('keydown', (e) => {
      if ((e.ctrlKey || e.metaKey) && (e.code === 'KeyC' || e.code === 'Insert')) this.copyAskedAt = performance.now();
    }, true);
    canvas.addEventListener('pointerup', () => { this.copyAskedAt = performance.now(); }, true);
  }

  allow(pasteIn, copyOut) {
    this.send.disabled = !pasteIn;
    this.pasteLocal.disabled = !pasteIn;
    this.copyLocal.disabled = !copyOut;
  }

  attach(session) {
    this.session = session;
    session.on('clipboard', ({ text }) => this._copied(text));
    session.on('clipboardImage', ({ png }) => this._copiedImage(png));
    session.on('clipboardRefused', ({ out, size, limit }) => {
      // What the panel showed is not the desktop's clipboard any more.
      if (out) {
        this._dropImage();
        this.fromDesktop.value = '';
      }
      const what = out ? 'What the desktop copied' : 'What you pasted';
      // A limit of 0: an image, where the policy lets only text cross.
      const why = limit === 0 ? 'is an image, and this desktop\'s clipboard takes only text'
        : `is over this desktop's clipboard limit of ${kib(limit)}`;
      const msg = `${what} (${kib(size)}) ${why}: it was not ${out ? 'sent to you' : 'pasted'}.`;
      this.status.textContent = msg;
      announce(msg, true);
    });
  }

  // Whether the user asked for a copy just now (and takes that ask).
  _asked() {
    if (!navigator.clipboard || performance.now() - this.copyAskedAt > COPY_GESTURE_MS) return false;
    this.copyAskedAt = -Infinity;
    return true;
  }

  // Forgets the image the desktop copied (newer text came, or another image).
  _dropImage() {
    if (this.fromDesktopImage.src) URL.revokeObjectURL(this.fromDesktopImage.src);
    this.fromDesktopImage.removeAttribute('src');
    this.fromDesktopImage.hidden = true;
    this.desktopImage = null;
  }

  _copiedImage(png) {
    this._dropImage();
    const blob = new Blob([png], { type: 'image/png' });
    this.desktopImage = blob;
    this.fromDesktop.value = '';
    this.fromDesktopImage.src = URL.createObjectURL(blob);
    this.fromDesktopImage.hidden = false;
    if (typeof ClipboardItem === 'function' && this._asked()) {
      navigator.clipboard.write([new ClipboardItem({ 'image/png': blob })])
        .then(() => { this.status.textContent = 'Copied to your clipboard.'; }, () => {
          this.status.textContent = 'The desktop copied an image: Copy to my clipboard takes it to this computer.';
        });
    } else {
      this.status.textContent = 'The desktop copied an image: Copy to my clipboard takes it to this computer.';
    }
  }

  _copied(text) {
    this._dropImage();
    this.fromDesktop.value = text;
    if (this._asked()) {
      navigator.clipboard.writeText(text).then(() => { this.status.textContent = 'Copied to your clipboard.'; }, () => {});
    } else {
      this.status.textContent = 'The desktop copied text: Copy to my clipboard takes it to this computer.';
    }
  }

  _send() {
    if (!this.session || !this.session.sendClipboard(this.toDesktop.value)) {
      this.status.textContent = 'Pasting into this desktop is not allowed.';
    } else {
      this.status.textContent = 'Sent to the desktop.';
    }
  }

  // An image (a Blob or File of PNG) to the desktop's clipboard.
  async _sendImage(blob) {
    if (blob.size > MAX_CLIPBOARD_IMAGE) {
      this.status.textContent = `The image (${kib(blob.size)}) is over the clipboard's limit of ${kib(MAX_CLIPBOARD_IMAGE)}: it was not pasted.`;
      return;
    }
    const png = new Uint8Array(await blob.arrayBuffer());
    if (this.session && this.session.clipboardIn && !this.session.clipboardImagesIn) {
      this.status.textContent = 'This desktop\'s clipboard takes only text: the image was not pasted.';
    } else if (!this.session || !this.session.sendClipboardImage(png)) {
      this.status.textContent = 'Pasting into this desktop is not allowed.';
    } else {
      this.status.textContent = 'Image sent to the desktop.';
    }
  }

  // An image pasted into the box (and no text with it) goes to the desktop as it is.
  _pastedInBox(e) {
    const data = e.clipboardData;
    if (!data || data.types.includes('text/plain')) return;
    const file = Array.from(data.files).find((f) => f.type === 'image/png');
    if (!file) return;
    e.preventDefault();
    this._sendImage(file);
  }

  async _pasteLocal() {
    try {
      // Text when there is any, else an image (as the desktop takes what it copies), from one
      // read: a browser may ask the user to allow each read.
      if (!navigator.clipboard.read) {
        this.toDesktop.value = await navigator.clipboard.readText();
        this._send();
        return;
      }
      const items = await navigator.clipboard.read();
      const text = items.find((i) => i.types.includes('text/plain'));
      const image = items.find((i) => i.types.includes('image/png'));
      if (!text && image) {
        await this._sendImage(await image.getType('image/png'));
        return;
      }
      if (!text) {
        this.status.textContent = 'Your clipboard holds neither text nor an image.';
        return;
      }
      this.toDesktop.value = await (await text.getType('text/plain')).text();
      this._send();
    } catch (e) {
      this.status.textContent = 'Your browser did not allow reading the clipboard: paste into the box instead.';
    }
  }

  async _copyLocal() {
    if (this.desktopImage) {
      try {
        if (typeof ClipboardItem !== 'function') throw new Error('no ClipboardItem');
        await navigator.clipboard.write([new ClipboardItem({ 'image/png': this.desktopImage })]);
        this.status.textContent = 'Copied to your clipboard.';
      } catch (e) {
        this.status.textContent = 'Your browser did not allow copying the image: right-click it and copy it.';
      }
      return;
    }
    try {
      await navigator.clipboard.writeText(this.fromDesktop.value);
      this.status.textContent = 'Copied to your clipboard.';
    } catch (e) {
      this.fromDesktop.select();
      this.status.textContent = 'Select the text and copy it with your keyboard.';
    }
  }
}
