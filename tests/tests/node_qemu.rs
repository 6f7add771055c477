//! The hypervisor node with real guests: `atrium-node serve` booting the console image on the
//! qemu runtime (TCG on these machines, KVM on hosts with VMX/SVM). Group `qemu`.
//!
//! Boots are slow under TCG, so the main test shares one VM across its assertions; the others
//! boot one VM each (a VM killed from outside, the one-shot `run` command) or none.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use atrium_protocol::node::{Capacity, DisplayEndpoint, ErrorBody, RuntimeKind, VmInfo, VmState};
use atrium_tests::display::keep_artifact;
use atrium_tests::node::{NodeProcess, cgroups_named, console_image, processes_with};
use atrium_tests::rfb::RfbClient;
use atrium_tests::screen::{Glyphs, Screen, find_cells, rows_showing};
use atrium_tests::{Group, bin_path, skip, wait_for};
use serde_json::{Value, json};

const BOOT: Duration = Duration::from_secs(240);
/// How long the guest's clipboard may take to show what was copied.
const CLIPBOARD_WAIT: Duration = Duration::from_secs(60);

fn hex(n: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..n].to_owned()
}

fn vnc_path(info: &VmInfo) -> anyhow::Result<PathBuf> {
    match &info.display_endpoint {
        DisplayEndpoint::VncUnix { path } => Ok(PathBuf::from(path)),
        other => bail!("expected a VNC unix socket, got {other:?}"),
    }
}

/// Asserts that nothing of VM `id` is left: process, folder (sockets, disk layer), cgroup.
async fn assert_nothing_left(node: &NodeProcess, id: &str) -> anyhow::Result<()> {
    let (status, _) = node.call("GET", &format!("/api/v1/vms/{id}"), None).await?;
    ensure!(status == 404, "the deleted VM is still listed ({status})");
    let procs = processes_with(&format!("guest=atrium-{id}"));
    ensure!(procs.is_empty(), "QEMU processes of {id} remain: {procs:?}");
    let dir = node.state_dir.join("vms").join(id);
    ensure!(
        !dir.exists(),
        "{} remains: {:?}",
        dir.display(),
        std::fs::read_dir(&dir).map(|d| d.count())
    );
    let groups = cgroups_named(id);
    ensure!(groups.is_empty(), "cgroups of {id} remain: {groups:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_vm_boots_greets_types_shares_its_clipboard_stops_and_leaves_nothing()
-> anyhow::Result<()> {
    if skip(
        Group::Qemu,
        "console_vm_boots_greets_types_shares_its_clipboard_stops_and_leaves_nothing",
    ) {
        return Ok(());
    }
    let image = console_image()?;
    let node = NodeProcess::start(&image, "").await?;
    let disk = format!("alice-home-{}", hex(6));
    let spec = json!({
        "image": "console", "vcpus": 1, "memory_mib": 256, "display": "1024x768",
        "persistent_disk": disk,
        "user": { "username": "alice", "display_name": "Alice Example" },
    });
    let (status, body) = node.call("POST", "/api/v1/vms", Some(&spec)).await?;
    ensure!(status == 201, "create: {status} {}", String::from_utf8_lossy(&body));
    let created: VmInfo = serde_json::from_slice(&body)?;
    let id = created.id.clone();
    assert_eq!(created.state, VmState::Starting);
    assert_eq!(created.runtime, RuntimeKind::Qemu);
    assert!(created.accel.is_some());
    let vnc = vnc_path(&created)?;
    assert!(vnc.exists(), "the VNC socket {} is not there", vnc.display());

    // 1. The guest agent reports ready.
    let ready = node.wait_settled(&id, BOOT).await?;
    ensure!(
        ready.state == VmState::Ready,
        "VM is {:?}: {:?}\nconsole:\n{}\nnode log:\n{}",
        ready.state,
        ready.error,
        node.console_log(&id).await.unwrap_or_default(),
        node.log()
    );
    assert!(ready.ready_at_ms.is_some());

    // 2. The node told the agent who signed in (the spec's user); the console greets them.
    let greeted = wait_for("the session to be confirmed", Duration::from_secs(60), || async {
        node.vm(&id).await.ok().filter(|v| v.user.as_deref() == Some("alice"))
    })
    .await?;
    assert_eq!(greeted.state, VmState::Ready);
    let deadline = Instant::now() + Duration::from_secs(60);
    let shot = loop {
        let s = node.screenshot(&id, "node-console-ready.png").await?;
        // The greeting is drawn bold (bright white); the rest of the console in grey.
        if s.count([0xff, 0xff, 0xff]) > 200 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // 3. The screenshot shows the console: the display size asked for, a black screen with
    //    grey text at the top, and the bold greeting.
    assert_eq!((shot.width, shot.height), (1024, 768));
    let total = usize::try_from(shot.width * shot.height)?;
    let black = shot.count([0, 0, 0]);
    let grey = shot.count([0xaa, 0xaa, 0xaa]);
    let white = shot.count([0xff, 0xff, 0xff]);
    assert!(black > total * 8 / 10, "the console background is not black ({black} of {total})");
    assert!(grey > 2_000, "little console text on screen ({grey} grey pixels)");
    assert!(white > 200, "no bold greeting on screen ({white} white pixels)");
    let grid = shot.cells();
    // The console starts at the top; the greeting (which starts on a new line) may come
    // before the login's first lines when the guest is slow, so the first row may be empty.
    let top = &grid[..3];
    assert!(top.iter().flatten().any(Option::is_some), "the top text rows are empty");
    assert!(grid[grid.len() - 1].iter().all(Option::is_none), "the last text row is not empty");
    // The console's screen keeps its size: its agent reports no screen, and a request to
    // change it is refused as such.
    ensure!(node.vm(&id).await?.screen.is_none(), "the console reports a screen size");
    let (status, body) = node
        .call("PUT", &format!("/api/v1/vms/{id}/screen"), Some(&json!({ "size": "800x600" })))
        .await?;
    ensure!(
        status == 409 && String::from_utf8_lossy(&body).contains("cannot change size"),
        "resizing the console: {status} {}",
        String::from_utf8_lossy(&body)
    );

    // 4. Text typed into the VM's keyboard through its VNC socket shows up on screen and
    //    reaches the shell exactly: `tee` writes it to the clipboard file, which the agent
    //    copies out.
    let mut rfb = RfbClient::connect(&vnc).await?;
    assert_eq!((rfb.width, rfb.height), (1024, 768));
    assert!(
        rfb.enable_qemu_ext_keys().await?,
        "QEMU's VNC server did not offer the extended key event"
    );
    let word = format!("atrium-{}", hex(8));
    rfb.type_text(&format!("echo {word} | tee clipboard.txt\n")).await?;
    let copied = node.wait_clipboard(&id, 0, &format!("{word}\n"), CLIPBOARD_WAIT).await?;

    let deadline = Instant::now() + Duration::from_secs(60);
    let (grid, row) = loop {
        let s = node.screenshot(&id, "node-console-typed.png").await?;
        let grid = s.cells();
        let n = word.len();
        // The output line shows the word alone, and the line above (the command as typed)
        // shows the same cells.
        let found = rows_showing(&grid, &word, &Glyphs::default())
            .into_iter()
            .find(|&r| r > 0 && find_cells(&grid[r - 1], &grid[r][..n]).is_some());
        if let Some(r) = found {
            break (grid, r);
        }
        ensure!(
            Instant::now() < deadline,
            "the typed text never showed on screen (see node-console-typed.png)"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut glyphs = Glyphs::default();
    glyphs.learn(&grid[row][..word.len()], &word);

    // 5. Clipboard, paste in then copy out, through the agent: the host's text lands in the
    //    guest (the user sees it with `cat`), the user changes it, the change comes back.
    let paste = format!("paste-{}\n", hex(8));
    let (status, body) = node
        .call("POST", &format!("/api/v1/vms/{id}/clipboard"), Some(&json!({ "text": paste })))
        .await?;
    ensure!(status == 204, "paste: {status} {}", String::from_utf8_lossy(&body));
    rfb.type_text("cat clipboard.txt\n").await?;
    let shown = paste.trim_end();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = node.screenshot(&id, "node-console-pasted.png").await?;
        if !rows_showing(&s.cells(), shown, &glyphs).is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the pasted text never showed on screen (see node-console-pasted.png)"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    rfb.type_text("tr a-z A-Z < clipboard.txt > up.txt && mv up.txt clipboard.txt\n").await?;
    let upper = node.wait_clipboard(&id, copied.seq, &paste.to_uppercase(), CLIPBOARD_WAIT).await?;
    assert!(upper.seq > copied.seq);

    // 6. The serial console log has the boot and the agent's own lines.
    let log = node.console_log(&id).await?;
    for needle in
        ["atrium-init: starting init", "atrium-guest-agent: ready", "session started for alice"]
    {
        assert!(log.contains(needle), "{needle:?} is not in the console log:\n{log}");
    }

    // 7. The VM runs in its own cgroup, with its memory limit (guest + QEMU's allowance).
    let pids = processes_with(&format!("guest=atrium-{id}"));
    assert_eq!(pids.len(), 1, "expected one QEMU process, found {pids:?}");
    // QEMU dropped root once it had opened its files (`-runas`): an escape is not root.
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0]))?;
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default().to_owned();
    assert!(!uid.split_whitespace().skip(1).any(|u| u == "0"), "QEMU runs as root: {uid}");
    let membership = std::fs::read_to_string(format!("/proc/{}/cgroup", pids[0]))?;
    assert!(membership.contains(&id), "QEMU is not in the VM's cgroup:\n{membership}");
    let groups = cgroups_named(&id);
    assert!(!groups.is_empty());
    if let Some(mem) = groups.iter().find(|g| g.join("memory.limit_in_bytes").exists()) {
        let limit: u64 =
            std::fs::read_to_string(mem.join("memory.limit_in_bytes"))?.trim().parse()?;
        assert_eq!(limit, (256 + 256) << 20);
    } else if let Some(mem) = groups.iter().find(|g| g.join("memory.max").exists()) {
        let limit: u64 = std::fs::read_to_string(mem.join("memory.max"))?.trim().parse()?;
        assert_eq!(limit, (256 + 256) << 20);
    } else {
        bail!("no memory limit file in {groups:?}");
    }

    // 8. Capacity and metrics count it.
    let (_, body) = node.call("GET", "/api/v1/capacity", None).await?;
    let cap: Capacity = serde_json::from_slice(&body)?;
    assert_eq!((cap.vms, cap.vcpus_allocated, cap.memory_mib_allocated), (1, 1, 256));
    // What QEMU really uses (PSS, read every few seconds): some, within its cgroup's limit
    // (guest + overhead).
    let used = wait_used(&node, |mib| mib > 0).await?;
    assert!((1..=512).contains(&used), "memory used by the VM: {used} MiB");
    let (_, body) = node.call("GET", "/metrics", None).await?;
    let metrics = String::from_utf8(body)?;
    assert!(metrics.contains("atrium_node_vm_ready_seconds_count 1"), "{metrics}");
    assert!(metrics.contains("atrium_node_vms{state=\"ready\"} 1"), "{metrics}");

    // 9. Stop: the guest powers off on the ACPI power button; the persistent disk stays.
    let (status, body) = node.call("POST", &format!("/api/v1/vms/{id}/stop"), None).await?;
    ensure!(status == 200, "stop: {status} {}", String::from_utf8_lossy(&body));
    let stopped: VmInfo = serde_json::from_slice(&body)?;
    assert_eq!(stopped.state, VmState::Stopped, "{:?}", stopped.error);
    assert!(processes_with(&format!("guest=atrium-{id}")).is_empty(), "QEMU still runs after stop");
    let log = node.console_log(&id).await?;
    assert!(
        log.contains("The system is going down"),
        "the guest did not shut down cleanly:\n{log}"
    );
    let (_, body) = node.call("GET", "/api/v1/capacity", None).await?;
    let cap: Capacity = serde_json::from_slice(&body)?;
    assert_eq!(cap.memory_mib_allocated, 0, "a stopped VM still holds memory");
    let used = wait_used(&node, |mib| mib == 0).await;
    assert!(used.is_ok(), "a stopped VM's memory is still counted: {used:?}");

    // 10. Delete: nothing remains but the persistent disk, kept by its id.
    let (status, _) = node.call("DELETE", &format!("/api/v1/vms/{id}"), None).await?;
    assert_eq!(status, 204);
    assert_nothing_left(&node, &id).await?;
    let kept = node.state_dir.join("disks").join(format!("{disk}.qcow2"));
    assert!(kept.exists(), "the persistent disk {} is gone", kept.display());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_session_takes_its_vms_back_when_it_restarts() -> anyhow::Result<()> {
    if skip(Group::Qemu, "a_node_killed_mid_session_takes_its_vms_back_when_it_restarts") {
        return Ok(());
    }
    let image = console_image()?;
    // The production setting: a stopped node leaves its VMs running.
    let mut node = NodeProcess::start(&image, "vms_at_stop = \"keep\"\n").await?;
    let create = |user: &str| {
        json!({
            "image": "console", "vcpus": 1, "memory_mib": 256, "display": "1024x768",
            "user": { "username": user },
        })
    };
    let mut ids = Vec::new();
    for user in ["alice", "bob"] {
        let (status, body) = node.call("POST", "/api/v1/vms", Some(&create(user))).await?;
        ensure!(status == 201, "create: {status} {}", String::from_utf8_lossy(&body));
        ids.push(serde_json::from_slice::<VmInfo>(&body)?.id);
    }
    let (kept, lost) = (ids[0].clone(), ids[1].clone());
    for (id, user) in [(&kept, "alice"), (&lost, "bob")] {
        wait_for("the session to be confirmed", BOOT, || async {
            node.vm(id)
                .await
                .ok()
                .filter(|v| v.state == VmState::Ready && v.user.as_deref() == Some(user))
        })
        .await
        .with_context(|| node.log())?;
    }
    let info = node.vm(&kept).await?;
    let qemu = processes_with(&format!("guest=atrium-{kept}"));
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    // A viewer on the desktop's screen, as the display proxy would be.
    let mut rfb = RfbClient::connect(&vnc_path(&info)?).await?;
    rfb.enable_qemu_ext_keys().await?;

    // The node agent dies (a crash, an upgrade by kill): its VMs run on, and the user goes on
    // typing; one VM's QEMU also dies while no node watches.
    node.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(processes_with(&format!("guest=atrium-{kept}")), qemu, "QEMU died with the node");
    for pid in processes_with(&format!("guest=atrium-{lost}")) {
        // SAFETY: kill has no memory-safety preconditions; the pid was just read from /proc.
        unsafe { libc::kill(i32::try_from(pid)?, libc::SIGKILL) };
    }
    let before = format!("during-{}", hex(8));
    rfb.type_text(&format!("echo {before} | tee clipboard.txt\n")).await?;

    // The node starts again and takes the running VM back: same process, same state and user,
    // its QMP, console and agent reconnected. The VM whose QEMU died is gone, and cleaned up.
    node.restart_if_dead()?.context("the node was dead")?;
    let back = wait_for("the node to answer again", Duration::from_secs(30), || async {
        node.vm(&kept).await.ok()
    })
    .await
    .with_context(|| node.log())?;
    assert_eq!(back.state, VmState::Ready, "{:?}\n{}", back.error, node.log());
    assert_eq!(back.user.as_deref(), Some("alice"));
    assert_eq!(back.created_at_ms, info.created_at_ms);
    assert_eq!(processes_with(&format!("guest=atrium-{kept}")), qemu, "not the same QEMU");
    let listed: Vec<String> = node.list_vms().await?.into_iter().map(|v| v.id).collect();
    assert_eq!(listed, std::slice::from_ref(&kept), "the VM whose QEMU died is still listed");
    assert_nothing_left(&node, &lost).await?;
    let log = node.log();
    assert!(log.contains("took back a VM"), "{log}");

    // Everything works as before: the screen (QMP), the clipboard (the agent), and the end.
    let shot = node.screenshot(&kept, "node-taken-back.png").await.with_context(|| node.log())?;
    assert_eq!((shot.width, shot.height), (1024, 768));
    let after = format!("after-{}", hex(8));
    rfb.type_text(&format!("echo {after} | tee clipboard.txt\n")).await?;
    node.wait_clipboard(&kept, 0, &format!("{after}\n"), CLIPBOARD_WAIT).await?;
    let (_, body) = node.call("GET", "/metrics", None).await?;
    let metrics = String::from_utf8(body)?;
    assert!(metrics.contains("atrium_node_vms_taken_back_total 1"), "{metrics}");

    // An upgrade: the node is stopped (SIGTERM) and started again; the desktop runs on.
    node.terminate()?;
    assert_eq!(processes_with(&format!("guest=atrium-{kept}")), qemu, "a stop ended the VM");
    node.restart_if_dead()?.context("the node had stopped")?;
    let again = wait_for("the node to answer again", Duration::from_secs(30), || async {
        node.vm(&kept).await.ok()
    })
    .await?;
    assert_eq!((again.state, again.user.as_deref()), (VmState::Ready, Some("alice")));
    let (status, _) = node.call("DELETE", &format!("/api/v1/vms/{kept}"), None).await?;
    assert_eq!(status, 204);
    assert!(processes_with(&format!("guest=atrium-{kept}")).is_empty(), "QEMU outlived its VM");
    assert_nothing_left(&node, &kept).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_killed_from_outside_is_reported_failed_and_cleaned_up() -> anyhow::Result<()> {
    if skip(Group::Qemu, "a_vm_killed_from_outside_is_reported_failed_and_cleaned_up") {
        return Ok(());
    }
    let image = console_image()?;
    let node = NodeProcess::start(&image, "").await?;
    let spec = json!({
        "image": "console", "vcpus": 1, "memory_mib": 256, "display": "1024x768",
        "persistent_disk": "bob-home",
    });
    let (status, body) = node.call("POST", "/api/v1/vms", Some(&spec)).await?;
    ensure!(status == 201, "create: {status} {}", String::from_utf8_lossy(&body));
    let id = serde_json::from_slice::<VmInfo>(&body)?.id;
    let pids = processes_with(&format!("guest=atrium-{id}"));
    assert_eq!(pids.len(), 1, "expected one QEMU process, found {pids:?}");
    assert!(!cgroups_named(&id).is_empty(), "the VM has no cgroup");
    let disk = node.state_dir.join("disks/bob-home.qcow2");
    assert!(disk.exists(), "no copy-on-write layer at {}", disk.display());
    let info = std::process::Command::new("qemu-img").arg("info").arg("-U").arg(&disk).output()?;
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("backing file:") && info.contains("home.raw"),
        "not a layer over the image's base:\n{info}"
    );

    // One persistent disk, one VM at a time; and it stays with the image it was made from.
    let (status, body) = node.call("POST", "/api/v1/vms", Some(&spec)).await?;
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    let mut other_image = spec.clone();
    other_image["image"] = json!("console@0-other");
    let (status, body) = node.call("POST", "/api/v1/vms", Some(&other_image)).await?;
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("was made from image console@"));

    let pid = i32::try_from(pids[0])?;
    // SAFETY: kill has no memory-safety preconditions; the pid is the QEMU process found above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let failed = node.wait_settled(&id, Duration::from_secs(60)).await?;
    let failed = if failed.state == VmState::Starting { node.vm(&id).await? } else { failed };
    assert_eq!(failed.state, VmState::Failed);
    let error = failed.error.context("a failed VM says why")?;
    assert!(error.contains("signal 9"), "{error}");
    wait_for("the dead VM's cgroup to go", Duration::from_secs(20), || async {
        cgroups_named(&id).is_empty().then_some(())
    })
    .await?;

    let (status, _) = node.call("DELETE", &format!("/api/v1/vms/{id}"), None).await?;
    assert_eq!(status, 204);
    assert_nothing_left(&node, &id).await?;

    // The persistent disk outlived its VM and is attached again to the next one that names it.
    assert!(disk.exists(), "the persistent disk went with its VM");
    let (status, body) = node.call("POST", "/api/v1/vms", Some(&spec)).await?;
    ensure!(status == 201, "create again: {status} {}", String::from_utf8_lossy(&body));
    let again = serde_json::from_slice::<VmInfo>(&body)?.id;
    let pids = processes_with(&format!("guest=atrium-{again}"));
    assert_eq!(pids.len(), 1);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0]))?;
    assert!(
        String::from_utf8_lossy(&cmdline).contains("disks/bob-home.qcow2"),
        "the disk was not attached again"
    );
    let (status, _) = node.call("DELETE", &format!("/api/v1/vms/{again}"), None).await?;
    assert_eq!(status, 204);
    assert_nothing_left(&node, &again).await?;
    assert!(disk.exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deletes_every_vm_without_waiting_for_long_polls() -> anyhow::Result<()> {
    if skip(Group::Qemu, "sigterm_deletes_every_vm_without_waiting_for_long_polls") {
        return Ok(());
    }
    let image = console_image()?;
    let mut node = NodeProcess::start(&image, "").await?;
    let spec = json!({ "image": "console", "vcpus": 1, "memory_mib": 256, "display": "1024x768" });
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, body) = node.call("POST", "/api/v1/vms", Some(&spec)).await?;
        ensure!(status == 201, "create: {status} {}", String::from_utf8_lossy(&body));
        ids.push(serde_json::from_slice::<VmInfo>(&body)?.id);
    }
    for id in &ids {
        let info = node.wait_settled(id, BOOT).await?;
        ensure!(info.state == VmState::Ready, "{id} is {:?}: {:?}", info.state, info.error);
        ensure!(processes_with(&format!("guest=atrium-{id}")).len() == 1, "{id} has no QEMU");
    }
    // Each VM runs as its own user and group (`qemu.run_as = "per-vm"`): one VM's QEMU, were
    // a guest to escape into it, cannot touch the other's.
    let ids_of = |vm: &str| -> anyhow::Result<(String, String)> {
        let pid = processes_with(&format!("guest=atrium-{vm}"))[0];
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_owned()
        };
        Ok((field("Uid:"), field("Gid:")))
    };
    let (a, b) = (ids_of(&ids[0])?, ids_of(&ids[1])?);
    assert_ne!(a, b, "two VMs run as the same user");
    for (uid, gid) in [&a, &b] {
        let first = |l: &str| l.split_whitespace().nth(1).and_then(|u| u.parse::<u32>().ok());
        assert!(first(uid).is_some_and(|u| u >= 200_000), "{uid}");
        assert!(first(gid).is_some_and(|g| g >= 200_000), "{gid}");
    }
    // A display proxy's clipboard long-poll (the longest the API allows) on the node's local
    // socket, as the proxy makes it, in flight when the node is told to stop.
    let url = format!("http://node/api/v1/vms/{}/clipboard?after=1000000&wait=30", ids[0]);
    let local = reqwest::Client::builder().unix_socket(node.local_socket()).build()?;
    let poll =
        tokio::spawn(async move { local.get(url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let status = tokio::task::block_in_place(|| node.terminate())?;
    let took = asked.elapsed();
    assert!(status.success(), "the node exited with {status}; log:\n{}", node.log());
    for id in &ids {
        let procs = processes_with(&format!("guest=atrium-{id}"));
        assert!(procs.is_empty(), "QEMU of {id} outlived its node: {procs:?}");
        assert!(cgroups_named(id).is_empty(), "the cgroup of {id} outlived its node");
        assert!(!node.state_dir.join("vms").join(id).exists(), "the folder of {id} remains");
    }
    // Not a speed check: a node that waited for the request would take its whole 30 s.
    assert!(took < Duration::from_secs(29), "the node waited out the long-poll ({took:?})");
    let _ = poll.await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_and_missing_images_are_refused_clearly() -> anyhow::Result<()> {
    if skip(Group::Qemu, "bad_specs_and_missing_images_are_refused_clearly") {
        return Ok(());
    }
    let image = console_image()?;
    let node = NodeProcess::start(&image, "").await?;
    let err = |v: Value| -> anyhow::Result<ErrorBody> { Ok(serde_json::from_value(v)?) };

    let (status, body) = node
        .raw_post(
            "/api/v1/vms",
            r#"{"image":"console","vcpus":0,"memory_mib":256,"display":"1024x768"}"#,
        )
        .await?;
    assert_eq!(status, 400);
    assert_eq!(err(body)?.field.as_deref(), Some("vcpus"));
    let (status, body) = node
        .raw_post(
            "/api/v1/vms",
            r#"{"image":"console","vcpus":1,"memory_mib":"lots","display":"1024x768"}"#,
        )
        .await?;
    assert_eq!(status, 400);
    assert_eq!(err(body)?.field.as_deref(), Some("memory_mib"));
    let (status, body) =
        node.raw_post("/api/v1/vms", r#"{"image": "console", "vcpus": 1,"#).await?;
    assert_eq!(status, 400);
    assert!(err(body)?.error.contains("not valid JSON"));

    let (status, body) = node
        .raw_post(
            "/api/v1/vms",
            r#"{"image":"windows@11","vcpus":1,"memory_mib":256,"display":"1024x768"}"#,
        )
        .await?;
    assert_eq!(status, 404);
    let e = err(body)?;
    assert_eq!(e.field.as_deref(), Some("image"));
    assert!(e.error.contains("windows@11") && e.error.contains("console@"), "{}", e.error);

    let (status, body) = node
        .raw_post(
            "/api/v1/vms",
            r#"{"image":"console","vcpus":1,"memory_mib":1048576,"display":"1024x768"}"#,
        )
        .await?;
    assert_eq!(status, 409, "{body}");
    assert!(err(body)?.error.contains("not enough memory"));

    let resp = reqwest::Client::new().get(format!("{}/api/v1/vms", node.url)).send().await?;
    assert_eq!(resp.status().as_u16(), 401);
    let (_, body) = node.call("GET", "/api/v1/vms", None).await?;
    assert_eq!(body, b"[]", "a refused spec left a VM behind");

    let health: Value = reqwest::get(format!("{}/healthz", node.url)).await?.json().await?;
    assert_eq!(health["status"], "ok");
    assert!(health["kvm"].is_string() && health["default_runtime"].is_string(), "{health}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_command_boots_reports_and_cleans_up() -> anyhow::Result<()> {
    if skip(Group::Qemu, "the_run_command_boots_reports_and_cleans_up") {
        return Ok(());
    }
    let image = console_image()?;
    let dir = atrium_tests::TempDir::new("node-run");
    let shot = dir.path().join("run.png");
    let out = tokio::process::Command::new(bin_path("atrium-node"))
        .args(["run", "--until-ready", "--memory", "256", "--timeout", "240", "--image"])
        .arg(&image)
        .arg("--screenshot")
        .arg(&shot)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "run failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last: Value = serde_json::from_str(stdout.lines().last().context("no output")?)?;
    assert_eq!(last["runtime"], "qemu");
    assert!(last["accel"] == "tcg" || last["accel"] == "kvm", "{last}");
    let start = last["start_ms"].as_u64().context("start_ms")?;
    let ready = last["ready_ms"].as_u64().context("ready_ms")?;
    assert!(start <= ready, "{last}");
    let png = std::fs::read(&shot)?;
    keep_artifact("node-run.png", &png);
    let s = Screen::from_png(&png)?;
    // The screen at ready, of the display's size: the console's agent says ready once the
    // shell has cleared the screen, and on a loaded host the login may not have drawn yet (CI
    // saw the cleared screen), so what it shows is not judged here (the main test waits for
    // the console's text).
    assert_eq!((s.width, s.height), (1280, 800));
    // The one-shot command leaves no VM behind.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let vm = stderr
        .match_indices("vm-")
        .map(|(i, _)| &stderr[i..])
        .find(|s| s.len() >= 19 && s[3..19].bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|s| s[..19].to_owned())
        .context("the run's log names its VM")?;
    assert!(processes_with(&format!("guest=atrium-{vm}")).is_empty());
    assert!(cgroups_named(&vm).is_empty());
    Ok(())
}

#[test]
fn the_console_image_names_its_debian_packages_and_hashes() -> anyhow::Result<()> {
    if skip(Group::Qemu, "the_console_image_names_its_debian_packages_and_hashes") {
        return Ok(());
    }
    let image = console_image()?;
    let m: Value = serde_json::from_slice(&std::fs::read(image.join("manifest.json"))?)?;
    assert_eq!(m["kind"], "console");
    let packages: Vec<&str> = m["packages"]
        .as_array()
        .context("packages")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        packages.iter().any(|p| p.starts_with("linux-image-") && p.ends_with("-amd64")),
        "{packages:?}"
    );
    assert!(packages.contains(&"busybox-static"), "{packages:?}");
    let modules: Vec<&str> =
        m["modules"].as_array().context("modules")?.iter().filter_map(Value::as_str).collect();
    let pos = |m: &str| modules.iter().position(|x| *x == m);
    for needed in ["bochs", "virtio_console", "virtio_pci", "ext4"] {
        assert!(pos(needed).is_some(), "{needed} missing from {modules:?}");
    }
    assert!(
        pos("drm") < pos("bochs") && pos("virtio") < pos("virtio_pci") && pos("jbd2") < pos("ext4"),
        "not in dependency order: {modules:?}"
    );
    assert_eq!(m["agent"]["linking"], "static");
    for f in m["files"].as_array().context("files")? {
        let name = f["path"].as_str().context("path")?;
        let out = std::process::Command::new("sha256sum").arg(image.join(name)).output()?;
        let sum = String::from_utf8_lossy(&out.stdout);
        assert_eq!(sum.split_whitespace().next(), f["sha256"].as_str(), "{name}");
    }
    Ok(())
}

/// The running node's API opens to the broker's signature for this node alone: not to the
/// node's own key (as a thief of it would hold), not to a broker call meant for another node,
/// not to a call replayed or changed. Its local socket, for the display proxy beside it, needs
/// no credential (its file mode is the gate) and reads displays and clipboards only.
#[tokio::test]
async fn the_node_api_opens_to_the_broker_for_this_node_only() -> anyhow::Result<()> {
    if skip(Group::Qemu, "the_node_api_opens_to_the_broker_for_this_node_only") {
        return Ok(());
    }
    let image = console_image()?;
    let node = NodeProcess::start(&image, "id = \"node-a\"").await?;
    let http = reqwest::Client::new();
    let get = async |token: &str| -> anyhow::Result<u16> {
        let r = http.get(format!("{}/api/v1/vms", node.url)).bearer_auth(token).send().await?;
        Ok(r.status().as_u16())
    };
    let good = node.sign("GET", "/api/v1/vms", b"");
    assert_eq!(get(&good).await?, 200);
    assert_eq!(get(&good).await?, 401, "a replayed call");
    // The node's own key, as it would be stolen from its disk, signing for itself.
    let own =
        atrium_protocol::signed::NodeKey::load_or_generate(&node.state_dir.join("node-key.pem"))?;
    let req = atrium_protocol::signed::Request {
        method: "GET",
        path_and_query: "/api/v1/vms",
        body: b"",
    };
    let aud = atrium_protocol::signed::node_audience("node-a");
    let forged = own.sign("broker", &aud, &req, atrium_protocol::signed::now_secs())?;
    assert_eq!(get(&forged).await?, 401, "the node's own key");
    // The broker's signature, for another node; and for another path.
    let for_b = node.signer().sign_request("node-b", "GET", "/api/v1/vms", b"");
    assert_eq!(get(&for_b).await?, 401, "a call signed for another node");
    let other_path = node.sign("GET", "/api/v1/capacity", b"");
    assert_eq!(get(&other_path).await?, 401, "a call signed for another path");
    // A broker call to create a VM, with the body changed on the way.
    let spec = json!({ "image": "console", "vcpus": 1, "memory_mib": 256, "display": "1024x768" });
    let signed_for = serde_json::to_vec(&spec)?;
    let changed = serde_json::to_vec(
        &json!({ "image": "console", "vcpus": 64, "memory_mib": 256, "display": "1024x768" }),
    )?;
    let r = http
        .post(format!("{}/api/v1/vms", node.url))
        .bearer_auth(node.sign("POST", "/api/v1/vms", &signed_for))
        .header("content-type", "application/json")
        .body(changed)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401, "a changed body");

    // The local socket: mode 0660, reads only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(node.local_socket())?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let local = reqwest::Client::builder().unix_socket(node.local_socket()).build()?;
    let r = local.get("http://node/api/v1/vms/vm-0000000000000000").send().await?;
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.text().await?.contains("vm-0000000000000000"), "the VM's 404, not the route's");
    let r = local.post("http://node/api/v1/vms").json(&spec).send().await?;
    assert_eq!(r.status().as_u16(), 404, "no VM is created through the local socket");
    let r = local.delete("http://node/api/v1/vms/vm-0000000000000000").send().await?;
    assert!(r.status().is_client_error());
    assert!(node.list_vms().await?.is_empty());
    Ok(())
}

/// The node's `memory_mib_used` once `want` holds of it (it is sampled every few seconds).
async fn wait_used(node: &NodeProcess, want: impl Fn(u64) -> bool) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = node.call("GET", "/api/v1/capacity", None).await?;
        let cap: Capacity = serde_json::from_slice(&body)?;
        if want(cap.memory_mib_used) {
            return Ok(cap.memory_mib_used);
        }
        ensure!(Instant::now() < deadline, "memory used: {} MiB", cap.memory_mib_used);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
