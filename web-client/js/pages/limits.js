// A session's time limits as the viewer shows them: a warning before the idle time runs out,
// with "I'm still here", and one before the session's maximum length. The broker ends the
// session by its own clock whatever the page does; these only say so in time.
//
//   const w = new LimitWarnings({ onStillHere: () => session.stillHere() });
//   parent.append(w.element);
//   w.start(limits, () => session.lastInputAt);   // limits: the broker's connect answer's
//   w.stop();

import { el } from '../ui.js';

// The end warning, once dismissed, comes back for the last minute.
const LAST_CALL_MS = 60_000;

// What the viewer says at `now` (ms, one clock with `since` and `lastInput`): the idle and end
// warnings' remaining ms (null: no warning), and when to look again. Pure, for tests.
//   limits: { idle_timeout_secs, idle_warning_secs, ends_in_secs, end_warning_secs }
//   since: when the limits arrived; lastInput: the last input sent (or the connect).
export function limitState(limits, { now, since, lastInput }) {
  const idleLeft = lastInput + limits.idle_timeout_secs * 1000 - now;
  const idleWarnMs = limits.idle_warning_secs * 1000;
  const endLeft = since + limits.ends_in_secs * 1000 - now;
  const endWarnMs = limits.end_warning_secs * 1000;
  const idleWarning = idleLeft <= idleWarnMs ? Math.max(0, idleLeft) : null;
  const endWarning = endLeft <= endWarnMs ? Math.max(0, endLeft) : null;
  // While a warning shows, its countdown changes every second; otherwise the next change is
  // when a warning is due.
  const idleNext = idleWarning === null ? idleLeft - idleWarnMs : 1000;
  const endNext = endWarning === null ? endLeft - endWarnMs : 1000;
  return { idleWarning, endWarning, nextMs: Math.max(250, Math.min(idleNext, endNext)) };
}

// `m:ss` of a duration in ms, rounded up (a warning never says 0:00 while time is left).
export function minutesSeconds(ms) {
  const s = Math.ceil(Math.max(0, ms) / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

export class LimitWarnings {
  constructor({ onStillHere }) {
    this.onStillHere = onStillHere;
    this.idleText = el('p', { id: 'idle-warning-text' });
    this.stillHereBtn = el('button', { type: 'button', id: 'still-here', onclick: () => this._stillHere() }, 'I\'m still here');
    this.idleBox = el('div', { class: 'viewer-warning', id: 'idle-warning', role: 'alertdialog', 'aria-labelledby': 'idle-warning-text', hidden: true },
      this.idleText, this.stillHereBtn);
    this.endText = el('p', { id: 'end-warning-text' });
    this.endBox = el('div', { class: 'viewer-warning', id: 'end-warning', role: 'alert', hidden: true },
      this.endText, el('button', { type: 'button', class: 'secondary', onclick: () => this._dismissEnd() }, 'OK'));
    this.element = el('div', { class: 'viewer-warnings' }, this.idleBox, this.endBox);
    this.timer = null;
    this.limits = null;
  }

  // Warns of `limits` from now; `lastInput()` says when input was last sent (performance.now()).
  start(limits, lastInput) {
    this.stop();
    if (!limits) return;
    this.limits = limits;
    this.since = performance.now();
    this.lastInput = lastInput;
    this.endDismissed = false;
    this._tick();
  }

  stop() {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.limits = null;
    this.idleBox.hidden = true;
    this.endBox.hidden = true;
  }

  _tick() {
    this.timer = null;
    if (!this.limits) return;
    const now = performance.now();
    const st = limitState(this.limits, { now, since: this.since, lastInput: Math.max(this.since, this.lastInput()) });
    const idleShown = !this.idleBox.hidden;
    if (st.idleWarning !== null) {
      this.idleText.textContent = st.idleWarning > 0
        ? `No keyboard or mouse input for a while: this session will be disconnected in ${minutesSeconds(st.idleWarning)}.`
        : 'No keyboard or mouse input for a while: disconnecting…';
      this.idleBox.hidden = false;
      if (!idleShown) this.stillHereBtn.focus();
    } else {
      this.idleBox.hidden = true;
    }
    if (st.endWarning !== null && (!this.endDismissed || st.endWarning <= LAST_CALL_MS)) {
      const at = new Date(Date.now() + st.endWarning).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
      this.endText.textContent = st.endWarning > 0
        ? `This session reaches its time limit in ${minutesSeconds(st.endWarning)} (at ${at}): save your work.`
        : 'This session has reached its time limit.';
      this.endBox.hidden = false;
    } else {
      this.endBox.hidden = true;
    }
    this.timer = setTimeout(() => this._tick(), st.nextMs);
  }

  _stillHere() {
    this.onStillHere();
    this.idleBox.hidden = true;
    if (this.timer) clearTimeout(this.timer);
    this._tick();
  }

  _dismissEnd() {
    this.endDismissed = true;
    this.endBox.hidden = true;
  }
}
