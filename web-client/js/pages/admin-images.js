// Admin: the image library. An administrator uploads an operator's own disk image (qcow2, raw,
// VMDK or VHDX) with how it boots; every node fetches it, checks its SHA-256 and imports it. The
// list says, per node, where each image is (a failure says why); pools use an image once a node
// has it ready. The upload goes with XMLHttpRequest for its progress; Chromium streams the file
// from disk.

import { get, del } from '../api.js';
import { el, render, announce, fmtTime } from '../ui.js';

const NAME = '[A-Za-z0-9_\\-][A-Za-z0-9_.\\-]{0,63}';

function csrf() {
  for (const part of document.cookie.split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === '__Host-atrium_csrf' || k === 'atrium_csrf') return decodeURIComponent(v.join('='));
  }
  return null;
}

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

// The page; what it returns stops its refreshes and an upload still going when the user leaves.
export async function showImages() {
  const page = { xhr: null, timer: null, left: false };
  await draw(page);
  return () => {
    page.left = true;
    clearTimeout(page.timer);
    if (page.xhr) page.xhr.abort();
  };
}

async function draw(page) {
  const images = await get('/api/v1/admin/images');
  if (page.left) return;
  const again = () => { if (!page.left) draw(page).catch((e) => announce(e.message, true)); };
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
    const token = csrf();
    if (token) xhr.setRequestHeader('X-CSRF-Token', token);
    progress.hidden = false;
    progress.max = String(Math.max(1, f.size));
    progress.value = '0';
    submit.disabled = true;
    cancel.hidden = false;
    xhr.upload.onprogress = (e) => { progress.value = String(e.loaded); };
    const done = () => { submit.disabled = false; cancel.hidden = true; progress.hidden = true; page.xhr = null; };
    xhr.onload = () => {
      const status = xhr.status;
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
      done();
      if (status === 201) {
        announce(`Image ${body.name}@${body.version} uploaded; the nodes fetch it now.`);
        again();
      } else {
        const why = (body && body.error) || `${status}`;
        error.textContent = body && body.field ? `${body.field}: ${why}` : why;
      }
    };
    xhr.onerror = () => { done(); error.textContent = 'The upload broke off: Atrium cannot be reached.'; };
    xhr.onabort = () => { done(); if (!page.left) error.textContent = 'Upload cancelled: nothing was kept.'; };
    xhr.send(f);
  });

  const rows = images.map((i) => el('tr', {},
    el('th', { scope: 'row', text: `${i.name}@${i.version}` }),
    el('td', { text: bootMode(i) }),
    el('td', { text: `${Math.ceil(i.size_bytes / 1048576)} MiB` }),
    el('td', {}, el('code', { title: i.sha256, text: `${i.sha256.slice(0, 16)}…` })),
    el('td', { text: `${i.uploaded_by}, ${fmtTime(i.uploaded_at)}` }),
    el('td', {}, i.nodes.length
      ? el('ul', { class: 'plain' }, i.nodes.map((n) => el('li', { class: `node-${n.state}`, text: nodeState(n) })))
      : 'no nodes yet'),
    el('td', {}, removeButton(i, again))));
  render(el('h1', { text: 'Images' }),
    el('p', { class: 'hint', text: 'Your own disk images, booted by UEFI or BIOS. Each node fetches an uploaded image, checks its SHA-256 and imports it; a pool can use it once a node has it ready. Stay on this page until an upload ends.' }),
    form,
    el('div', { class: 'table-wrap' }, el('table', { 'aria-label': 'Images' },
      el('thead', {}, el('tr', {}, ['Image', 'Boots with', 'Size', 'SHA-256', 'Uploaded', 'Nodes', ''].map((c) => el('th', { scope: 'col', text: c })))),
      el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: 7, text: 'No images uploaded.' }))))));
  // While a node is still on its way, the list is read again every few seconds.
  const pending = images.some((i) => i.nodes.some((n) => n.state === 'fetching' || n.state === 'waiting'));
  clearTimeout(page.timer);
  if (pending) {
    // Not while an upload goes: the page would lose its form. The upload's end draws it again.
    page.timer = setTimeout(() => { if (!page.xhr) again(); }, 3000);
  }
}

// "Remove" for image `i` (asks first); `then` redraws the page.
function removeButton(i, then) {
  const ref = `${i.name}@${i.version}`;
  return el('button', { type: 'button', class: 'danger', 'aria-label': `Remove ${ref}`, onclick: async () => {
    if (!window.confirm(`Remove ${ref} from the library? Nodes keep the copies they imported.`)) return;
    try {
      await del(`/api/v1/admin/images/${encodeURIComponent(i.name)}/${encodeURIComponent(i.version)}`);
      announce(`Image ${ref} removed from the library.`);
      then();
    } catch (e) {
      announce(e.message, true);
    }
  } }, 'Remove');
}
