// "My desktops": the pools the user may use, their state, and the user's desktops.

import { get } from '../api.js';
import { el, render, fmtTime, announce } from '../ui.js';
import { LAYOUTS, currentLayout, setLayout } from '../layout.js';

const STATE_TEXT = {
  ready: 'Ready',
  starting: 'Starting',
  in_use_elsewhere: 'In use elsewhere',
  available: 'Available',
  full: 'Full',
};

export async function showDesktops(app) {
  const [pools, desktops] = await Promise.all([get('/api/v1/pools'), get('/api/v1/desktops')]);
  const cards = pools.map((p) => {
    const state = STATE_TEXT[p.state] || p.state;
    const headingId = `pool-${p.name}`;
    return el('article', { class: 'card pool', 'aria-labelledby': headingId },
      el('h2', { id: headingId, text: p.name }),
      el('p', { text: p.description || `${p.kind === 'dedicated' ? 'Your own' : 'A fresh'} desktop, ${p.display}` }),
      el('div', { class: 'actions' },
        el('span', { class: `badge ${p.state}`, text: state }),
        el('button', {
          type: 'button',
          'aria-label': `Connect to ${p.name}`,
          disabled: p.state === 'full',
          onclick: () => app.go(`#/desktop/${encodeURIComponent(p.name)}`),
        }, p.desktop_id ? 'Reconnect' : 'Connect')));
  });
  const mine = desktops.map((d) => el('tr', {},
    el('td', { text: d.pool }),
    el('td', { text: d.state }),
    el('td', { text: d.in_session ? 'open' : 'disconnected' }),
    el('td', { text: fmtTime(d.created_at) }),
    el('td', {}, el('button', { type: 'button', class: 'secondary', 'aria-label': `Reconnect to your ${d.pool} desktop`,
      onclick: () => app.go(`#/desktop/${encodeURIComponent(d.pool)}`) }, 'Reconnect'))));
  const layout = el('select', { id: 'keyboard-layout', 'aria-describedby': 'keyboard-layout-hint' },
    LAYOUTS.map(([id, name]) => el('option', { value: id, text: name })));
  layout.value = currentLayout();
  layout.addEventListener('change', () => {
    setLayout(layout.value);
    announce(`Keyboard layout set to ${layout.selectedOptions[0].textContent}. It applies to desktops you open from now on.`);
  });
  render(
    el('h1', { text: 'My desktops' }),
    pools.length
      ? el('div', { class: 'grid', role: 'list', 'aria-label': 'Desktop pools' }, cards.map((c) => { c.setAttribute('role', 'listitem'); return c; }))
      : el('p', { text: 'No desktop pool is available to you. Ask your administrator for access.' }),
    desktops.length ? el('section', { 'aria-labelledby': 'mine-title' },
      el('h2', { id: 'mine-title', text: 'Your desktops' }),
      el('div', { class: 'table-wrap' }, el('table', {},
        el('thead', {}, el('tr', {}, ['Pool', 'State', 'Session', 'Since', ''].map((c) => el('th', { scope: 'col', text: c })))),
        el('tbody', {}, mine)))) : null,
    el('section', { class: 'card settings', 'aria-labelledby': 'settings-title' },
      el('h2', { id: 'settings-title', text: 'Settings' }),
      el('div', { class: 'field' }, el('label', { for: 'keyboard-layout' }, 'Keyboard layout'),
        el('span', { class: 'hint', id: 'keyboard-layout-hint', text: 'The layout of your keyboard; new desktop sessions use it.' }),
        layout)));
}
