//! The node's `builtin` runtime adapter over a real `atrium-node vmm` process: launched paused,
//! its writable disk made from the read-only base, screenshots through the display channel,
//! resumed, taken back as a restarted node would, stopped cleanly and cleaned up. The "kernel" is the test firmware's ELF image
//! (loaded by the same ELF path as Debian's `vmlinux`, entered at CPL 0 without boot info, it
//! prints and spins), which keeps the test to a second under PVM; `vmm_linux.rs` boots the
//! real kernel.

use std::time::{Duration, Instant};

use atrium_node::runtime::builtin::BuiltinRuntime;
use atrium_node::runtime::{Adoptable, DiskConfig, LaunchBoot, LaunchConfig, Runtime};
use atrium_protocol::node::{DisplayEndpoint, DisplaySize};
use atrium_tests::{Group, TempDir, bin_path, skip};

#[tokio::test]
async fn the_builtin_runtime_runs_a_vm_from_launch_to_cleanup() -> anyhow::Result<()> {
    if skip(Group::Kvm, "the_builtin_runtime_runs_a_vm_from_launch_to_cleanup") {
        return Ok(());
    }
    let tmp = TempDir::new("vmm-runtime");
    let kernel = tmp.path().join("fw.elf");
    std::fs::write(&kernel, atrium_vmm::firmware::TEST_FIRMWARE_ELF)?;
    let base = tmp.path().join("home.raw");
    let mut content = vec![0u8; 1 << 20];
    content[..11].copy_from_slice(b"atrium home");
    std::fs::write(&base, &content)?;
    let dir = tmp.path().join("vm");
    std::fs::create_dir_all(&dir)?;
    let layer = dir.join("home.raw");
    // The display proxy's group (a number no account has) is given the display socket.
    const DISPLAY_GROUP: u32 = 250_124;
    let runtime = BuiltinRuntime::with_program(atrium_node::kvm::detect(), bin_path("atrium-node"))
        .with_display_group(Some(DISPLAY_GROUP));
    let vm = runtime
        .launch(LaunchConfig {
            id: "vm-00000000000000aa".into(),
            dir: dir.clone(),
            boot: LaunchBoot::Kernel {
                kernel,
                initrd: None,
                cmdline: "console=ttyS0 earlyprintk=serial,ttyS0,115200 nokaslr panic=-1".into(),
            },
            firmware_state: None,
            disk: Some(DiskConfig {
                base: base.clone(),
                base_format: atrium_node::image::DiskFormat::Raw,
                layer: layer.clone(),
                keep: false,
            }),
            home: None,
            vcpus: 1,
            memory_mib: 256,
            display: DisplaySize::new(800, 600),
            sound: false,
            cgroup: None,
            memory: Default::default(),
        })
        .await?;

    // Launched paused: the writable disk is a copy of the base, nothing ran yet.
    assert_eq!(std::fs::read(&layer)?, content);
    let serial = dir.join("serial.log");
    assert_eq!(std::fs::read(&serial)?, b"");
    let DisplayEndpoint::Shm { path } = &vm.endpoints().display else {
        anyhow::bail!("display endpoint {:?}", vm.endpoints().display);
    };
    assert!(std::path::Path::new(path).exists());
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let socket = std::fs::metadata(path)?;
        assert_eq!((socket.gid(), socket.permissions().mode() & 0o777), (DISPLAY_GROUP, 0o660));
        let folder = std::fs::metadata(&dir)?.permissions().mode();
        assert_eq!(folder & 0o011, 0o011, "the group passes through the VM's folder");
    }
    let frame = vm.screenshot().await?;
    assert_eq!((frame.width, frame.height, frame.rgb.len()), (800, 600, 800 * 600 * 3));

    vm.resume().await?;
    let start = Instant::now();
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(&serial)?).into_owned();
        if text.contains("atrium-fw: no boot info") {
            break;
        }
        if let Some(info) = vm.exit_watch().borrow().clone() {
            anyhow::bail!("the VM ended: {info:?}");
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "no guest output:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A restarted node takes the running VMM back: the same process, its display and control
    // socket answering. A record whose process is not that one (a pid reused) is refused.
    let record = vm.adoptable().expect("a builtin VM can be taken back");
    assert_eq!(Some(record.pid), vm.pid());
    let back = runtime.adopt(&dir, &record).await?;
    assert_eq!(back.pid(), vm.pid());
    let frame = back.screenshot().await?;
    assert_eq!((frame.width, frame.height), (800, 600));
    let reused = Adoptable { started: record.started + 1, ..record.clone() };
    assert!(runtime.adopt(&dir, &reused).await.is_err(), "another process taken for the VM");
    drop(back);

    // The power button is pressed (this guest takes no interrupts), then the VM is stopped;
    // the process exits cleanly and its files go away.
    vm.request_shutdown().await?;
    vm.kill().await?;
    let info = vm.exit_watch().borrow().clone().expect("exited");
    assert!(info.clean, "{info:?}");
    vm.cleanup()?;
    assert!(!layer.exists(), "a layer that is not kept is removed");
    assert!(!dir.join("control.sock").exists());
    assert!(base.exists());
    Ok(())
}
