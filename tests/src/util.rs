//! Small shared pieces: test groups, temporary directories, ports, binaries.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A group of tests that needs something from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// OpenLDAP `slapd`.
    Ldap,
    /// A PostgreSQL 15 server.
    Postgres,
    /// `qemu-system-x86_64` booting real guests (TCG here).
    Qemu,
    /// `/dev/kvm` (the builtin VMM).
    Kvm,
    /// Chromium driven by playwright-core.
    Browser,
    /// podman (`podman kube play`) running the service tier's containers, and the kubectl and
    /// kubernetes-validate tools for the manifests.
    Containers,
}

impl Group {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ldap => "ldap",
            Self::Postgres => "postgres",
            Self::Qemu => "qemu",
            Self::Kvm => "kvm",
            Self::Browser => "browser",
            Self::Containers => "containers",
        }
    }
}

/// Whether the test should skip because the test command was told to skip `group`. Prints what
/// it skips. A test that is not told to skip and lacks a prerequisite must fail, not skip.
pub fn skip(group: Group, test: &str) -> bool {
    let list = std::env::var("ATRIUM_SKIP").unwrap_or_default();
    let skipped = list.split(',').map(str::trim).any(|g| g == group.name() || g == "all");
    if skipped {
        eprintln!("SKIPPED {test}: group `{}` is in ATRIUM_SKIP", group.name());
    }
    skipped
}

/// Installs rustls' ring crypto provider for the process (once; later calls do nothing): the
/// harness's TLS clients use it.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The workspace root (the folder with the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// A binary of the workspace, built by `cargo build --workspace --bins` (the test command does
/// this first). Looks in the same profile folder as the running test.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> or target/<profile>/<bin> -> target/<profile>/<name>
    let mut profile_dir = exe.parent().expect("the executable has a folder");
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir = profile_dir.parent().expect("deps/ has a parent");
    }
    let p = profile_dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1 for a service a test starts.
///
/// Ports come from a window just below the kernel's ephemeral range, so no outgoing connection
/// (which takes its port from that range) can take one between this call and the service's
/// `bind`; a counter in a locked file hands each test process on the machine a different one.
/// A port something else listens on is skipped.
pub fn free_port() -> u16 {
    let Some((low, high)) = port_window() else {
        // No room outside the ephemeral range: a port the kernel picks (a small race).
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
    };
    let path = std::env::temp_dir().join("atrium-test-ports");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .expect("open the test port counter");
    // Any user's tests on the machine share it.
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o666));
    }
    file.lock().expect("lock the test port counter");
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut &file, &mut text);
    let mut next =
        text.trim().parse::<u16>().ok().filter(|p| (low..high).contains(p)).unwrap_or(low);
    for _ in low..high {
        let port = next;
        next = if next + 1 >= high { low } else { next + 1 };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            let mut f = &file;
            let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0));
            let _ = file.set_len(0);
            let _ = std::io::Write::write_all(&mut f, next.to_string().as_bytes());
            return port;
        }
    }
    panic!("no free port between {low} and {high} on 127.0.0.1");
}

/// The ports `free_port` hands out: 8000 below the ephemeral range, or above it when that
/// starts too low; `None` when neither side has room.
fn port_window() -> Option<(u16, u16)> {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut parts = range.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
    let (start, end) = (parts.next().unwrap_or(32768), parts.next().unwrap_or(60999));
    if start >= 10_000 {
        Some((start - 8000, start))
    } else {
        let low = end.checked_add(1)?.max(1024);
        let high = low.checked_add(8000)?;
        Some((low, high))
    }
}

/// A temporary directory removed on drop (kept when `ATRIUM_KEEP_TMP` is set, for debugging).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let base = std::env::temp_dir();
        let path = base.join(format!("atrium-{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("ATRIUM_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `s` percent-encoded for a URL's query: everything but the unreserved characters.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
