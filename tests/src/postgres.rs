//! A throwaway PostgreSQL cluster on loopback, in a temporary folder, run as the `postgres`
//! system user (`initdb` refuses root). Trust authentication on 127.0.0.1 only.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{TempDir, free_port};

#[derive(Debug)]
pub struct Postgres {
    dir: TempDir,
    bin: PathBuf,
    pub port: u16,
    /// The server options `pg_ctl start` was given (to start it again the same way).
    opts: String,
}

fn pg_bin() -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().ok_or_else(|| {
        anyhow::anyhow!(
            "PostgreSQL is not installed (Debian package `postgresql`; scripts/test.sh installs it)"
        )
    })
}

/// Runs a PostgreSQL binary as the `postgres` user when we are root.
fn as_pg(bin: &std::path::Path) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

impl Postgres {
    pub fn start() -> anyhow::Result<Self> {
        crate::util::install_crypto();
        let bin = pg_bin()?;
        let dir = TempDir::new("pg");
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir_all(&sock)?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let st =
                Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status()?;
            anyhow::ensure!(st.success(), "chown of the PostgreSQL folder failed");
        }
        let out = as_pg(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C", "-D"])
            .arg(&data)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 -c shared_buffers=64MB",
            sock.display()
        );
        let me = Self { dir, bin, port, opts };
        me.pg_start()?;
        me.create_db("atrium")?;
        Ok(me)
    }

    fn pg_start(&self) -> anyhow::Result<()> {
        let out = as_pg(&self.bin.join("pg_ctl"))
            .args(["-w", "-t", "30", "-D"])
            .arg(self.dir.path().join("data"))
            .args(["-o", &self.opts, "-l"])
            .arg(self.dir.path().join("pg.log"))
            .arg("start")
            .stdout(Stdio::null())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "pg_ctl start failed: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("pg.log")).unwrap_or_default()
        );
        Ok(())
    }

    /// Stops the server (fast shutdown: open connections are closed), as an outage would.
    pub fn stop(&self) -> anyhow::Result<()> {
        let out = as_pg(&self.bin.join("pg_ctl"))
            .args(["-w", "-t", "30", "-D"])
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "stop"])
            .stdout(Stdio::null())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Starts the server again after [`Self::stop`], on the same port with the same data.
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.pg_start()
    }

    pub fn create_db(&self, name: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let out = as_pg(&self.bin.join("createdb"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name])
                .output()?;
            if out.status.success() {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                anyhow::bail!("createdb failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_pg(&self.bin.join("pg_ctl"))
            .args(["-D"])
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
