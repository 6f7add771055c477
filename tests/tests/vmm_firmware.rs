//! The builtin VMM on this machine's /dev/kvm with Atrium's test firmware: the pattern is
//! visible through the display channel, the dirty bitmap covers exactly the pages drawn,
//! injected keys and pointer events come back, the agent answers, the disks read and write
//! (and the read-only base refuses writes), and the VM stops cleanly on request and when the
//! guest powers off, resets or faults. Every thread of the VMM runs under a seccomp filter.

use std::time::Duration;

use atrium_protocol::agent::{AgentMessage, HostMessage};
use atrium_protocol::vmm_channel::VmmRequest;
use atrium_tests::vmm::VmmGuestBuilder;
use atrium_tests::{Group, skip};
use atrium_vmm::control::{ControlRequest, ControlResponse, VmState};
use atrium_vmm::firmware::{KEY_DOWN_RGB, KEY_UP_RGB, key_block, pattern};

const BOOT: Duration = Duration::from_secs(60);

#[test]
fn firmware_draws_reads_input_and_answers_the_agent() -> anyhow::Result<()> {
    if skip(Group::Kvm, "firmware_draws_reads_input_and_answers_the_agent") {
        return Ok(());
    }
    let mut vm = VmmGuestBuilder::firmware("vmm-fw")?
        .disk("base.img", b"atrium base disk", 8, true)?
        .disk("data.img", b"atrium data disk", 8, false)?
        .start()?;
    let serial = vm.wait_serial("atrium-fw: ready\n", BOOT)?;
    assert!(serial.contains("atrium-fw: pattern drawn 640x480"), "{serial}");
    assert!(
        serial.contains("blk0 capacity=8 ro=1 read=0 sector0=\"atrium base disk\" write=1"),
        "{serial}"
    );
    assert!(
        serial.contains("blk1 capacity=8 ro=0 read=0 sector0=\"atrium data disk\" write=0"),
        "{serial}"
    );

    // The writable disk holds what the guest wrote; the base image is unchanged.
    let data = std::fs::read(vm.dir.path().join("data.img"))?;
    assert_eq!(&data[512..532], b"written by atrium-fw");
    let base = std::fs::read(vm.dir.path().join("base.img"))?;
    assert!(base[512..].iter().all(|&b| b == 0), "the read-only base was written");

    // The display channel: geometry, the pattern, and a dirty log of exactly the top half.
    let mut d = vm.display()?;
    assert_eq!((d.width, d.height, d.stride, d.page_size), (640, 480, 2560, 4096));
    for (x, y) in [(0, 0), (639, 0), (17, 100), (320, 239), (639, 239)] {
        assert_eq!(d.pixel(x, y)?, pattern(x, y, 640, 480), "pixel {x},{y}");
    }
    assert_eq!(d.pixel(5, 300)?, 0, "the bottom half is untouched");
    let top_half = u64::from(d.stride) * 240;
    assert_eq!(d.dirty_pages()?, d.pages_of(&[(0, top_half)]));
    assert_eq!(d.dirty_pages()?, Vec::<u32>::new(), "reading the log clears it");

    // A key press comes back on serial and as a block on screen, and only its pages are dirty.
    d.send(&VmmRequest::Key { code: 30, down: true })?;
    vm.wait_serial("input atrium-keyboard type=1 code=30 value=1\n", BOOT)?;
    let (x0, y0) = key_block(30, 640, 480).expect("fits");
    let rows: Vec<(u64, u64)> =
        (y0..y0 + 16).map(|y| (u64::from(y) * 2560 + u64::from(x0) * 4, 64)).collect();
    assert_eq!(d.dirty_pages()?, d.pages_of(&rows));
    assert_eq!(d.pixel(x0 + 3, y0 + 5)?, KEY_DOWN_RGB);
    d.send(&VmmRequest::Key { code: 30, down: false })?;
    vm.wait_serial("input atrium-keyboard type=1 code=30 value=0\n", BOOT)?;
    assert_eq!(d.pixel(x0 + 15, y0 + 15)?, KEY_UP_RGB);

    // The tablet: absolute position and a button.
    d.send(&VmmRequest::Pointer { x: 100, y: 200, buttons: 1, wheel: 0 })?;
    let serial = vm.wait_serial("input atrium-tablet type=1 code=272 value=1\n", BOOT)?;
    assert!(serial.contains("input atrium-tablet type=3 code=0 value=100\n"), "{serial}");
    assert!(serial.contains("input atrium-tablet type=3 code=1 value=200\n"), "{serial}");

    // Bad input is refused with a reason, and the VM goes on.
    d.send(&VmmRequest::Pointer { x: 640, y: 0, buttons: 0, wheel: 0 })?;
    assert!(d.next_refusal()?.contains("outside"), "pointer outside the screen");
    d.send(&VmmRequest::Key { code: 0x2ff, down: true })?;
    assert!(d.next_refusal()?.contains("out of range"));

    // The agent channel: hello and ready, then ping and pong.
    let mut agent = vm.agent()?;
    assert!(matches!(agent.recv()?, AgentMessage::Hello { version: 1, .. }));
    assert_eq!(agent.recv()?, AgentMessage::Ready);
    agent.send(&HostMessage::Ping { id: 4242 })?;
    assert_eq!(agent.recv()?, AgentMessage::Pong { id: 4242 });

    // Every thread of the VMM runs under its seccomp filter (the filters' contents are unit
    // tests in atrium-vmm: what a thread may not call kills the process).
    let threads = vm.thread_seccomp()?;
    for name in ["vcpu0", "devices", "control"] {
        assert!(threads.iter().any(|(n, _)| n == name), "no {name} thread: {threads:?}");
    }
    assert!(threads.iter().all(|&(_, mode)| mode == 2), "unfiltered threads: {threads:?}");

    // Control: status names the KVM kind; metrics count what happened.
    match vm.control(&ControlRequest::Status)? {
        ControlResponse::Status { state, kvm, .. } => {
            assert_eq!(state, VmState::Running);
            assert_eq!(kvm, atrium_vmm::kvm_kind::detect());
        }
        other => anyhow::bail!("status answered {other:?}"),
    }
    let ControlResponse::Metrics { metrics } = vm.control(&ControlRequest::Metrics)? else {
        anyhow::bail!("metrics");
    };
    assert_eq!(metrics["disk0"]["io_errors"], 1, "{metrics}");
    assert_eq!(metrics["disk1"]["bytes_written"], 512, "{metrics}");
    assert_eq!(metrics["keyboard"]["driver_errors"], 0, "{metrics}");
    assert!(metrics["framebuffer"]["dirty_requests"].as_u64() >= Some(3), "{metrics}");

    let (status, log) = vm.stop()?;
    assert!(status.success(), "{status}\n{log}");
    assert!(
        log.contains(atrium_vmm::kvm_kind::name(atrium_vmm::kvm_kind::detect())),
        "the log names the KVM kind:\n{log}"
    );
    Ok(())
}

#[test]
fn a_vm_started_paused_runs_on_resume_and_every_display_client_sees_every_change()
-> anyhow::Result<()> {
    if skip(
        Group::Kvm,
        "a_vm_started_paused_runs_on_resume_and_every_display_client_sees_every_change",
    ) {
        return Ok(());
    }
    let mut b = VmmGuestBuilder::firmware("vmm-paused")?;
    b.config.start_paused = true;
    let mut vm = b.start()?;
    match vm.control(&ControlRequest::Status)? {
        ControlResponse::Status { state, .. } => assert_eq!(state, VmState::Paused),
        other => anyhow::bail!("status answered {other:?}"),
    }
    // Nothing ran yet, so nothing is dirty and nothing was printed.
    let mut first = vm.display()?;
    let mut second = vm.display()?;
    assert_eq!(first.dirty_pages()?, Vec::<u32>::new());
    assert_eq!(vm.serial(), "");
    assert_eq!(vm.control(&ControlRequest::Resume)?, ControlResponse::Ok);
    vm.wait_serial("atrium-fw: ready\n", BOOT)?;
    let top_half = first.pages_of(&[(0, u64::from(first.stride) * 240)]);
    // Each client is told about every page once, whoever asked KVM first.
    assert_eq!(first.dirty_pages()?, top_half);
    assert_eq!(second.dirty_pages()?, top_half);
    assert_eq!(second.dirty_pages()?, Vec::<u32>::new());
    first.send(&VmmRequest::Key { code: 2, down: true })?;
    vm.wait_serial("code=2 value=1\n", BOOT)?;
    let (x0, y0) = key_block(2, 640, 480).expect("fits");
    let rows: Vec<(u64, u64)> =
        (y0..y0 + 16).map(|y| (u64::from(y) * 2560 + u64::from(x0) * 4, 64)).collect();
    assert_eq!(second.dirty_pages()?, second.pages_of(&rows));
    assert_eq!(first.dirty_pages()?, first.pages_of(&rows));
    // The power button is an interrupt the firmware ignores; pressing it must not hurt.
    assert_eq!(vm.control(&ControlRequest::PowerButton)?, ControlResponse::Ok);
    let (status, _) = vm.stop()?;
    assert!(status.success());
    Ok(())
}

#[test]
fn a_paused_vm_takes_no_input_until_resumed() -> anyhow::Result<()> {
    if skip(Group::Kvm, "a_paused_vm_takes_no_input_until_resumed") {
        return Ok(());
    }
    // Two vCPUs: the second waits for a start-up IPI the firmware never sends, and must not
    // keep the VM from pausing or stopping.
    let mut b = VmmGuestBuilder::firmware("vmm-pause")?;
    b.config.vcpus = 2;
    let mut vm = b.start()?;
    vm.wait_serial("atrium-fw: ready\n", BOOT)?;
    assert_eq!(vm.control(&ControlRequest::Pause)?, ControlResponse::Ok);
    let mut d = vm.display()?;
    d.send(&VmmRequest::Key { code: 44, down: true })?;
    // The event waits in the device; the paused guest cannot have printed it.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!vm.serial().contains("code=44"), "a paused guest ran");
    assert_eq!(vm.control(&ControlRequest::Resume)?, ControlResponse::Ok);
    vm.wait_serial("input atrium-keyboard type=1 code=44 value=1\n", BOOT)?;
    let (status, _) = vm.stop()?;
    assert!(status.success());
    Ok(())
}

/// A tiny guest program that ends the VM its own way; the VMM process must exit cleanly with
/// the right reason on stdout.
fn guest_ends_vm(name: &str, code: &[u8], reason: &str, exit_code: i32) -> anyhow::Result<()> {
    let mut b = VmmGuestBuilder::firmware(name)?;
    let fw = b.dir.path().join("tiny.bin");
    std::fs::write(&fw, code)?;
    b.config.boot = atrium_vmm::config::BootSource::Firmware { path: fw };
    b.config.framebuffer = None;
    b.config.display_socket = None;
    b.config.agent_socket = None;
    let out = b.run_to_exit(BOOT)?;
    assert_eq!(out.status.code(), Some(exit_code), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(reason), "{out:?}");
    Ok(())
}

#[test]
fn the_guest_can_power_off_reset_and_triple_fault() -> anyhow::Result<()> {
    if skip(Group::Kvm, "the_guest_can_power_off_reset_and_triple_fault") {
        return Ok(());
    }
    // mov al, 0x20; mov dx, 0x600; out dx, al  (ACPI sleep control: SLP_EN)
    guest_ends_vm("vmm-off", &[0xb0, 0x20, 0x66, 0xba, 0x00, 0x06, 0xee], "power_off", 0)?;
    // mov al, 0xfe; out 0x64, al  (i8042 reset)
    guest_ends_vm("vmm-reset", &[0xb0, 0xfe, 0xe6, 0x64], "reboot", 0)?;
    // ud2 with no usable IDT: #UD, #GP, double fault, triple fault.
    guest_ends_vm("vmm-fault", &[0x0f, 0x0b], "triple_fault", 3)?;
    Ok(())
}
