//! Instant clones in the qemu runtime: the console image boots as a template (its RAM in a
//! file), its devices are saved without that RAM, and two clones restored from it (RAM mapped
//! privately from the template's sealed copy) come up without a boot: their guest agents answer
//! and say ready, and each clone runs on its own. Then the same through the node: VMs asked for
//! as clones boot while the node makes the template, and start as its clones after; and a node
//! with memory overcommit, which takes VMs by what they really use, holds more idle clones than
//! booted VMs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use atrium_node::agent_link::AgentLink;
use atrium_node::image::Image;
use atrium_node::runtime::qemu::QemuRuntime;
use atrium_node::runtime::{
    GuestMemory, LaunchBoot, LaunchConfig, Runtime, SealedMemory, VmHandle,
};
use atrium_protocol::agent::HostMessage;
use atrium_protocol::node::DisplaySize;
use atrium_tests::node::console_image;
use atrium_tests::{Group, TempDir, skip};

/// How long a boot under TCG may take to its agent's ready; a clone gets the same (it takes a
/// fraction of a second).
const READY: Duration = Duration::from_secs(120);

fn config(image: &Image, dir: &std::path::Path, id: &str, memory: GuestMemory) -> LaunchConfig {
    LaunchConfig {
        id: id.into(),
        dir: dir.join(id),
        boot: LaunchBoot::of(image),
        firmware_state: None,
        disk: None,
        home: None,
        vcpus: 1,
        memory_mib: 256,
        display: DisplaySize::new(1024, 768),
        sound: false,
        cgroup: None,
        memory,
    }
}

/// Collects what the VM writes on its serial console from now on.
async fn console(vm: &dyn VmHandle) -> anyhow::Result<Arc<std::sync::Mutex<Vec<u8>>>> {
    use tokio::io::AsyncReadExt;
    let path = vm.endpoints().serial.clone().context("no serial console")?;
    let mut s = tokio::net::UnixStream::connect(&path).await?;
    let out = Arc::new(std::sync::Mutex::new(Vec::new()));
    let o = Arc::clone(&out);
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            o.lock().expect("console").extend_from_slice(&buf[..n]);
        }
    });
    Ok(out)
}

/// The boot's own line on the console image's serial console.
const BOOTED: &str = "atrium-init: starting init";

/// Waits until the agent of `link` says ready.
async fn ready(link: &AgentLink, what: &str) -> anyhow::Result<()> {
    let mut r = link.view.ready.clone();
    tokio::time::timeout(READY, r.wait_for(|r| *r))
        .await
        .with_context(|| format!("{what}: the agent did not say ready"))?
        .with_context(|| format!("{what}: the agent's link closed"))?;
    Ok(())
}

#[tokio::test]
async fn clones_of_a_booted_template_run_without_a_boot() -> anyhow::Result<()> {
    if skip(Group::Qemu, "clones_of_a_booted_template_run_without_a_boot") {
        return Ok(());
    }
    let tmp = TempDir::new("qemu-clones");
    let image = Image::load(&console_image()?, false)?;
    let runtime = QemuRuntime::new(Default::default(), atrium_node::kvm::detect());
    let make = |id: &str| {
        let d = tmp.path().join(id);
        std::fs::create_dir_all(&d).map(|()| d)
    };

    // 1. The template boots with its RAM in a file, and its agent says ready.
    let memory_file = tmp.path().join("template.mem");
    make("vm-00000000000000a0")?;
    let template = runtime
        .launch(config(
            &image,
            tmp.path(),
            "vm-00000000000000a0",
            GuestMemory::Template { file: memory_file.clone() },
        ))
        .await?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&memory_file)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "the template's memory file has mode {mode:o}");
    }
    let link = AgentLink::connect(&template.endpoints().agent, "template").await?;
    let template_console = console(template.as_ref()).await?;
    template.resume().await?;
    ready(&link, "the template").await?;
    let booted = String::from_utf8_lossy(&template_console.lock().expect("console")).into_owned();
    ensure!(booted.contains(BOOTED), "the template's console shows no boot:\n{booted}");
    // 2. The node lets go of the agent, and saves the template's devices (not its RAM).
    drop(link);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = tmp.path().join("template.state");
    template.save_template(&state).await?;
    let state_len = std::fs::metadata(&state)?.len();
    let memory_len = std::fs::metadata(&memory_file)?.len();
    ensure!(state_len > 0, "no state was saved");
    ensure!(
        state_len < memory_len / 8,
        "the state ({state_len} bytes) holds the RAM ({memory_len} bytes)"
    );
    template.kill().await?;
    template.cleanup()?;
    let memory = Arc::new(SealedMemory::from_file(&memory_file)?);
    std::fs::remove_file(&memory_file)?;

    // 3. Two clones: no boot, the agent greets its new host (which speaks first) and is ready.
    let mut clones: Vec<(Arc<dyn VmHandle>, AgentLink)> = Vec::new();
    for id in ["vm-00000000000000c1", "vm-00000000000000c2"] {
        make(id)?;
        let cfg = config(
            &image,
            tmp.path(),
            id,
            GuestMemory::Clone { memory: Arc::clone(&memory), state: state.clone() },
        );
        let clone = runtime.launch(cfg).await.with_context(|| format!("restoring {id}"))?;
        let link = AgentLink::connect(&clone.endpoints().agent, id).await?;
        let clone_console = console(clone.as_ref()).await?;
        clone.resume().await?;
        link.send(HostMessage::Ping { id: 1 }).await?;
        ready(&link, id).await?;
        let seen = String::from_utf8_lossy(&clone_console.lock().expect("console")).into_owned();
        ensure!(!seen.contains(BOOTED), "{id} booted instead of restoring:\n{seen}");
        clones.push((clone, link));
    }
    // 4. Each is made its own: the host's random bytes, the clock, a host name; its new
    // machine-id, made from its own random numbers after that, is its own. A bad renewal is
    // refused and changes nothing.
    let (_, first) = &clones[0];
    let mut error = first.view.last_error.clone();
    let bad = HostMessage::Renew { entropy: vec![1; 8], time_ms: 0, hostname: "x".into() };
    first.send(bad).await?;
    let said = tokio::time::timeout(Duration::from_secs(30), error.wait_for(Option::is_some))
        .await
        .context("a bad renewal was not answered")??
        .clone();
    ensure!(said.as_deref().is_some_and(|e| e.contains("8 random bytes")), "{said:?}");
    ensure!(first.view.renewed.borrow().is_none(), "a bad renewal renewed");
    let mut ids = Vec::new();
    for (i, (_, link)) in clones.iter().enumerate() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let renew = HostMessage::Renew {
            entropy: rand::random::<[u8; 32]>().to_vec(),
            time_ms: u64::try_from(now.as_millis())?,
            hostname: format!("desk-{i}"),
        };
        let mut renewed = link.view.renewed.clone();
        link.send(renew).await?;
        let id = tokio::time::timeout(Duration::from_secs(30), renewed.wait_for(Option::is_some))
            .await
            .with_context(|| format!("clone {i} was not renewed"))??
            .clone()
            .context("renewed")?;
        ids.push(id);
    }
    ensure!(ids[0] != ids[1], "two clones have one machine-id: {ids:?}");

    // Each runs on its own: both answer pings after the other's start.
    for (i, (clone, link)) in clones.iter().enumerate() {
        let mut pong = link.view.last_pong.clone();
        let before = *pong.borrow();
        link.send(HostMessage::Ping { id: 10 + i as u64 }).await?;
        tokio::time::timeout(Duration::from_secs(30), pong.wait_for(|p| *p != before))
            .await
            .with_context(|| format!("clone {i} did not answer a ping"))??;
        ensure!(clone.exit_watch().borrow().is_none(), "clone {i} ended");
    }
    // Only a template saves a template's state.
    let refused = clones[0].0.save_template(&tmp.path().join("clone.state")).await;
    ensure!(
        refused.as_ref().is_err_and(|e| e.to_string().contains("launched as a template")),
        "a clone saved a template's state: {refused:?}"
    );
    ensure!(!tmp.path().join("clone.state").exists());
    for (clone, _) in clones {
        clone.kill().await?;
        clone.cleanup()?;
    }
    Ok(())
}

/// A gauge or counter of the node's `/metrics`.
async fn metric(node: &atrium_tests::node::NodeProcess, name: &str) -> anyhow::Result<u64> {
    let (_, body) = node.call("GET", "/metrics", None).await?;
    let text = String::from_utf8(body)?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no {name} in the node's metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_makes_a_template_and_starts_vms_as_its_clones() -> anyhow::Result<()> {
    use atrium_protocol::node::{VmInfo, VmState};
    use atrium_tests::node::{NodeProcess, processes_with};
    use serde_json::json;
    if skip(Group::Qemu, "a_node_makes_a_template_and_starts_vms_as_its_clones") {
        return Ok(());
    }
    let node = NodeProcess::start(&console_image()?, "").await?;
    let spec = json!({ "image": "console", "vcpus": 1, "memory_mib": 256, "display": "1024x768", "clone": true });

    // A clone is floating: one with a persistent disk is refused, and nothing is made.
    let mut bad = spec.clone();
    bad["persistent_disk"] = json!("d1");
    let (status, body) = node.raw_post("/api/v1/vms", &bad.to_string()).await?;
    ensure!(status == 400 && body["field"] == "clone", "{status} {body}");

    // 1. The first VM of its kind boots (no one waits for the template), and the node makes
    //    the template meanwhile.
    let first = node.ready_vm(&spec, READY * 2).await?;
    ensure!(!node.vm(&first).await?.cloned, "the first VM was a clone before any template");
    atrium_tests::wait_for("the template", READY * 2, || async {
        metric(&node, "atrium_node_templates").await.ok().filter(|n| *n == 1)
    })
    .await
    .with_context(|| node.log())?;
    let templates = node.state_dir.join("templates");
    let made: Vec<_> = std::fs::read_dir(&templates)?.flatten().map(|e| e.path()).collect();
    ensure!(made.len() == 1, "templates: {made:?}");
    ensure!(made[0].join("state").exists(), "the template has no saved state");
    ensure!(!made[0].join("memory").exists(), "the template's memory file was left (it is sealed)");
    let template_procs = processes_with(&templates.display().to_string());
    ensure!(template_procs.is_empty(), "the template's QEMU still runs: {template_procs:?}");

    // 2. The next VMs are its clones: no boot on their consoles; ready once made their own; one
    //    asked for a user greets them as a booted one does.
    let mut with_user = spec.clone();
    with_user["user"] = json!({ "username": "alice", "display_name": "Alice Example" });
    let mut clones = Vec::new();
    for s in [&spec, &with_user] {
        let id = node.ready_vm(s, READY).await?;
        let info: VmInfo = node.vm(&id).await?;
        ensure!(info.cloned, "{id} was booted, not cloned:\n{}", node.log());
        let console = node.console_log(&id).await?;
        ensure!(!console.contains(BOOTED), "{id} booted:\n{console}");
        clones.push(id);
    }
    atrium_tests::wait_for("the clone's user", Duration::from_secs(60), || async {
        node.vm(&clones[1]).await.ok().filter(|v| v.user.as_deref() == Some("alice"))
    })
    .await?;
    ensure!(metric(&node, "atrium_node_vms_cloned_total").await? == 2);
    ensure!(metric(&node, "atrium_node_templates_made_total").await? == 1);
    let log = node.log();
    ensure!(log.contains("template made"), "{log}");

    // 3. A clone deleted leaves nothing of its own; the template stays for the next.
    for id in [&first, &clones[0]] {
        let (status, _) = node.call("DELETE", &format!("/api/v1/vms/{id}"), None).await?;
        ensure!(status == 204, "delete {id}: {status}");
        ensure!(processes_with(&format!("guest=atrium-{id}")).is_empty(), "{id} still runs");
        ensure!(!node.state_dir.join("vms").join(id).exists(), "{id}'s folder is left");
    }
    ensure!(made[0].exists(), "the template went with a clone");
    let info = node.vm(&clones[1]).await?;
    ensure!(info.state == VmState::Ready, "the other clone is {:?}", info.state);
    Ok(())
}

/// Starts VMs of `spec` one after another, each ready and its memory sampled by the node before
/// the next, until the node says no (at most `max`); returns how many it took and its refusal.
async fn fill(
    node: &atrium_tests::node::NodeProcess,
    spec: &serde_json::Value,
    max: usize,
) -> anyhow::Result<(Vec<String>, String)> {
    let mut ids = Vec::new();
    loop {
        ensure!(ids.len() < max, "the node took {max} VMs of {spec} and would take more");
        let (status, body) = node.call("POST", "/api/v1/vms", Some(spec)).await?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if status == 409 {
            return Ok((ids, body));
        }
        ensure!(status == 201, "create: {status} {body}");
        let id = serde_json::from_str::<atrium_protocol::node::VmInfo>(&body)?.id;
        let ready = node.wait_settled(&id, READY).await?;
        ensure!(ready.state == atrium_protocol::node::VmState::Ready, "{id}: {:?}", ready.error);
        ids.push(id);
        // The node reads its VMs' memory every 5 s.
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_memory_overcommit_a_node_holds_more_idle_clones_than_boots() -> anyhow::Result<()> {
    use atrium_tests::node::NodeProcess;
    use serde_json::json;
    if skip(Group::Qemu, "with_memory_overcommit_a_node_holds_more_idle_clones_than_boots") {
        return Ok(());
    }
    // 512 MiB for VMs, handed out 16 times over, and vCPUs enough: what the VMs really use
    // decides.
    let node = NodeProcess::start(
        &console_image()?,
        "[capacity]\nvcpus = 64\nmemory_mib = 512\nmemory_overcommit = 16\n",
    )
    .await?;
    let boot = json!({ "image": "console", "vcpus": 1, "memory_mib": 256, "display": "1024x768" });
    let mut clone = boot.clone();
    clone["clone"] = json!(true);
    let delete_all = |ids: Vec<String>| async {
        for id in ids {
            let (status, _) = node.call("DELETE", &format!("/api/v1/vms/{id}"), None).await?;
            ensure!(status == 204, "delete {id}: {status}");
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        Ok::<(), anyhow::Error>(())
    };

    let (boots, refused) = fill(&node, &boot, 16).await?;
    ensure!(refused.contains("needs its share"), "{refused}");
    ensure!(!boots.is_empty(), "not even one boot fitted: {refused}");
    let n_boots = boots.len();
    delete_all(boots).await?;

    // The template (the first VM asked for as a clone boots meanwhile), then clones.
    let first = node.ready_vm(&clone, READY * 2).await?;
    atrium_tests::wait_for("the template", READY * 2, || async {
        metric(&node, "atrium_node_templates").await.ok().filter(|n| *n == 1)
    })
    .await
    .with_context(|| node.log())?;
    delete_all(vec![first]).await?;
    let (clones, refused) = fill(&node, &clone, 32).await?;
    ensure!(refused.contains("needs its share"), "{refused}");
    ensure!(
        clones.len() >= 2 * n_boots,
        "{} idle clones fitted where {n_boots} boots did:\n{refused}",
        clones.len()
    );
    delete_all(clones).await?;
    Ok(())
}
