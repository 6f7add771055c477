//! A VM's virtual TPM 2.0 (images imported with `--tpm`, as Windows 11 requires): one `swtpm`
//! per VM (Debian's `swtpm`), started before QEMU, which reaches it over a unix socket
//! (`-tpmdev emulator`, a CRB interface as UEFI and Windows expect).
//!
//! - it runs as the VM's own user (as QEMU does after start-up), in the VM's cgroup, and starts
//!   in its state folder, which it finds by its working directory (the node's folders above it
//!   are closed to that user);
//! - its state is the VM's (the `tpm` folder of the firmware's state: a floating desktop's goes
//!   with it, a dedicated desktop's is kept with its disk: BitLocker's keys live there); each
//!   start gives the folder and what is in it to the VM's user of the day (a dedicated desktop
//!   gets whichever uid is free);
//! - it ends when QEMU closes its connection (`--terminate`), or with the VM's cgroup; a launch
//!   that fails before QEMU held it ends it ([`Swtpm::kill`]); like QEMU it outlives the node,
//!   so a restarted node's VMs keep their TPM.

use std::path::{Path, PathBuf};

use crate::runtime::{LaunchConfig, RuntimeError};

/// The socket QEMU reaches the TPM on, in its state folder.
pub const SOCKET: &str = "swtpm.sock";

/// A VM's running swtpm.
#[derive(Debug)]
pub struct Swtpm {
    pub socket: PathBuf,
    child: tokio::process::Child,
}

impl Swtpm {
    /// Ends it (a launch that failed before QEMU held it).
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Starts the TPM of the VM `cfg` launches, its state in `state`, as `owner` (uid, gid) when
/// the VM has its own user; returns once its socket is there.
pub async fn start(
    swtpm: &Path,
    cfg: &LaunchConfig,
    state: &Path,
    owner: Option<(u32, u32)>,
) -> Result<Swtpm, RuntimeError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    let io =
        |what: &'static str| move |e: std::io::Error| RuntimeError::Start(format!("{what}: {e}"));
    std::fs::create_dir_all(state).map_err(io("the TPM's state folder"))?;
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700))
        .map_err(io("the TPM's state folder"))?;
    if let Some((uid, gid)) = owner {
        // The folder and its files (never following a link the last user may have left).
        let give = io("giving the TPM's state to the VM's user");
        std::os::unix::fs::lchown(state, Some(uid), Some(gid)).map_err(give)?;
        for entry in std::fs::read_dir(state).map_err(io("reading the TPM's state folder"))? {
            let path = entry.map_err(io("reading the TPM's state folder"))?.path();
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .map_err(io("giving the TPM's state to the VM's user"))?;
        }
    }
    let socket = state.join(SOCKET);
    let _ = std::fs::remove_file(&socket);
    let procs = match &cfg.cgroup {
        Some(g) => g.open_procs()?,
        None => Vec::new(),
    };
    let fds: Vec<i32> = procs.iter().map(AsRawFd::as_raw_fd).collect();
    let mut cmd = tokio::process::Command::new(swtpm);
    cmd.args(["socket", "--tpm2", "--tpmstate", "dir=.,mode=0600"])
        .args(["--ctrl", &format!("type=unixio,path={SOCKET},mode=0600")])
        .args(["--terminate", "--log", "file=swtpm.log,level=1"])
        .current_dir(state)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        // Like QEMU, it outlives the node (and is ended with the VM).
        .kill_on_drop(false)
        .process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and makes only
    // async-signal-safe system calls (write, setgroups, setgid, setuid) on values and file
    // descriptors the parent keeps until spawn returns; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some((uid, gid)) = owner
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(RuntimeError::io("starting swtpm"))?;
    drop(procs);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() {
        // Its log is the VM's user's file: the node does not read it.
        if let Ok(Some(status)) = child.try_wait() {
            return Err(RuntimeError::Start(format!(
                "swtpm ended ({status}) before it listened; its log: {}",
                state.join("swtpm.log").display()
            )));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(RuntimeError::Start("swtpm did not listen within 10 s".into()));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(Swtpm { socket, child })
}
