// The Pools page's image suggestions and how it says an image runs, as pure functions. Run by
// `node --test` (tests/tests/web_client_units.rs).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { imageChoices, imageMode } from './admin-pools.js';

test('the image field suggests each image the nodes hold, by name and by version', () => {
  const nodes = [
    { capacity: { images: [{ name: 'desktop', version: 'v2' }, { name: 'win11', version: '2026-12' }] } },
    { capacity: { images: [{ name: 'desktop', version: 'v1' }] } },
    { capacity: {} },
  ];
  assert.deepEqual(imageChoices(nodes), ['desktop', 'desktop@v1', 'desktop@v2', 'win11', 'win11@2026-12']);
  assert.deepEqual(imageChoices([]), []);
});

test('how an image runs: nothing for a built one, its firmware and agent for an imported one', () => {
  assert.equal(imageMode(undefined), '');
  assert.equal(imageMode({ agent: true }), '');
  assert.equal(imageMode({ agent: true, firmware: 'uefi' }), "imported, UEFI, with Atrium's agent");
  assert.equal(imageMode({ agent: false, firmware: 'bios' }), 'imported, BIOS, no agent: users sign in to its OS, no clipboard or files');
});
