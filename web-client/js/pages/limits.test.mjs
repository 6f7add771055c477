// The viewer's time-limit warnings, as pure arithmetic. Run by `node --test`
// (tests/tests/web_client_units.rs).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { limitState, minutesSeconds } from './limits.js';

const limits = { idle_timeout_secs: 900, idle_warning_secs: 60, ends_in_secs: 3600, end_warning_secs: 600 };

test('no warning while the user works, and the next look is when one is due', () => {
  const st = limitState(limits, { now: 100_000, since: 0, lastInput: 90_000 });
  assert.equal(st.idleWarning, null);
  assert.equal(st.endWarning, null);
  // The idle warning is due at 90 s + 900 s - 60 s = 930 s; the end warning at 3000 s.
  assert.equal(st.nextMs, 830_000);
});

test('the idle warning counts down from a minute before, and input takes it away', () => {
  let st = limitState(limits, { now: 935_000, since: 0, lastInput: 90_000 });
  assert.equal(st.idleWarning, 55_000);
  assert.equal(st.nextMs, 1000);
  st = limitState(limits, { now: 1_000_000, since: 0, lastInput: 90_000 });
  assert.equal(st.idleWarning, 0, 'past the idle time: the broker is about to disconnect');
  st = limitState(limits, { now: 935_000, since: 0, lastInput: 934_000 });
  assert.equal(st.idleWarning, null);
});

test('the end warning shows ten minutes before the limit, counted from when the limits came', () => {
  let st = limitState(limits, { now: 3_000_500, since: 500, lastInput: 3_000_000 });
  assert.equal(st.endWarning, 600_000);
  st = limitState(limits, { now: 2_000_000, since: 500, lastInput: 2_000_000 });
  assert.equal(st.endWarning, null);
  // A session reconnected near its end warns at once.
  st = limitState({ ...limits, ends_in_secs: 120 }, { now: 10, since: 10, lastInput: 10 });
  assert.equal(st.endWarning, 120_000);
});

test('a short idle time still looks again at least every quarter second, never in the past', () => {
  const short = { ...limits, idle_timeout_secs: 60, idle_warning_secs: 30 };
  const st = limitState(short, { now: 29_900, since: 0, lastInput: 0 });
  assert.equal(st.idleWarning, null);
  assert.equal(st.nextMs, 250);
});

test('countdowns read as minutes and seconds, rounded up', () => {
  assert.equal(minutesSeconds(60_000), '1:00');
  assert.equal(minutesSeconds(59_001), '1:00');
  assert.equal(minutesSeconds(9_000), '0:09');
  assert.equal(minutesSeconds(-5), '0:00');
});
