// The Images page's words and the upload's query, as pure functions. Run by `node --test`
// (tests/tests/web_client_units.rs).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { bootMode, nodeState, pending, uploadQuery } from './admin-images.js';

test('the upload names only the settings that are on', () => {
  assert.equal(uploadQuery({ firmware: 'uefi', minMemory: 256 }), 'firmware=uefi&min_memory_mib=256');
  const all = new URLSearchParams(uploadQuery({ firmware: 'uefi', minMemory: 4096, secureBoot: true, tpm: true, agent: true }));
  assert.deepEqual(Object.fromEntries(all), { firmware: 'uefi', min_memory_mib: '4096', secure_boot: 'true', tpm: 'true', agent: 'true' });
});

test('how an image boots, in words', () => {
  assert.equal(bootMode({ firmware: 'bios', agent: false }), 'BIOS, no agent');
  assert.equal(bootMode({ firmware: 'uefi', secure_boot: true, tpm: true, agent: true }), "UEFI, Secure Boot, TPM, Atrium's agent");
});

test('each node says where it is, and a failure why', () => {
  assert.equal(nodeState({ node_id: 'n1', state: 'ready' }), 'n1: ready');
  assert.equal(nodeState({ node_id: 'n1', state: 'failed', error: 'import refused: damaged' }), 'n1: failed: import refused: damaged');
  assert.equal(nodeState({ node_id: 'n1', state: 'failed' }), 'n1: failed: no reason given');
  assert.equal(nodeState({ node_id: 'n1', state: 'fetching' }), 'n1: fetching and checking');
  assert.equal(nodeState({ node_id: 'n1', state: 'waiting' }), 'n1: waiting for its next heartbeat');
  assert.equal(nodeState({ node_id: 'n1', node_up: false, state: 'waiting' }), 'n1: out of reach (node lost)');
  assert.equal(nodeState({ node_id: 'n1', node_up: false, state: 'ready' }), 'n1: ready');
});

test('the list is read again only while a node that is up is on its way', () => {
  const img = (...nodes) => ({ nodes });
  assert.equal(pending([img({ node_up: true, state: 'ready' }), img({ node_up: true, state: 'failed' })]), false);
  assert.equal(pending([img({ node_up: true, state: 'ready' }, { node_up: true, state: 'fetching' })]), true);
  assert.equal(pending([img({ node_up: true, state: 'waiting' })]), true);
  assert.equal(pending([img({ node_up: false, state: 'waiting' })]), false);
  assert.equal(pending([]), false);
});
