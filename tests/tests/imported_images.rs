//! An operator's own disk image: imported with `atrium-node image import` and booted by its
//! firmware (OVMF) under QEMU, as a node boots any desktop. Group `qemu`.
//!
//! The disk is one Atrium did not build the usual way: a GPT disk whose EFI system partition
//! holds systemd-boot and the console image's kernel and initramfs (`scripts/lib/uefi-disk.sh`),
//! so the firmware, a boot loader and the kernel's EFI stub all run before the agent says ready.
//! A second disk has no agent (its console shows a login prompt): it is ready when its screen
//! settles.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use atrium_protocol::node::{Capacity, DisplayEndpoint, VmInfo, VmState};
use atrium_tests::node::{
    NodeProcess, bios_disk, import_image, processes_with, uefi_disk, uefi_disk_without_agent,
};
use atrium_tests::rfb::RfbClient;
use atrium_tests::{Group, TempDir, skip, wait_for};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(240);

const UEFI: [&str; 8] =
    ["--name", "uefitest", "--version", "v1", "--firmware", "uefi", "--min-memory", "256"];

fn vnc_path(info: &VmInfo) -> anyhow::Result<PathBuf> {
    match &info.display_endpoint {
        DisplayEndpoint::VncUnix { path } => Ok(PathBuf::from(path)),
        other => anyhow::bail!("expected a VNC unix socket, got {other:?}"),
    }
}

/// A VM of `spec` started and ready, and alice signed in to it by its agent: its id.
async fn ready_for_alice(node: &NodeProcess, spec: &serde_json::Value) -> anyhow::Result<String> {
    let id = node.ready_vm(spec, BOOT).await?;
    wait_for("alice's session", Duration::from_secs(60), || async {
        node.vm(&id).await.ok().filter(|v| v.user.as_deref() == Some("alice"))
    })
    .await?;
    Ok(id)
}

/// The command line of the one QEMU process of VM `id`.
fn qemu_args(id: &str) -> anyhow::Result<Vec<String>> {
    let pids = processes_with(&format!("guest=atrium-{id}"));
    ensure!(pids.len() == 1, "QEMU processes of {id}: {pids:?}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0]))?;
    Ok(cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_uefi_disk_boots_by_its_firmware_with_a_tpm_signs_its_user_in_and_keeps_its_disk()
-> anyhow::Result<()> {
    if skip(
        Group::Qemu,
        "an_imported_uefi_disk_boots_by_its_firmware_with_a_tpm_signs_its_user_in_and_keeps_its_disk",
    ) {
        return Ok(());
    }
    let disk = uefi_disk()?;
    let tmp = TempDir::new("imported");
    let images = tmp.path().join("images");
    let mut args = UEFI.to_vec();
    args.extend(["--agent", "--tpm"]);
    let (ok, said) = import_image(&images, &disk, &args)?;
    ensure!(ok, "the import failed: {said}");
    assert!(said.contains("imported uefitest@v1 (uefi firmware, a TPM"), "{said}");
    let node = NodeProcess::start(&images.join("uefitest"), "").await?;

    // The node lists the image as imported.
    let (_, body) = node.call("GET", "/api/v1/capacity", None).await?;
    let cap: Capacity = serde_json::from_slice(&body)?;
    let listed = cap.images.iter().find(|i| i.name == "uefitest").context("image not listed")?;
    assert_eq!((listed.version.as_str(), listed.kind.as_str()), ("v1", "imported"));

    // A dedicated desktop of it: firmware, boot loader, kernel, then the agent signs alice in.
    let kept = "alice-uefi";
    let spec = json!({
        "image": "uefitest", "vcpus": 1, "memory_mib": 256, "display": "1024x768",
        "persistent_disk": kept,
        "user": { "username": "alice", "display_name": "Alice Example" },
    });
    let id = ready_for_alice(&node, &spec).await?;

    // QEMU was given OVMF and the VM's own copy of its variables, and no kernel.
    let args = qemu_args(&id)?;
    assert!(
        args.iter().any(|a| a.contains("if=pflash") && a.contains("OVMF_CODE_4M.fd")),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a == "-kernel"), "an imported image booted a kernel directly");
    let vars = node.state_dir.join("firmware").join(format!("disk-{kept}")).join("efivars.fd");
    let template = std::fs::metadata("/usr/share/OVMF/OVMF_VARS_4M.fd")?.len();
    assert_eq!(std::fs::metadata(&vars)?.len(), template, "{}", vars.display());
    let log = node.console_log(&id).await?;
    assert!(log.contains("atrium-guest-agent: ready"), "console log:\n{log}");

    // Its TPM: a swtpm of its own, as the VM's user (not root), its state kept with the
    // dedicated desktop's disk, which the firmware wrote to (it measures the boot).
    ensure!(args.iter().any(|a| a == "tpm-crb,tpmdev=tpm0"), "no TPM device: {args:?}");
    let tpm_dir = node.state_dir.join("firmware").join(format!("disk-{kept}")).join("tpm");
    let swtpm = processes_with("type=unixio,path=swtpm.sock");
    ensure!(swtpm.len() == 1, "swtpm processes: {swtpm:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", swtpm[0]))?;
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default().to_owned();
    ensure!(!uid.split_whitespace().skip(1).any(|u| u == "0"), "swtpm runs as root: {uid}");
    ensure!(
        std::fs::read_link(format!("/proc/{}/cwd", swtpm[0]))? == tpm_dir,
        "swtpm is not in {}",
        tpm_dir.display()
    );
    ensure!(tpm_dir.join("tpm2-00.permall").is_file(), "the TPM kept no state");

    // The agent works as in a built image: the clipboard crosses both ways.
    let info = node.vm(&id).await?;
    let mut rfb = RfbClient::connect(&vnc_path(&info)?).await?;
    let paste = format!("uefi-{}\n", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (status, body) = node
        .call("POST", &format!("/api/v1/vms/{id}/clipboard"), Some(&json!({ "text": paste })))
        .await?;
    ensure!(status == 204, "paste: {status} {}", String::from_utf8_lossy(&body));
    rfb.type_text("tr a-z A-Z < clipboard.txt > up.txt && mv up.txt clipboard.txt\n").await?;
    node.wait_clipboard(&id, 0, &paste.to_uppercase(), Duration::from_secs(60)).await?;

    // Stopped, its disk kept. A floating desktop now takes the uid it ran as; the dedicated
    // desktop, started again on its disk, runs as another, and still boots (the firmware finds
    // the same boot loader on the user's own layer) with its TPM (its state given to the new
    // uid).
    let (status, body) = node.call("POST", &format!("/api/v1/vms/{id}/stop"), None).await?;
    ensure!(status == 200, "stop: {status} {}", String::from_utf8_lossy(&body));
    let (status, _) = node.call("DELETE", &format!("/api/v1/vms/{id}"), None).await?;
    assert_eq!(status, 204);
    assert!(!node.state_dir.join("vms").join(&id).exists(), "the VM's folder is left");
    ensure!(processes_with("type=unixio,path=swtpm.sock").is_empty(), "swtpm outlived its VM");
    ensure!(tpm_dir.join("tpm2-00.permall").is_file(), "the dedicated desktop's TPM went");
    let owner = |dir: &std::path::Path| -> anyhow::Result<u32> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(dir.join("tpm2-00.permall"))?.uid())
    };
    let first_uid = owner(&tpm_dir)?;
    let floating =
        json!({ "image": "uefitest", "vcpus": 1, "memory_mib": 256, "display": "1024x768" });
    let float = node.ready_vm(&floating, BOOT).await?;
    let float_state = node.state_dir.join("firmware").join(&float);
    ensure!(float_state.join("tpm").is_dir(), "no TPM state for {float}");
    let again = node.ready_vm(&spec, BOOT).await?;
    let second_uid = owner(&tpm_dir)?;
    ensure!(second_uid != first_uid, "the dedicated desktop ran as uid {first_uid} both times");
    for vm in [&again, &float] {
        let (status, _) = node.call("DELETE", &format!("/api/v1/vms/{vm}"), None).await?;
        assert_eq!(status, 204);
        ensure!(
            processes_with(&format!("guest=atrium-{vm}")).is_empty(),
            "QEMU of {vm} still runs"
        );
    }
    // A floating desktop's firmware state goes with it; the dedicated one's stays.
    ensure!(!float_state.exists(), "the floating desktop's firmware state stayed");
    ensure!(tpm_dir.join("tpm2-00.permall").is_file(), "the dedicated desktop's TPM went");
    Ok(())
}

/// A PC disk for BIOS firmware (an MBR, SYSLINUX's boot code, a FAT partition): SeaBIOS boots it,
/// says so on its debug port (read into the console log), and the agent signs the user in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_bios_disk_boots_by_seabios_and_signs_its_user_in() -> anyhow::Result<()> {
    if skip(Group::Qemu, "an_imported_bios_disk_boots_by_seabios_and_signs_its_user_in") {
        return Ok(());
    }
    let tmp = TempDir::new("imported-bios");
    let images = tmp.path().join("images");
    let args =
        ["--name", "pc", "--version", "1", "--firmware", "bios", "--agent", "--min-memory", "256"];
    let (ok, said) = import_image(&images, &bios_disk()?, &args)?;
    ensure!(ok && said.contains("imported pc@1 (bios firmware"), "the import: {said}");
    let node = NodeProcess::start(&images.join("pc"), "").await?;
    let spec = json!({
        "image": "pc", "vcpus": 1, "memory_mib": 256, "display": "1024x768",
        "user": { "username": "alice", "display_name": "Alice Example" },
    });
    let id = ready_for_alice(&node, &spec).await?;
    let args = qemu_args(&id)?;
    ensure!(!args.iter().any(|a| a.contains("pflash") || a == "-kernel"), "{args:?}");
    let log = node.console_log(&id).await?;
    ensure!(
        log.contains("Booting from Hard Disk") && log.contains("atrium-guest-agent: ready"),
        "console log:\n{log}"
    );
    let (status, _) = node.call("DELETE", &format!("/api/v1/vms/{id}"), None).await?;
    ensure!(status == 204, "delete: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_or_foreign_disks_are_refused_at_import_and_a_changed_image_is_not_booted()
-> anyhow::Result<()> {
    if skip(
        Group::Qemu,
        "damaged_or_foreign_disks_are_refused_at_import_and_a_changed_image_is_not_booted",
    ) {
        return Ok(());
    }
    let disk = uefi_disk()?;
    let tmp = TempDir::new("import-refusals");
    let images = tmp.path().join("images");
    let qemu_img = |args: &[&str]| -> anyhow::Result<()> {
        let st = Command::new("qemu-img").args(args).output()?;
        ensure!(st.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&st.stderr));
        Ok(())
    };
    let file = |name: &str| tmp.path().join(name);
    let bytes = std::fs::read(&disk)?;

    // Each refused with what is wrong, and nothing left in the images folder.
    let mut cases: Vec<(PathBuf, Vec<&str>, &str)> = Vec::new();
    std::fs::write(file("cut.raw"), &bytes[..bytes.len() / 2])?;
    cases.push((file("cut.raw"), UEFI.to_vec(), "truncated"));
    let qcow = file("whole.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        &disk.to_string_lossy(),
        &qcow.to_string_lossy(),
    ])?;
    let q = std::fs::read(&qcow)?;
    std::fs::write(file("cut.qcow2"), &q[..q.len() / 2])?;
    cases.push((file("cut.qcow2"), UEFI.to_vec(), "damaged"));
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        &disk.to_string_lossy(),
        &file("backed.qcow2").to_string_lossy(),
    ])?;
    cases.push((file("backed.qcow2"), UEFI.to_vec(), "backing file"));
    std::fs::write(
        file("desc.vmdk"),
        "# Disk DescriptorFile\nversion=1\nRW 4 FLAT \"/etc/shadow\" 0\n",
    )?;
    cases.push((file("desc.vmdk"), UEFI.to_vec(), "descriptor"));
    std::fs::write(file("noise.img"), vec![0x5a_u8; 4 << 20])?;
    cases.push((file("noise.img"), UEFI.to_vec(), "no partition table"));
    let mut bios_secure = UEFI.to_vec();
    bios_secure[5] = "bios";
    bios_secure.push("--secure-boot");
    cases.push((disk.clone(), bios_secure, "Secure Boot needs UEFI"));
    let mut bad_name = UEFI.to_vec();
    bad_name[1] = "../etc";
    cases.push((disk.clone(), bad_name, "may contain only"));
    for (source, args, why) in &cases {
        let (ok, said) = import_image(&images, source, args)?;
        ensure!(!ok, "{} was imported: {said}", source.display());
        ensure!(said.contains(why), "{}: expected {why:?} in: {said}", source.display());
        let left: Vec<_> = std::fs::read_dir(&images)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        ensure!(
            left.iter().all(|p| p.read_dir().is_ok_and(|mut d| d.next().is_none())),
            "a refused import left {left:?}"
        );
    }

    // A whole disk in any format is taken (the same disk as qcow2, a monolithic VMDK and a
    // VHDX), each the same disk once imported; once per version.
    let (ok, said) = import_image(&images, &qcow, &UEFI)?;
    ensure!(ok, "the qcow2 import failed: {said}");
    let (ok, said) = import_image(&images, &qcow, &UEFI)?;
    ensure!(!ok && said.contains("imported once"), "a second import of v1: {said}");
    let whole = images.join("uefitest/v1/disk.qcow2");
    for (format, opts) in [("vmdk", "subformat=monolithicSparse"), ("vhdx", "subformat=dynamic")] {
        let file = file(&format!("whole.{format}"));
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            format,
            "-o",
            opts,
            &disk.to_string_lossy(),
            &file.to_string_lossy(),
        ])?;
        let mut args = UEFI.to_vec();
        args[3] = format;
        let (ok, said) = import_image(&images, &file, &args)?;
        ensure!(ok && said.contains(&format!("uefitest@{format}")), "the {format} import: {said}");
        let out = Command::new("qemu-img")
            .args(["compare", "-q", "-f", "qcow2", "-F", "qcow2"])
            .arg(&whole)
            .arg(images.join(format!("uefitest/{format}/disk.qcow2")))
            .status()?;
        ensure!(out.success(), "the {format} import is not the same disk as the qcow2 one");
    }

    // A node with it; then the disk is written behind its back: the image is not booted.
    let node = NodeProcess::start(&images.join("uefitest"), "").await?;
    let (_, body) = node.call("GET", "/api/v1/capacity", None).await?;
    let cap: Capacity = serde_json::from_slice(&body)?;
    let versions = cap.images.iter().filter(|i| i.name == "uefitest").count();
    ensure!(versions == 3, "not all listed: {:?}", cap.images);
    let base = images.join("uefitest/v1/disk.qcow2");
    {
        use std::os::unix::fs::{FileExt, PermissionsExt};
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o644))?;
        let f = std::fs::OpenOptions::new().write(true).open(&base)?;
        f.write_all_at(b"tampered", 1 << 20)?;
    }
    let spec =
        json!({ "image": "uefitest@v1", "vcpus": 1, "memory_mib": 256, "display": "1024x768" });
    let (status, body) = node.call("POST", "/api/v1/vms", Some(&spec)).await?;
    let body = String::from_utf8_lossy(&body);
    ensure!(status == 404 && body.contains("not on this node"), "a changed image: {status} {body}");
    let log = node.log();
    ensure!(log.contains("image refused") && log.contains("sha256"), "node log:\n{log}");
    let running: Vec<VmInfo> = node.list_vms().await?;
    ensure!(running.iter().all(|v| v.state != VmState::Ready), "{running:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_without_an_agent_is_ready_when_its_screen_settles_and_says_what_it_lacks()
-> anyhow::Result<()> {
    if skip(
        Group::Qemu,
        "an_image_without_an_agent_is_ready_when_its_screen_settles_and_says_what_it_lacks",
    ) {
        return Ok(());
    }
    let disk = uefi_disk_without_agent()?;
    let tmp = TempDir::new("imported-noagent");
    let images = tmp.path().join("images");
    let mut args = UEFI.to_vec();
    args[1] = "noagent";
    let (ok, said) = import_image(&images, &disk, &args)?;
    ensure!(ok && said.contains("no agent"), "the import: {said}");

    // A disk whose EFI system partition was wiped: the firmware finds nothing to boot.
    let mut wiped = std::fs::read(&disk)?;
    wiped[1 << 20..2 << 20].fill(0);
    std::fs::write(tmp.path().join("wiped.raw"), &wiped)?;
    let mut args = UEFI.to_vec();
    args[1] = "wiped";
    let (ok, said) = import_image(&images, &tmp.path().join("wiped.raw"), &args)?;
    ensure!(ok, "a wiped ESP is still a whole GPT disk: {said}");

    let node =
        NodeProcess::start_with_images(&[&images.join("noagent"), &images.join("wiped")], "")
            .await?;
    let (_, body) = node.call("GET", "/api/v1/capacity", None).await?;
    let cap: serde_json::Value = serde_json::from_slice(&body)?;
    let listed = cap["images"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "noagent"))
        .context("not listed")?;
    assert_eq!((&listed["agent"], &listed["firmware"]), (&json!(false), &json!("uefi")));

    // Ready once the OS's login prompt has stayed on screen, not on the firmware's logo.
    let spec = json!({
        "image": "noagent", "vcpus": 1, "memory_mib": 256, "display": "1024x768",
        "user": { "username": "alice" },
    });
    let id = node.ready_vm(&spec, BOOT).await?;
    let info = node.vm(&id).await?;
    assert!(!info.agent, "{info:?}");
    let shot = node.screenshot(&id, "imported-noagent-ready.png").await?;
    let text = shot.count([0xaa, 0xaa, 0xaa]);
    assert!((200..5_000).contains(&text), "not a login prompt alone: {text} grey pixels");
    let cells = shot.cells();
    // getty starts with a new line: the prompt is on the second row.
    assert!(cells[..3].iter().flatten().any(Option::is_some), "no prompt in the top rows");
    assert!(cells[10].iter().all(Option::is_none), "more than a prompt on screen");

    // The node records whose desktop it is (the user signs in to the OS); what needs an agent
    // is refused, saying why.
    wait_for("alice recorded", Duration::from_secs(30), || async {
        node.vm(&id).await.ok().filter(|v| v.user.as_deref() == Some("alice"))
    })
    .await?;
    let (status, body) = node
        .call("POST", &format!("/api/v1/vms/{id}/clipboard"), Some(&json!({ "text": "x" })))
        .await?;
    let body = String::from_utf8_lossy(&body);
    ensure!(
        status == 409 && body.contains("without Atrium's guest agent"),
        "paste: {status} {body}"
    );
    let (status, _) = node.call("DELETE", &format!("/api/v1/vms/{id}/session"), None).await?;
    assert_eq!(status, 200);
    ensure!(node.vm(&id).await?.user.is_none(), "the session's end was not recorded");

    // The wiped disk fails with the firmware's reason, not at the ready timeout.
    let spec = json!({ "image": "wiped", "vcpus": 1, "memory_mib": 256, "display": "1024x768" });
    let (status, body) = node.call("POST", "/api/v1/vms", Some(&spec)).await?;
    ensure!(status == 201, "create: {status} {}", String::from_utf8_lossy(&body));
    let failed = serde_json::from_slice::<VmInfo>(&body)?.id;
    let settled = node.wait_settled(&failed, Duration::from_secs(120)).await?;
    assert_eq!(settled.state, VmState::Failed, "{settled:?}");
    let why = settled.error.unwrap_or_default();
    assert!(why.contains("the firmware found nothing to boot"), "{why}");
    Ok(())
}
