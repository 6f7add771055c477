//! A snapshot's virtio device states (`state.json`, as the builtin VMM's restore reads them)
//! put into fresh devices: a state out of bounds is refused and changes nothing, never a panic.
//! See `atrium_vmm::fuzzing::snapshot_state`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| atrium_vmm::fuzzing::snapshot_state(data));
