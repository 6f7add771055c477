// Admin: pools (list with counts, create, edit, delete) and their desktops (state, user, node,
// the image version each runs, started as a clone or booted).

import { get, post, put, del, ApiError } from '../api.js';
import { el, render, announce } from '../ui.js';

const FIELDS = [
  ['name', 'Name', 'text', 'Letters, digits, - _ .'],
  ['description', 'Description', 'text', ''],
  ['image', 'Image', 'text', 'NAME or NAME@VERSION on the nodes'],
  ['vcpus', 'vCPUs', 'number', ''],
  ['memory_mib', 'Memory (MiB)', 'number', ''],
  ['display', 'Display', 'text', 'WIDTHxHEIGHT, e.g. 1920x1080: the largest screen; a desktop takes its viewer\'s window size up to it'],
  ['kind', 'Kind', 'select', 'Floating: fresh at each sign-in. Dedicated: the user keeps it.'],
  ['runtime', 'Runtime', 'select', 'What runs each desktop: QEMU (the default), or Atrium\'s builtin monitor, which needs hardware KVM (VMX or SVM), boots without clones and takes no home disks'],
  ['min_ready', 'Ready spares', 'number', 'Booted desktops kept waiting'],
  ['max_size', 'Maximum size', 'number', ''],
  ['idle_timeout_secs', 'Idle timeout (s)', 'number', 'No keyboard or mouse input for this long disconnects the session (a warning a minute before)'],
  ['max_session_secs', 'Maximum session (s)', 'number', 'A session ends this long after it started (a warning ten minutes before)'],
  ['disconnect_timeout_secs', 'Disconnect timeout (s)', 'number', 'A desktop nobody is connected to is kept this long, then logged off (floating: recycled; dedicated: stopped, its disk kept)'],
  ['clone', 'Start desktops as clones', 'checkbox', 'Floating pools (on by default): each node boots the image once as a template and starts desktops from it, without a boot. Dedicated desktops keep their own disk and always boot'],
];

// The choices of each select, as [value, label]; '' is sent as null (the node's default).
const CHOICES = {
  kind: [['floating', 'Floating'], ['dedicated', 'Dedicated']],
  runtime: [['', 'The node\'s default (QEMU unless its operator chose otherwise)'], ['qemu', 'QEMU'], ['builtin', 'Builtin (hardware KVM only)']],
};

const DEFAULTS = { name: '', description: '', image: 'console', vcpus: 1, memory_mib: 512, display: '1280x800', kind: 'floating',
  runtime: '', min_ready: 1, max_size: 10, idle_timeout_secs: 1800, max_session_secs: 28800, disconnect_timeout_secs: 1800, clone: true };

// `choices`: the images the nodes hold, offered as the image field's suggestions.
function poolForm(initial, onSubmit, submitText, choices = []) {
  const inputs = {};
  const errors = {};
  const rows = FIELDS.map(([key, label, type, hint]) => {
    const id = `pool-${key}`;
    let input;
    if (type === 'select') {
      input = el('select', { id, name: key }, CHOICES[key].map(([value, text]) => el('option', { value, text })));
    } else if (type === 'checkbox') {
      input = el('input', { id, name: key, type });
    } else {
      input = el('input', { id, name: key, type, min: type === 'number' ? 0 : undefined, required: key !== 'description' });
    }
    if (type === 'checkbox') input.checked = Boolean(initial[key]);
    else input.value = initial[key] ?? '';
    inputs[key] = input;
    errors[key] = el('span', { class: 'field-error', id: `${id}-error` });
    input.setAttribute('aria-describedby', `${id}-error${hint ? ` ${id}-hint` : ''}`);
    const suggestions = key === 'image' && choices.length
      ? el('datalist', { id: `${id}-choices` }, choices.map((c) => el('option', { value: c })))
      : null;
    if (suggestions) input.setAttribute('list', `${id}-choices`);
    // The label names the field; the hint and the error describe it (aria-describedby).
    return el('div', { class: 'field' }, el('label', { for: id }, label),
      hint ? el('span', { class: 'hint', id: `${id}-hint`, text: hint }) : null, input, suggestions, errors[key]);
  });
  // Only floating desktops on QEMU are clones: the box follows the kind and the runtime.
  const followKind = () => {
    const clones = inputs.kind.value === 'floating' && inputs.runtime.value !== 'builtin';
    inputs.clone.disabled = !clones;
    if (!clones) inputs.clone.checked = false;
  };
  inputs.kind.addEventListener('change', followKind);
  inputs.runtime.addEventListener('change', followKind);
  followKind();
  const formError = el('p', { class: 'error-text', role: 'alert' });
  const button = el('button', { type: 'submit', text: submitText });
  const form = el('form', { class: 'stack', novalidate: true }, rows, formError, el('div', { class: 'actions' }, button));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    for (const k of Object.keys(errors)) {
      errors[k].textContent = '';
      inputs[k].removeAttribute('aria-invalid');
    }
    formError.textContent = '';
    const body = {};
    for (const [key, , type] of FIELDS) body[key] = formValue(inputs[key], type);
    button.disabled = true;
    try {
      await onSubmit(body);
    } catch (e) {
      if (e instanceof ApiError && e.field && errors[e.field]) {
        errors[e.field].textContent = e.message;
        inputs[e.field].setAttribute('aria-invalid', 'true');
        inputs[e.field].focus();
      } else {
        formError.textContent = e.message;
      }
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

/**
 * How an image runs, as its node reports it: '' for an image Atrium built; for an imported one,
 * its firmware and whether Atrium's agent is in it (without one, users sign in to its OS and
 * have no clipboard or files through Atrium).
 */
export function imageMode(info) {
  if (!info || (info.agent !== false && !info.firmware)) return '';
  const boot = info.firmware ? `imported, ${info.firmware.toUpperCase()}` : 'imported';
  return info.agent === false ? `${boot}, no agent: users sign in to its OS, no clipboard or files` : `${boot}, with Atrium's agent`;
}

/** What the image field suggests: each image the nodes hold, by name and by name@version. */
export function imageChoices(nodes) {
  const all = new Set();
  for (const n of nodes) {
    for (const i of n.capacity?.images ?? []) {
      all.add(i.name);
      all.add(`${i.name}@${i.version}`);
    }
  }
  return [...all].sort();
}

/** The images the nodes hold, by name (the last one listed of each). */
function imagesByName(nodes) {
  const byName = new Map();
  for (const n of nodes) for (const i of n.capacity?.images ?? []) byName.set(i.name, i);
  return byName;
}

/** What a form field holds, as the API takes it. */
function formValue(input, type) {
  if (type === 'number') return Number(input.value);
  if (type === 'checkbox') return input.checked;
  if (type === 'select' && input.value === '') return null;
  return input.value.trim();
}

/** A pool's desktops, one row each: the image version it runs and how it started. */
function desktopRows(desktops, pools) {
  const names = new Map(pools.map((p) => [p.id, p.name]));
  return desktops.map((d) => el('tr', {},
    el('th', { scope: 'row', text: names.get(d.pool_id) ?? d.pool_id }),
    el('td', { text: d.state }),
    el('td', { text: d.username ?? 'spare' }),
    el('td', { text: d.node_id ?? '' }),
    el('td', { text: d.image ?? '' }),
    el('td', { text: d.image ? (d.cloned ? 'clone' : 'boot') : '' })));
}

export async function showPools(app) {
  const [pools, desktops, nodes] = await Promise.all([get('/api/v1/admin/pools'), get('/api/v1/admin/desktops'), get('/api/v1/admin/nodes')]);
  const images = imagesByName(nodes);
  const choices = imageChoices(nodes);
  const rows = pools.map((p) => el('tr', {},
    el('th', { scope: 'row', text: p.name }),
    el('td', {},
      el('span', { text: `${p.image}${p.clone ? ' (clones)' : ''}${p.runtime ? `, ${p.runtime} runtime` : ''}` }),
      imageMode(images.get(p.image.split('@')[0])) ? el('div', { class: 'hint', text: imageMode(images.get(p.image.split('@')[0])) }) : null),
    el('td', { text: p.kind }),
    el('td', { text: `${p.vcpus} vCPU, ${p.memory_mib} MiB, ${p.display}` }),
    el('td', { text: String(p.counts.ready) }),
    el('td', { text: String(p.counts.in_use) }),
    el('td', { text: `${p.counts.total} / ${p.max_size}` }),
    el('td', {}, el('div', { class: 'actions' },
      el('button', { type: 'button', class: 'secondary', 'aria-label': `Edit pool ${p.name}`, onclick: () => editPool(app, p, choices) }, 'Edit'),
      el('button', { type: 'button', class: 'danger', 'aria-label': `Delete pool ${p.name}`, onclick: async () => {
        if (!window.confirm(`Delete pool ${p.name}? Its spare desktops are destroyed.`)) return;
        try {
          await del(`/api/v1/admin/pools/${encodeURIComponent(p.id)}`);
          announce(`Pool ${p.name} deleted.`);
          await showPools(app);
        } catch (e) {
          announce(e.message, true);
        }
      } }, 'Delete')))));
  render(
    el('h1', { text: 'Pools' }),
    el('div', { class: 'table-wrap' }, el('table', { 'aria-label': 'Pools' },
      el('thead', {}, el('tr', {}, ['Name', 'Image', 'Kind', 'Size', 'Ready', 'In use', 'Total / max', ''].map((c) => el('th', { scope: 'col', text: c })))),
      el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: 8, text: 'No pools yet.' }))))),
    el('h2', { text: 'Desktops' }),
    el('div', { class: 'table-wrap' }, el('table', { 'aria-label': 'Desktops' },
      el('thead', {}, el('tr', {}, ['Pool', 'State', 'User', 'Node', 'Image', 'Started as'].map((c) => el('th', { scope: 'col', text: c })))),
      el('tbody', {}, desktops.length ? desktopRows(desktops, pools) : el('tr', {}, el('td', { colspan: 6, text: 'No desktops.' }))))),
    el('section', { class: 'card', 'aria-labelledby': 'new-pool' },
      el('h2', { id: 'new-pool', text: 'New pool' }),
      poolForm(DEFAULTS, async (body) => {
        await post('/api/v1/admin/pools', body);
        announce(`Pool ${body.name} created.`);
        await showPools(app);
      }, 'Create pool', choices)));
}

function editPool(app, p, choices) {
  render(
    el('h1', { text: `Edit pool ${p.name}` }),
    el('section', { class: 'card' },
      poolForm(p, async (body) => {
        await put(`/api/v1/admin/pools/${encodeURIComponent(p.id)}`, body);
        announce(`Pool ${body.name} saved.`);
        await showPools(app);
      }, 'Save', choices),
      el('p', {}, el('button', { type: 'button', class: 'secondary', onclick: () => showPools(app) }, 'Cancel'))));
}
