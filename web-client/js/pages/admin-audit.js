// Admin: the audit log, filterable by user, action and time, a page at a time from the server
// (newest first; "Show older" asks for the page after the last event shown), and what the
// filter selects as a CSV download.

import { get } from '../api.js';
import { el, render, fmtTime } from '../ui.js';

export const PAGE = 100;

export async function showAudit(app, filters = {}) {
  const q = new URLSearchParams();
  if (filters.actor) q.set('actor', filters.actor);
  if (filters.action) q.set('action', filters.action);
  if (filters.since) q.set('since', String(new Date(filters.since).getTime()));
  if (filters.until) q.set('until', String(new Date(filters.until).getTime()));
  const exportUrl = `/api/v1/admin/audit/export?${q}`;
  const page = async (before) => {
    const p = new URLSearchParams(q);
    p.set('limit', String(PAGE));
    if (before) p.set('before', before);
    return get(`/api/v1/admin/audit?${p}`);
  };
  const events = await page(null);
  const actor = el('input', { id: 'f-actor', name: 'actor', value: filters.actor || '' });
  const action = el('input', { id: 'f-action', name: 'action', value: filters.action || '', placeholder: 'e.g. login.failed or pool.' });
  const since = el('input', { id: 'f-since', name: 'since', type: 'datetime-local', value: filters.since || '' });
  const until = el('input', { id: 'f-until', name: 'until', type: 'datetime-local', value: filters.until || '' });
  const form = el('form', { class: 'filters', 'aria-label': 'Filter the audit log' },
    el('label', { for: 'f-actor' }, 'User', actor),
    el('label', { for: 'f-action' }, 'Action', action),
    el('label', { for: 'f-since' }, 'From', since),
    el('label', { for: 'f-until' }, 'Until', until),
    el('button', { type: 'submit', text: 'Filter' }),
    el('a', { class: 'button', href: exportUrl, download: 'atrium-audit.csv' }, 'Export CSV'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    showAudit(app, { actor: actor.value.trim(), action: action.value.trim(), since: since.value, until: until.value });
  });
  const row = (e) => el('tr', {},
    el('td', { text: fmtTime(e.at) }),
    el('td', { text: e.actor }),
    el('td', { text: e.action }),
    el('td', { text: e.target }),
    el('td', { text: e.outcome }),
    el('td', { text: e.client_addr }),
    el('td', {}, el('code', { text: e.details === '{}' ? '' : e.details })));
  const body = el('tbody', {}, events.length ? events.map(row) : el('tr', {}, el('td', { colspan: 7, text: 'No matching events.' })));
  const count = el('p', { id: 'audit-count', role: 'status' });
  let shown = events.length;
  let last = events[events.length - 1];
  const more = el('button', { type: 'button', class: 'secondary', id: 'audit-more' }, 'Show older');
  const paint = (full) => {
    count.textContent = `${shown} event${shown === 1 ? '' : 's'}${full ? ' (more older)' : ''}`;
    more.hidden = !full;
  };
  more.addEventListener('click', async () => {
    more.disabled = true;
    try {
      const next = await page(`${last.at}.${last.id}`);
      for (const e of next) body.append(row(e));
      shown += next.length;
      if (next.length) last = next[next.length - 1];
      paint(next.length === PAGE);
    } finally {
      more.disabled = false;
    }
  });
  paint(events.length === PAGE);
  render(el('h1', { text: 'Audit log' }), form, count,
    el('div', { class: 'table-wrap' }, el('table', { 'aria-label': 'Audit events' },
      el('thead', {}, el('tr', {}, ['When', 'Who', 'Action', 'Target', 'Outcome', 'From', 'Details'].map((c) => el('th', { scope: 'col', text: c })))),
      body)),
    el('div', { class: 'actions' }, more));
}
