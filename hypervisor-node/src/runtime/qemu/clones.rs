//! Templates and clones of the qemu runtime: a template's memory file made by the node, its
//! devices saved without its RAM (`x-ignore-shared`) through a socket in the VM's folder, and a
//! clone's devices loaded from that state (`-incoming defer`) before it resumes.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::QemuVm;
use crate::runtime::{GuestMemory, LaunchConfig, RuntimeError};

/// How long saving or loading a template's device state may take (a few MB).
const STATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Checks a template's or a clone's memory before QEMU starts, and makes a template's file (the
/// node's alone, mode 0600, of the guest's size). `shared_user`: QEMU drops to a user other VMs
/// run as too, who could reach this VM's folder while a clone loads its state: templates and
/// clones need VMs of their own users (`qemu.run_as = "per-vm"`, the default) or none.
pub(super) fn prepare_memory(cfg: &LaunchConfig, shared_user: bool) -> Result<(), RuntimeError> {
    let bytes = u64::from(cfg.memory_mib) << 20;
    if matches!(cfg.memory, GuestMemory::Private) {
        return Ok(());
    }
    if shared_user {
        return Err(RuntimeError::Start(
            "templates and clones need qemu.run_as = \"per-vm\" (each VM its own user)".into(),
        ));
    }
    match &cfg.memory {
        GuestMemory::Private => {}
        // QEMU would make it (as root, mode 0644): the node makes it, its own.
        GuestMemory::Template { file } => {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(file)
                .map_err(RuntimeError::io(format!("creating {}", file.display())))?;
            f.set_len(bytes).map_err(RuntimeError::io(format!("sizing {}", file.display())))?;
        }
        GuestMemory::Clone { memory, .. } => {
            if memory.size() != bytes {
                return Err(RuntimeError::Start(format!(
                    "the template's memory is {} MiB, the clone's {} MiB",
                    memory.size() >> 20,
                    cfg.memory_mib
                )));
            }
        }
    }
    Ok(())
}

/// Gives a template's or a clone's disk layer to the VM's own user (`owner`, when QEMU drops
/// root): a save ends by making the layer read-only and a load by making it writable, and QEMU
/// opens the file again for each, as that user. The layer is this VM's alone (its user is its
/// own, [`prepare_memory`]); a template's is frozen, root's and read-only, once it is saved.
pub(super) fn give_layer(
    cfg: &LaunchConfig,
    owner: Option<(u32, u32)>,
) -> Result<(), RuntimeError> {
    let (Some((uid, gid)), Some(disk)) = (owner, &cfg.disk) else { return Ok(()) };
    if matches!(cfg.memory, GuestMemory::Private) {
        return Ok(());
    }
    std::os::unix::fs::chown(&disk.layer, Some(uid), Some(gid))
        .map_err(RuntimeError::io(format!("giving {} to the VM's user", disk.layer.display())))
}

/// The migration capability that leaves a template's RAM (in its own file) out of its state.
fn ignore_shared() -> serde_json::Value {
    json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] })
}

impl QemuVm {
    /// Pauses this template and saves its devices to `state` ([`super::VmHandle::save_template`]).
    pub(super) async fn save_template_to(&self, state: &Path) -> Result<(), RuntimeError> {
        if !self.template {
            return Err(RuntimeError::Control(
                "only a VM launched as a template saves a template's state".into(),
            ));
        }
        self.qmp("stop", None).await?;
        self.qmp("migrate-set-capabilities", Some(ignore_shared())).await?;
        // The state is written beside its final name and renamed once whole: a failed save
        // leaves nothing that looks like a template's state.
        let partial = state.with_extension("partial");
        let sock = self.paths.qmp.with_file_name("state.sock");
        let saved = self.save_state(&sock, &partial).await;
        let _ = std::fs::remove_file(&sock);
        if let Err(e) = saved {
            let _ = self.qmp("migrate_cancel", None).await;
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        std::fs::rename(&partial, state)
            .map_err(RuntimeError::io(format!("naming {}", state.display())))
    }

    /// Loads a template's device state from `state` into this clone (launched with
    /// `-incoming defer`): QEMU listens on a socket in its own folder (its own user's: clones
    /// run as users of their own, [`prepare_memory`]) and the state goes in.
    /// The clone is then paused, as its template was saved.
    pub(super) async fn load_state(&self, state: &Path) -> Result<(), RuntimeError> {
        self.qmp("migrate-set-capabilities", Some(ignore_shared())).await?;
        let sock = self.screens.join("state.sock");
        let _ = std::fs::remove_file(&sock);
        let uri = format!("unix:{}", sock.display());
        self.qmp("migrate-incoming", Some(json!({ "uri": uri }))).await?;
        let send = async {
            let mut file = tokio::fs::File::open(state)
                .await
                .map_err(RuntimeError::io(format!("opening {}", state.display())))?;
            let mut to = tokio::net::UnixStream::connect(&sock)
                .await
                .map_err(RuntimeError::io("connecting to the clone's state socket"))?;
            tokio::io::copy(&mut file, &mut to)
                .await
                .map_err(RuntimeError::io("sending the template's state"))?;
            Ok::<(), RuntimeError>(())
        };
        tokio::time::timeout(STATE_TIMEOUT, send).await.map_err(|_| {
            RuntimeError::Control("sending the template's state took too long".into())
        })??;
        let done = self.migration_done().await;
        let _ = std::fs::remove_file(&sock);
        done
    }

    /// Takes the template's state from QEMU into `out`: QEMU (as the VM's user, when it dropped
    /// root) connects to `sock`, in the VM's folder, which only root writes (so no one can put
    /// anything in the socket's place); a connection from any process but this VM's QEMU is
    /// turned away.
    async fn save_state(&self, sock: &Path, out: &Path) -> Result<(), RuntimeError> {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::remove_file(sock);
        let listener = tokio::net::UnixListener::bind(sock)
            .map_err(RuntimeError::io("listening for the template's state"))?;
        std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o666))
            .map_err(RuntimeError::io("opening the state socket to QEMU"))?;
        let uri = format!("unix:{}", sock.display());
        self.qmp("migrate", Some(json!({ "uri": uri }))).await?;
        let take = async {
            let mut from = loop {
                let (conn, _) = listener
                    .accept()
                    .await
                    .map_err(RuntimeError::io("taking the template's state"))?;
                let peer = conn.peer_cred().ok().and_then(|c| c.pid());
                if peer.and_then(|p| u32::try_from(p).ok()) == self.pid {
                    break conn;
                }
                tracing::warn!(
                    ?peer,
                    "a process other than the template's QEMU connected to its state socket"
                );
            };
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(out)
                .await
                .map_err(RuntimeError::io(format!("creating {}", out.display())))?;
            tokio::io::copy(&mut from, &mut file)
                .await
                .map_err(RuntimeError::io("writing the template's state"))?;
            file.sync_all().await.map_err(RuntimeError::io("writing the template's state"))
        };
        tokio::time::timeout(STATE_TIMEOUT, take).await.map_err(|_| {
            RuntimeError::Control("saving the template's state took too long".into())
        })??;
        self.migration_done().await
    }

    /// Waits until the migration (out of a template, or into a clone) has completed.
    async fn migration_done(&self) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + STATE_TIMEOUT;
        loop {
            let m = self.qmp("query-migrate", None).await?;
            match m.get("status").and_then(serde_json::Value::as_str) {
                Some("completed") => return Ok(()),
                Some(s @ ("failed" | "cancelled")) => {
                    let why = m.get("error-desc").and_then(serde_json::Value::as_str);
                    return Err(RuntimeError::Control(format!(
                        "the template's state: migration {s}{}",
                        why.map(|w| format!(": {w}")).unwrap_or_default()
                    )));
                }
                _ if Instant::now() > deadline => {
                    return Err(RuntimeError::Control("the template's state took too long".into()));
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}
