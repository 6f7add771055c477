// Admin: nodes, their capacity and health; drain, undrain and revoke; enrolment tokens for new
// nodes (shown once, when made).

import { get, post, del } from '../api.js';
import { el, render, announce, fmtTime } from '../ui.js';
import { imageMode } from './admin-pools.js';

async function act(app, what, done) {
  try {
    await what();
    announce(done);
    await showNodes(app);
  } catch (e) {
    announce(e.message, true);
  }
}

function nodeRow(app, n) {
  const c = n.capacity;
  const free = c.memory_mib_total - c.memory_mib_allocated;
  const id = encodeURIComponent(n.id);
  return el('tr', {},
    el('th', { scope: 'row', text: n.id }),
    el('td', {}, el('span', { class: `badge ${n.state === 'up' ? 'ready' : 'full'}`, text: n.state }), n.draining ? el('span', { class: 'badge starting', text: 'draining' }) : null,
      n.refused_until > Date.now() ? el('span', { class: 'badge full', title: `${n.refusals} VM(s) refused in a row`, text: `refusing VMs: left alone until ${fmtTime(n.refused_until)}` }) : null),
    el('td', { text: `${c.vms} VMs; ${c.vcpus_allocated}/${c.vcpus_total} vCPU; ${free} MiB free of ${c.memory_mib_total}; ${c.memory_mib_used ?? 0} MiB in use (PSS, templates)` }),
    el('td', { text: `${c.kvm}, ${c.default_runtime}` }),
    el('td', { text: c.images.map((i) => `${i.name}@${i.version}${imageMode(i) ? ` (${imageMode(i)})` : ''}`).join(', ') }),
    el('td', { text: fmtTime(n.last_heartbeat_at) }),
    el('td', {},
      el('button', {
        type: 'button', class: 'secondary',
        'aria-label': `${n.draining ? 'Undrain' : 'Drain'} node ${n.id}`,
        onclick: () => act(app, () => post(`/api/v1/admin/nodes/${id}/${n.draining ? 'undrain' : 'drain'}`),
          `Node ${n.id} ${n.draining ? 'undrained' : 'draining'}.`),
      }, n.draining ? 'Undrain' : 'Drain'),
      el('button', {
        type: 'button', class: 'danger',
        'aria-label': `Revoke node ${n.id}`,
        onclick: () => {
          if (!window.confirm(`Revoke node ${n.id}? Its key stops working at once, its desktops fail over, and it can only come back with a new enrolment token.`)) return;
          act(app, () => post(`/api/v1/admin/nodes/${id}/revoke`), `Node ${n.id} revoked.`);
        },
      }, 'Revoke')));
}

function enrolForm(app) {
  const nodeId = el('input', { id: 'enrol-node', name: 'node_id', type: 'text', required: true, 'aria-describedby': 'enrol-node-hint' });
  const hours = el('input', { id: 'enrol-hours', name: 'hours', type: 'number', min: 1, max: 168, value: 1 });
  const result = el('div', { 'aria-live': 'polite' });
  const form = el('form', { class: 'stack', 'aria-label': 'Add a node' },
    el('div', { class: 'field' }, el('label', { for: 'enrol-node' }, 'Node id'),
      el('span', { class: 'hint', id: 'enrol-node-hint', text: 'The node.id in the new node\'s configuration' }), nodeId),
    el('div', { class: 'field' }, el('label', { for: 'enrol-hours' }, 'Valid for (hours)'), hours),
    el('div', { class: 'actions' }, el('button', { type: 'submit', text: 'Create enrolment token' })),
    result);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const made = await post('/api/v1/admin/enrolments', {
        node_id: nodeId.value.trim(),
        valid_for_secs: Math.round(Number(hours.value) * 3600),
      });
      const code = el('code', { id: 'enrol-token', text: made.token });
      result.replaceChildren(
        el('p', { text: `Enrolment token for ${made.node_id}, valid until ${fmtTime(made.expires_at)}. It is shown only now: put it in the node's configuration as broker.enrolment_token (or a file named by broker.enrolment_token_file).` }),
        el('pre', {}, code),
        el('button', { type: 'button', class: 'secondary', onclick: async () => {
          try {
            await navigator.clipboard.writeText(made.token);
            announce('Token copied.');
          } catch {
            announce('Copy it from the text above.', true);
          }
        } }, 'Copy'));
      announce(`Enrolment token created for ${made.node_id}.`);
    } catch (e) {
      announce(e.message, true);
    }
  });
  return form;
}

function enrolmentRow(app, e) {
  const state = e.used_at ? `used by ${e.used_by} at ${fmtTime(e.used_at)}` : (e.expires_at < Date.now() ? 'expired' : `valid until ${fmtTime(e.expires_at)}`);
  return el('tr', {},
    el('td', { text: e.node_id ?? 'any' }),
    el('td', { text: `${e.created_by}, ${fmtTime(e.created_at)}` }),
    el('td', { text: state }),
    el('td', {}, el('button', {
      type: 'button', class: 'secondary',
      'aria-label': `Withdraw the enrolment token for ${e.node_id ?? 'any node'}`,
      onclick: () => act(app, () => del(`/api/v1/admin/enrolments/${encodeURIComponent(e.id)}`), 'Enrolment token withdrawn.'),
    }, 'Withdraw')));
}

export async function showNodes(app) {
  const [nodes, enrolments] = await Promise.all([get('/api/v1/admin/nodes'), get('/api/v1/admin/enrolments')]);
  const rows = nodes.map((n) => nodeRow(app, n));
  render(el('h1', { text: 'Nodes' }),
    el('div', { class: 'table-wrap' }, el('table', { 'aria-label': 'Nodes' },
      el('thead', {}, el('tr', {}, ['Node', 'Health', 'Capacity', 'KVM, runtime', 'Images', 'Last heartbeat', ''].map((c) => el('th', { scope: 'col', text: c })))),
      el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: 7, text: 'No node has registered.' }))))),
    el('h2', { text: 'Add a node' }),
    enrolForm(app),
    el('h2', { text: 'Enrolment tokens' }),
    el('div', { class: 'table-wrap' }, el('table', { 'aria-label': 'Enrolment tokens' },
      el('thead', {}, el('tr', {}, ['For node', 'Created', 'State', ''].map((c) => el('th', { scope: 'col', text: c })))),
      el('tbody', {}, enrolments.length ? enrolments.map((e) => enrolmentRow(app, e)) : el('tr', {}, el('td', { colspan: 4, text: 'None.' }))))));
}
