// Small DOM helpers. Text goes in as text nodes, never as HTML.

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, '');
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const statusBox = () => document.getElementById('status');

/** Announces a message in the live region (read by screen readers). */
export function announce(message, isError = false) {
  const s = statusBox();
  s.classList.toggle('error', isError);
  s.setAttribute('role', isError ? 'alert' : 'status');
  s.textContent = message || '';
}

export function clearStatus() {
  announce('');
}

/** Replaces the main content and moves focus to its heading for screen readers. */
export function render(...nodes) {
  const main = document.getElementById('main');
  main.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
  const h = main.querySelector('h1');
  if (h) {
    h.setAttribute('tabindex', '-1');
    h.focus();
  }
}

export function fmtTime(ms) {
  if (!ms) return '';
  return new Date(ms).toLocaleString();
}

export function table(caption, columns, rows) {
  return el('div', { class: 'table-wrap' },
    el('table', {},
      el('caption', { class: 'visually-hidden', text: caption }),
      el('thead', {}, el('tr', {}, columns.map((c) => el('th', { scope: 'col', text: c })))),
      el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: columns.length, text: 'Nothing here yet.' })))));
}
