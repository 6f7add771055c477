// Admin: nodes, their capacity and health; drain and undrain.

import { get, post } from '../api.js';
import { el, render, announce, fmtTime } from '../ui.js';

export async function showNodes(app) {
  const nodes = await get('/api/v1/admin/nodes');
  const rows = nodes.map((n) => {
    const c = n.capacity;
    const free = c.memory_mib_total - c.memory_mib_allocated;
    return el('tr', {},
      el('th', { scope: 'row', text: n.id }),
      el('td', {}, el('span', { class: `badge ${n.state === 'up' ? 'ready' : 'full'}`, text: n.state }), n.draining ? el('span', { class: 'badge starting', text: 'draining' }) : null,
        n.refused_until > Date.now() ? el('span', { class: 'badge full', title: `${n.refusals} VM(s) refused in a row`, text: `refusing VMs: left alone until ${fmtTime(n.refused_until)}` }) : null),
      el('td', { text: `${c.vms} VMs; ${c.vcpus_allocated}/${c.vcpus_total} vCPU; ${free} MiB free of ${c.memory_mib_total}` }),
      el('td', { text: `${c.kvm}, ${c.default_runtime}` }),
      el('td', { text: c.images.map((i) => `${i.name}@${i.version}`).join(', ') }),
      el('td', { text: fmtTime(n.last_heartbeat_at) }),
      el('td', {}, el('button', {
        type: 'button', class: 'secondary',
        'aria-label': `${n.draining ? 'Undrain' : 'Drain'} node ${n.id}`,
        onclick: async () => {
          try {
            await post(`/api/v1/admin/nodes/${encodeURIComponent(n.id)}/${n.draining ? 'undrain' : 'drain'}`);
            announce(`Node ${n.id} ${n.draining ? 'undrained' : 'draining'}.`);
            await showNodes(app);
          } catch (e) {
            announce(e.message, true);
          }
        },
      }, n.draining ? 'Undrain' : 'Drain')));
  });
  render(el('h1', { text: 'Nodes' }),
    el('div', { class: 'table-wrap' }, el('table', { 'aria-label': 'Nodes' },
      el('thead', {}, el('tr', {}, ['Node', 'Health', 'Capacity', 'KVM, runtime', 'Images', 'Last heartbeat', ''].map((c) => el('th', { scope: 'col', text: c })))),
      el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: 7, text: 'No node has registered.' }))))));
}
