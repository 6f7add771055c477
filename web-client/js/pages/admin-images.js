// Admin: the image library. An administrator uploads an operator's own disk image (qcow2, raw,
// VMDK or VHDX) with how it boots; every node fetches it, checks its SHA-256 and imports it. The
// list says, per node, where each image is (a failure says why); pools use an image once a node
// has it ready. The upload goes with XMLHttpRequest for its progress; Chromium streams the file
// from disk.

import { get, del, csrfToken } from '../api.js';
import { el, render, announce, fmtTime } from '../ui.js';

const NAME = '[A-Za-z0-9_\\-][A-Za-z0-9_.\\-]{0,63}';

// The upload's query: how the nodes import it.
export function uploadQuery(s) {
  const q = new URLSearchParams({ firmware: s.firmware, min_memory_mib: String(s.minMemory) });
  if (s.secureBoot) q.set('secure_boot', 'true');
  if (s.tpm) q.set('tpm', 'true');
  if (s.agent) q.set('agent', 'true');
  return q.toString();
}

// How a node is with an image, in words.
export function nodeState(n) {
  if (n.node_up === false && n.state !== 'ready') return `${n.node_id}: out of reach (node lost)`;
  switch (n.state) {
    case 'ready': return `${n.node_id}: ready`;
    case 'fetching': return `${n.node_id}: fetching and checking`;
    case 'failed': return `${n.node_id}: failed: ${n.error || 'no reason given'}`;
    default: return `${n.node_id}: waiting for its next heartbeat`;
  }
}

// How an image boots, in words.
export function bootMode(i) {
  const parts = [i.firmware === 'bios' ? 'BIOS' : 'UEFI'];
  if (i.secure_boot) parts.push('Secure Boot');
  if (i.tpm) parts.push('TPM');
  parts.push(i.agent ? "Atrium's agent" : 'no agent');
  return parts.join(', ');
}

// Whether a node that is up is still on its way with an image (the list is read again soon).
export function pending(images) {
  return images.some((i) => i.nodes.some((n) => n.node_up && (n.state === 'fetching' || n.state === 'waiting')));
}

// The page: the upload form, drawn once, and the list, read again every few seconds while a
// node is on its way. What it returns stops that, and an upload still going, when the user
// leaves.
export async function showImages() {
  const page = { xhr: null, timer: null, left: false, list: el('div', { class: 'table-wrap' }) };
  const first = await get('/api/v1/admin/images');
  render(el('h1', { text: 'Images' }),
    el('p', { class: 'hint', text: 'Your own disk images, booted by UEFI or BIOS. Each node fetches an uploaded image, checks its SHA-256 and imports it; a pool can use it once a node has it ready. Stay on this page until an upload ends.' }),
    uploadForm(page), page.list);
  showList(page, first);
  return () => {
    page.left = true;
    clearTimeout(page.timer);
    if (page.xhr) page.xhr.abort();
  };
}

// Reads the list again and shows it.
async function refresh(page) {
  try {
    const images = await get('/api/v1/admin/images');
    if (!page.left) showList(page, images);
  } catch (e) {
    if (!page.left) announce(e.message, true);
  }
}

// The upload form; the upload goes while the list refreshes beside it.
function uploadForm(page) {
  const file = el('input', { id: 'i-file', name: 'file', type: 'file', required: true, accept: '.qcow2,.raw,.img,.vmdk,.vhdx' });
  const name = el('input', { id: 'i-name', name: 'name', required: true, pattern: NAME, autocomplete: 'off', spellcheck: 'false' });
  const version = el('input', { id: 'i-version', name: 'version', required: true, pattern: NAME, autocomplete: 'off', spellcheck: 'false' });
  const firmware = el('select', { id: 'i-firmware', name: 'firmware' },
    el('option', { value: 'uefi' }, 'UEFI'), el('option', { value: 'bios' }, 'BIOS'));
  const secureBoot = el('input', { id: 'i-secure-boot', type: 'checkbox' });
  const tpm = el('input', { id: 'i-tpm', type: 'checkbox' });
  const agent = el('input', { id: 'i-agent', type: 'checkbox' });
  const minMemory = el('input', { id: 'i-memory', type: 'number', min: 64, max: 4194304, value: 1024, required: true });
  const progress = el('progress', { id: 'i-progress', max: '1', value: '0', hidden: true });
  const error = el('p', { class: 'error-text', role: 'alert' });
  const submit = el('button', { type: 'submit' }, 'Upload');
  const cancel = el('button', { type: 'button', class: 'secondary', hidden: true, onclick: () => page.xhr && page.xhr.abort() }, 'Cancel');
  firmware.addEventListener('change', () => {
    secureBoot.disabled = firmware.value === 'bios';
    if (secureBoot.disabled) secureBoot.checked = false;
  });
  const form = el('form', { class: 'filters', 'aria-label': 'Upload a disk image' },
    el('label', { for: 'i-file' }, 'Disk image (qcow2, raw, VMDK, VHDX)', file),
    el('label', { for: 'i-name' }, 'Name', name),
    el('label', { for: 'i-version' }, 'Version', version),
    el('label', { for: 'i-firmware' }, 'Firmware', firmware),
    el('label', { for: 'i-memory' }, 'Least memory (MiB)', minMemory),
    el('label', { for: 'i-secure-boot', class: 'check' }, secureBoot, 'Secure Boot'),
    el('label', { for: 'i-tpm', class: 'check' }, tpm, 'Virtual TPM'),
    el('label', { for: 'i-agent', class: 'check' }, agent, "Atrium's agent is installed"),
    el('div', { class: 'actions' }, submit, cancel), progress, error);
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    error.textContent = '';
    const f = file.files[0];
    if (!f) return;
    const path = `/api/v1/admin/images/${encodeURIComponent(name.value.trim())}/${encodeURIComponent(version.value.trim())}`;
    const query = uploadQuery({ firmware: firmware.value, minMemory: Number(minMemory.value), secureBoot: secureBoot.checked, tpm: tpm.checked, agent: agent.checked });
    const xhr = new XMLHttpRequest();
    page.xhr = xhr;
    xhr.open('PUT', `${path}?${query}`);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    const token = csrfToken();
    if (token) xhr.setRequestHeader('X-CSRF-Token', token);
    progress.hidden = false;
    progress.max = String(Math.max(1, f.size));
    progress.value = '0';
    submit.disabled = true;
    cancel.hidden = false;
    xhr.upload.onprogress = (e) => { progress.value = String(e.loaded); };
    // Every byte sent: the broker keeps the image now (a Cancel could no longer undo it).
    xhr.upload.onload = () => { cancel.hidden = true; };
    const done = () => { submit.disabled = false; cancel.hidden = true; progress.hidden = true; page.xhr = null; };
    xhr.onload = () => {
      const status = xhr.status;
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
      done();
      if (status === 201) {
        announce(`Image ${body.name}@${body.version} uploaded; the nodes fetch it now.`);
        form.reset();
        firmware.dispatchEvent(new Event('change'));
        refresh(page);
      } else {
        const why = (body && body.error) || `${status}`;
        error.textContent = body && body.field ? `${body.field}: ${why}` : why;
      }
    };
    xhr.onerror = () => { done(); error.textContent = 'The upload broke off: Atrium cannot be reached.'; };
    xhr.onabort = () => {
      done();
      if (page.left) return;
      error.textContent = 'Upload cancelled: nothing was kept.';
      refresh(page);
    };
    xhr.send(f);
  });
  return form;
}

// Shows `images` in the page's list; reads it again in a few seconds while a node is on its way.
function showList(page, images) {
  const rows = images.map((i) => el('tr', {},
    el('th', { scope: 'row', text: `${i.name}@${i.version}` }),
    el('td', { text: bootMode(i) }),
    el('td', { text: `${Math.ceil(i.size_bytes / 1048576)} MiB` }),
    el('td', {}, el('code', { title: i.sha256, text: `${i.sha256.slice(0, 16)}…` })),
    el('td', { text: `${i.uploaded_by}, ${fmtTime(i.uploaded_at)}` }),
    el('td', {}, i.nodes.length
      ? el('ul', { class: 'plain' }, i.nodes.map((n) => el('li', { class: `node-${n.state}`, text: nodeState(n) })))
      : 'no nodes yet'),
    el('td', {}, removeButton(i, () => refresh(page)))));
  page.list.replaceChildren(el('table', { 'aria-label': 'Images' },
    el('thead', {}, el('tr', {}, ['Image', 'Boots with', 'Size', 'SHA-256', 'Uploaded', 'Nodes', ''].map((c) => el('th', { scope: 'col', text: c })))),
    el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: 7, text: 'No images uploaded.' })))));
  clearTimeout(page.timer);
  page.timer = pending(images) ? setTimeout(() => refresh(page), 3000) : null;
}

// "Remove" for image `i` (asks first); `then` reads the list again.
function removeButton(i, then) {
  const ref = `${i.name}@${i.version}`;
  return el('button', { type: 'button', class: 'danger', 'aria-label': `Remove ${ref}`, onclick: async () => {
    if (!window.confirm(`Remove ${ref} from the library? Nodes keep the copies they imported; the version cannot be uploaded again.`)) return;
    try {
      await del(`/api/v1/admin/images/${encodeURIComponent(i.name)}/${encodeURIComponent(i.version)}`);
      announce(`Image ${ref} removed from the library.`);
      then();
    } catch (e) {
      announce(e.message, true);
    }
  } }, 'Remove');
}
