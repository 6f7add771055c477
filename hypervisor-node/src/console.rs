//! A VM's serial console log: the last bytes the guest wrote, bounded.

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

/// The tail of a byte stream, at most `cap` bytes.
#[derive(Debug)]
pub struct ConsoleLog {
    cap: usize,
    buf: Mutex<Vec<u8>>,
}

impl ConsoleLog {
    pub fn new(cap: usize) -> Self {
        Self { cap, buf: Mutex::new(Vec::new()) }
    }

    pub fn append(&self, data: &[u8]) {
        let mut b = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        b.extend_from_slice(data);
        if b.len() > self.cap {
            // Drop a quarter more than needed, so appends do not shift the buffer each time.
            let drop = (b.len() - self.cap + self.cap / 4).min(b.len());
            b.drain(..drop);
        }
    }

    /// The log as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned()
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }
}

/// Copies a runtime's serial socket into `log` until it closes.
pub async fn follow(
    path: &Path,
    log: std::sync::Arc<ConsoleLog>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut stream = UnixStream::connect(path).await?;
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            log.append(&buf[..n]);
        }
    }))
}

/// Follows the serial console of `endpoints` into `log` (each task handed to `keep` as it
/// starts), and the firmware's debug port when its socket exists (a BIOS VM's): that one is
/// for diagnostics only, so a failure to reach it is logged, not fatal.
pub async fn follow_all(
    endpoints: &crate::runtime::Endpoints,
    log: &std::sync::Arc<ConsoleLog>,
    mut keep: impl FnMut(tokio::task::JoinHandle<()>),
) -> std::io::Result<()> {
    if let Some(serial) = &endpoints.serial {
        keep(follow(serial, std::sync::Arc::clone(log)).await?);
    }
    if let Some(port) = endpoints.firmware_log.as_ref().filter(|p| p.exists()) {
        match follow(port, std::sync::Arc::clone(log)).await {
            Ok(task) => keep(task),
            Err(e) => {
                tracing::warn!(port = %port.display(), "cannot read the firmware's debug port: {e}")
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_within_the_cap() {
        let log = ConsoleLog::new(100);
        for i in 0..50 {
            log.append(format!("line {i}\n").as_bytes());
        }
        let t = log.text();
        assert!(t.len() <= 100, "{}", t.len());
        assert!(t.ends_with("line 49\n"));
        assert!(!t.contains("line 1\n"));
        log.append(&[0xff, b'o', b'k']);
        assert!(log.text().ends_with("\u{fffd}ok"));
    }
}
