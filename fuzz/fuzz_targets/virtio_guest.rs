//! A hostile guest driving the builtin VMM's virtio devices (block, console, keyboard,
//! tablet): register reads and writes of any width and offset, descriptor tables and rings
//! laid out in its memory, notifications at any time. See `atrium_vmm::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| atrium_vmm::fuzzing::virtio_guest(data));
