// Admin: the audit log, filterable by user, action and time.

import { get } from '../api.js';
import { el, render, fmtTime } from '../ui.js';

export async function showAudit(app, filters = {}) {
  const q = new URLSearchParams();
  if (filters.actor) q.set('actor', filters.actor);
  if (filters.action) q.set('action', filters.action);
  if (filters.since) q.set('since', String(new Date(filters.since).getTime()));
  if (filters.until) q.set('until', String(new Date(filters.until).getTime()));
  q.set('limit', '500');
  const events = await get(`/api/v1/admin/audit?${q}`);
  const actor = el('input', { id: 'f-actor', name: 'actor', value: filters.actor || '' });
  const action = el('input', { id: 'f-action', name: 'action', value: filters.action || '', placeholder: 'e.g. login.failed or pool.' });
  const since = el('input', { id: 'f-since', name: 'since', type: 'datetime-local', value: filters.since || '' });
  const until = el('input', { id: 'f-until', name: 'until', type: 'datetime-local', value: filters.until || '' });
  const form = el('form', { class: 'filters', 'aria-label': 'Filter the audit log' },
    el('label', { for: 'f-actor' }, 'User', actor),
    el('label', { for: 'f-action' }, 'Action', action),
    el('label', { for: 'f-since' }, 'From', since),
    el('label', { for: 'f-until' }, 'Until', until),
    el('button', { type: 'submit', text: 'Filter' }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    showAudit(app, { actor: actor.value.trim(), action: action.value.trim(), since: since.value, until: until.value });
  });
  const rows = events.map((e) => el('tr', {},
    el('td', { text: fmtTime(e.at) }),
    el('td', { text: e.actor }),
    el('td', { text: e.action }),
    el('td', { text: e.target }),
    el('td', { text: e.outcome }),
    el('td', { text: e.client_addr }),
    el('td', {}, el('code', { text: e.details === '{}' ? '' : e.details }))));
  render(el('h1', { text: 'Audit log' }), form,
    el('p', { role: 'status', text: `${events.length} event${events.length === 1 ? '' : 's'}` }),
    el('div', { class: 'table-wrap' }, el('table', { 'aria-label': 'Audit events' },
      el('thead', {}, el('tr', {}, ['When', 'Who', 'Action', 'Target', 'Outcome', 'From', 'Details'].map((c) => el('th', { scope: 'col', text: c })))),
      el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: 7, text: 'No matching events.' }))))));
}
