//! A throwaway ClamAV daemon (`clamd` from Debian's clamav-daemon) on a unix socket in a
//! temporary folder. Its signature database is the test's own: one signature, for the EICAR
//! anti-virus test file ([`eicar`]), which every scanner flags and which harms nothing. (The
//! real databases come from `freshclam`, over the internet, which tests do not reach.)

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util::TempDir;

/// The name clamd reports for the EICAR file.
pub const EICAR_SIGNATURE: &str = "Eicar-Test-Signature";

/// The EICAR anti-virus test file (68 bytes), put together here so that no scanner flags this
/// source file.
pub fn eicar() -> Vec<u8> {
    let parts = ["X5O!P%@AP[4\\PZX54(P^)7CC)7}$", "EICAR-STANDARD-ANTIVIRUS", "-TEST-FILE!$H+H*"];
    parts.concat().into_bytes()
}

/// A running clamd; stopped on drop.
#[derive(Debug)]
pub struct Clamd {
    dir: TempDir,
    child: Child,
    pub socket: PathBuf,
}

impl Clamd {
    /// Starts clamd and waits until it answers `PING`. Streams up to 2 GiB are scanned.
    pub fn start() -> anyhow::Result<Self> {
        let clamd = PathBuf::from("/usr/sbin/clamd");
        if !clamd.exists() {
            bail!("clamd is missing: install Debian's clamav-daemon (scripts/test.sh does)");
        }
        let dir = TempDir::new("clamd");
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db)?;
        let hex: String = eicar().iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(db.join("eicar.ndb"), format!("{EICAR_SIGNATURE}:0:*:{hex}\n"))?;
        let socket = dir.path().join("clamd.sock");
        let conf = dir.path().join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "Foreground yes\nLocalSocket {}\nDatabaseDirectory {}\nTemporaryDirectory {}\n\
                 LogFile {}\nStreamMaxLength 2000M\nMaxScanSize 2000M\nMaxFileSize 2000M\n\
                 AlertExceedsMax yes\nUser root\n",
                socket.display(),
                db.display(),
                dir.path().display(),
                dir.path().join("clamd.log").display(),
            ),
        )?;
        let child = Command::new(&clamd)
            .arg("--config-file")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting clamd")?;
        let mut me = Self { dir, child, socket };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = me.child.try_wait() {
                bail!("clamd exited ({status}):\n{}", me.log());
            }
            if me.ping().is_ok() {
                return Ok(me);
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("clamd did not answer within 60 s:\n{}", me.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ping(&self) -> anyhow::Result<()> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"zPING\0")?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)?;
        if answer.starts_with(b"PONG") { Ok(()) } else { bail!("clamd answered {answer:?}") }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("clamd.log")).unwrap_or_default()
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
