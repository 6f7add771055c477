//! The builtin VMM's snapshots on this machine's /dev/kvm with Atrium's test firmware: a running
//! VM (two vCPUs, a screen, input, the agent) is snapshotted and goes on running; two VMs
//! restored from the snapshot at once each carry on where it was (the screen as it was, input
//! and the agent answering, under seccomp), with their memory the snapshot's file mapped
//! privately; and snapshots that do not fit are refused with a reason.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use atrium_protocol::agent::{AgentMessage, HostMessage};
use atrium_protocol::vmm_channel::VmmRequest;
use atrium_tests::vmm::{VmmGuest, VmmGuestBuilder};
use atrium_tests::{Group, skip};
use atrium_vmm::control::{ControlRequest, ControlResponse, VmState};
use atrium_vmm::firmware::{KEY_DOWN_RGB, key_block, pattern};
use atrium_vmm::snapshot::{MEMORY_FILE, STATE_FILE};

const BOOT: Duration = Duration::from_secs(60);

/// Presses and holds `code`; waits until the firmware printed it.
fn press(vm: &mut VmmGuest, code: u16) -> anyhow::Result<()> {
    let mut d = vm.display()?;
    d.send(&VmmRequest::Key { code, down: true })?;
    vm.wait_serial(&format!("input atrium-keyboard type=1 code={code} value=1\n"), BOOT)?;
    Ok(())
}

/// A booted firmware VM with two vCPUs that has drawn, taken key 30 and answered the agent,
/// with `snap` as its snapshot directory.
fn booted(name: &str, snap: &Path) -> anyhow::Result<VmmGuest> {
    let mut b = VmmGuestBuilder::firmware(name)?;
    b.config.vcpus = 2;
    b.config.snapshot_dir = Some(snap.to_path_buf());
    let mut vm = b.start()?;
    vm.wait_serial("atrium-fw: ready\n", BOOT)?;
    press(&mut vm, 30)?;
    let mut agent = vm.agent()?;
    assert!(matches!(agent.recv()?, AgentMessage::Hello { version: 1, .. }));
    assert_eq!(agent.recv()?, AgentMessage::Ready);
    agent.send(&HostMessage::Ping { id: 1 })?;
    assert_eq!(agent.recv()?, AgentMessage::Pong { id: 1 });
    Ok(vm)
}

fn snapshot(vm: &mut VmmGuest) -> anyhow::Result<u64> {
    match vm.control(&ControlRequest::Snapshot)? {
        ControlResponse::Snapshot { memory_bytes, .. } => Ok(memory_bytes),
        other => anyhow::bail!("snapshot answered {other:?}\nlog:\n{}", vm.log()),
    }
}

#[test]
fn a_snapshot_restores_twice_and_each_copy_carries_on() -> anyhow::Result<()> {
    if skip(Group::Kvm, "a_snapshot_restores_twice_and_each_copy_carries_on") {
        return Ok(());
    }
    let snap_dir = atrium_tests::TempDir::new("vmm-snap");
    let snap = snap_dir.path().to_path_buf();
    let mut vm = booted("vmm-snap-src", &snap)?;
    let memory_bytes = snapshot(&mut vm)?;
    // Only what the guest touched is written: the firmware's pages, not its 64 MiB.
    assert!(memory_bytes > 0 && memory_bytes < 16 << 20, "{memory_bytes} bytes of memory");
    let mem_len = std::fs::metadata(snap.join(MEMORY_FILE))?.len();
    assert_eq!(mem_len, 64 << 20);
    // The snapshotted VM goes on running: it takes a key pressed after the snapshot.
    match vm.control(&ControlRequest::Status)? {
        ControlResponse::Status { state, .. } => assert_eq!(state, VmState::Running),
        other => anyhow::bail!("status answered {other:?}"),
    }
    press(&mut vm, 31)?;
    let like = vm.config.clone();
    let (status, log) = vm.stop()?;
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("snapshot written"), "{log}");

    // Two VMs from the one snapshot, at once.
    let mut clones = Vec::new();
    for name in ["vmm-snap-a", "vmm-snap-b"] {
        clones.push(VmmGuestBuilder::restore(name, &snap, &like).start()?);
    }
    for (i, vm) in clones.iter_mut().enumerate() {
        match vm.control(&ControlRequest::Status)? {
            ControlResponse::Status { state, .. } => assert_eq!(state, VmState::Running),
            other => anyhow::bail!("status answered {other:?}\nlog:\n{}", vm.log()),
        }
        // The screen as it was at the snapshot: the pattern and key 30's block, not key 31's.
        let d = vm.display()?;
        for (x, y) in [(0, 0), (639, 0), (17, 100), (639, 239)] {
            assert_eq!(d.pixel(x, y)?, pattern(x, y, 640, 480), "clone {i}: pixel {x},{y}");
        }
        let (x30, y30) = key_block(30, 640, 480).expect("fits");
        assert_eq!(d.pixel(x30 + 3, y30 + 3)?, KEY_DOWN_RGB, "clone {i}: key 30");
        let (x31, y31) = key_block(31, 640, 480).expect("fits");
        assert_eq!(d.pixel(x31 + 3, y31 + 3)?, 0, "clone {i}: key 31 came after the snapshot");
        // The firmware runs on: it never prints its start-up again, it takes a new key (each
        // clone its own), and the agent port answers a new host.
        let code = 40 + u16::try_from(i)?;
        press(vm, code)?;
        let (xk, yk) = key_block(u32::from(code), 640, 480).expect("fits");
        assert_eq!(vm.display()?.pixel(xk + 3, yk + 3)?, KEY_DOWN_RGB, "clone {i}: new key");
        let mut agent = vm.agent()?;
        agent.send(&HostMessage::Ping { id: 77 })?;
        assert_eq!(agent.recv()?, AgentMessage::Pong { id: 77 }, "clone {i}");
        let serial = vm.serial();
        assert!(!serial.contains("atrium-fw: start"), "clone {i} booted again:\n{serial}");
        assert!(serial.contains("agent: host connected"), "clone {i}:\n{serial}");
        // Guest RAM is the snapshot's file, mapped privately; every thread is filtered.
        let pid = vm.pid().expect("running");
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
        let mem_path = snap.join(MEMORY_FILE).display().to_string();
        assert!(
            maps.lines().any(|l| l.ends_with(&mem_path) && l.contains(" rw-p ")),
            "clone {i}: no private mapping of {mem_path}:\n{maps}"
        );
        let threads = vm.thread_seccomp()?;
        assert!(threads.iter().any(|(n, _)| n == "vcpu1"), "{threads:?}");
        assert!(threads.iter().all(|&(_, mode)| mode == 2), "unfiltered: {threads:?}");
    }
    // Each clone's writes are its own: one clone's key is not on the other's screen.
    let (x41, y41) = key_block(41, 640, 480).expect("fits");
    assert_eq!(clones[0].display()?.pixel(x41 + 3, y41 + 3)?, 0, "clone 1's key on clone 0");
    // A restored VM cannot be snapshotted again.
    let answer = clones[0].control(&ControlRequest::Snapshot)?;
    assert!(
        matches!(&answer, ControlResponse::Error { message } if message.contains("snapshot_dir")),
        "{answer:?}"
    );
    for vm in clones {
        let (status, log) = vm.stop()?;
        assert!(status.success(), "{status}\n{log}");
    }
    Ok(())
}

#[test]
fn snapshots_that_do_not_fit_are_refused_with_a_reason() -> anyhow::Result<()> {
    if skip(Group::Kvm, "snapshots_that_do_not_fit_are_refused_with_a_reason") {
        return Ok(());
    }
    // A VM without a snapshot directory says so.
    let mut plain = VmmGuestBuilder::firmware("vmm-snap-none")?.start()?;
    plain.wait_serial("atrium-fw: ready\n", BOOT)?;
    let answer = plain.control(&ControlRequest::Snapshot)?;
    assert!(
        matches!(&answer, ControlResponse::Error { message } if message.contains("snapshot_dir")),
        "{answer:?}"
    );
    plain.stop()?;

    let snap_dir = atrium_tests::TempDir::new("vmm-snap-bad");
    let snap = snap_dir.path().to_path_buf();
    let mut vm = booted("vmm-snap-bad-src", &snap)?;
    snapshot(&mut vm)?;
    let like = vm.config.clone();
    vm.stop()?;

    let refused = |b: VmmGuestBuilder, why: &str| -> anyhow::Result<()> {
        let out = b.run_to_exit(BOOT)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "restored anyway: {out:?}");
        assert!(stderr.contains(why), "expected {why:?} in:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        Ok(())
    };
    // Another shape: fewer vCPUs, more memory.
    let mut b = VmmGuestBuilder::restore("vmm-snap-bad-1", &snap, &like);
    b.config.vcpus = 1;
    refused(b, "configuration asks")?;
    let mut b = VmmGuestBuilder::restore("vmm-snap-bad-2", &snap, &like);
    b.config.memory_mib = 128;
    refused(b, "configuration asks")?;
    // A memory file cut short, and a state file cut short or tampered with.
    let copy = |name: &str| -> anyhow::Result<std::path::PathBuf> {
        let d = snap_dir.path().join(name);
        std::fs::create_dir_all(&d)?;
        for f in std::fs::read_dir(&snap)? {
            let f = f?;
            if f.file_type()?.is_file() {
                std::fs::copy(f.path(), d.join(f.file_name()))?;
            }
        }
        Ok(d)
    };
    let cut = copy("cut-memory")?;
    std::fs::OpenOptions::new().write(true).open(cut.join(MEMORY_FILE))?.set_len(1 << 20)?;
    refused(VmmGuestBuilder::restore("vmm-snap-bad-3", &cut, &like), "the VM has 64 MiB")?;
    let half = copy("cut-state")?;
    let text = std::fs::read(half.join(STATE_FILE))?;
    std::fs::write(half.join(STATE_FILE), &text[..text.len() / 2])?;
    refused(VmmGuestBuilder::restore("vmm-snap-bad-4", &half, &like), STATE_FILE)?;
    // A queue moved outside guest memory is refused as a driver's write would be.
    let moved = copy("moved-queue")?;
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(moved.join(STATE_FILE))?)?;
    let queue = &mut state["virtio"][0]["queues"][0];
    anyhow::ensure!(queue["ready"] == true, "the keyboard's event queue is ready: {queue}");
    queue["desc_table"] = serde_json::json!(1u64 << 40);
    std::fs::write(moved.join(STATE_FILE), serde_json::to_vec(&state)?)?;
    refused(VmmGuestBuilder::restore("vmm-snap-bad-5", &moved, &like), "outside guest memory")?;
    // A snapshot from a host that gives guests another CPUID.
    let other_cpu = copy("other-cpu")?;
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(other_cpu.join(STATE_FILE))?)?;
    let theirs = state["host_cpu"].as_u64().context("host_cpu")?;
    state["host_cpu"] = serde_json::json!(theirs ^ 1);
    std::fs::write(other_cpu.join(STATE_FILE), serde_json::to_vec(&state)?)?;
    refused(VmmGuestBuilder::restore("vmm-snap-bad-6", &other_cpu, &like), "another CPUID")?;
    Ok(())
}
