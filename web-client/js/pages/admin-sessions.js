// Admin: open sessions; end one, or join it view-only where policy allows shadowing.

import { get, post } from '../api.js';
import { el, render, announce, fmtTime } from '../ui.js';

export async function showSessions(app) {
  const sessions = await get('/api/v1/admin/sessions');
  const rows = sessions.map((s) => el('tr', {},
    el('th', { scope: 'row', text: s.username }),
    el('td', { text: s.pool_name }),
    el('td', { text: s.node_id || '' }),
    el('td', { text: fmtTime(s.started_at) }),
    el('td', { text: s.client_addr }),
    el('td', {}, el('div', { class: 'actions' },
      el('button', { type: 'button', class: 'secondary', 'aria-label': `Watch ${s.username}'s session view-only`,
        onclick: () => app.go(`#/desktop/shadow:${encodeURIComponent(s.id)}`) }, 'View'),
      el('button', { type: 'button', class: 'danger', 'aria-label': `End ${s.username}'s session`, onclick: async () => {
        if (!window.confirm(`End ${s.username}'s session? A floating desktop is destroyed.`)) return;
        try {
          await post(`/api/v1/admin/sessions/${encodeURIComponent(s.id)}/end`);
          announce(`Session of ${s.username} ended.`);
          await showSessions(app);
        } catch (e) {
          announce(e.message, true);
        }
      } }, 'End')))));
  render(el('h1', { text: 'Sessions' }),
    el('div', { class: 'table-wrap' }, el('table', { 'aria-label': 'Open sessions' },
      el('thead', {}, el('tr', {}, ['User', 'Pool', 'Node', 'Since', 'Client address', ''].map((c) => el('th', { scope: 'col', text: c })))),
      el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: 6, text: 'No open sessions.' }))))));
}
