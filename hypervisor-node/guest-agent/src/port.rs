//! Finding and opening the agent's virtio-serial port.
//!
//! udev makes `/dev/virtio-ports/<name>` links; a minimal image has no udev, so the agent also
//! looks the name up in sysfs (`/sys/class/virtio-ports/vportNpM/name`) and opens `/dev/vportNpM`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use atrium_protocol::agent::PORT_NAME;

/// Opens `explicit`, or the port named [`PORT_NAME`], retrying until `timeout` (the virtio
/// driver may still be probing when the agent starts).
pub fn open(explicit: Option<&Path>, timeout: Duration) -> io::Result<File> {
    let start = Instant::now();
    loop {
        let found = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => find(Path::new("/dev/virtio-ports"), Path::new("/sys/class/virtio-ports"))?,
        };
        if let Some(path) = found {
            match OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open(&path)
            {
                Ok(f) => return Ok(f),
                Err(e) if start.elapsed() > timeout => {
                    return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
                }
                Err(_) => {}
            }
        } else if start.elapsed() > timeout {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no virtio-serial port named {PORT_NAME}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The device of the port named [`PORT_NAME`], from the udev link or from sysfs.
fn find(dev_links: &Path, sysfs: &Path) -> io::Result<Option<PathBuf>> {
    let link = dev_links.join(PORT_NAME);
    if link.exists() {
        return Ok(Some(link));
    }
    let entries = match std::fs::read_dir(sysfs) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            return Ok(Some(Path::new("/dev").join(entry.file_name())));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_by_name_in_sysfs() {
        let dir = std::env::temp_dir().join(format!("agent-port-{}", std::process::id()));
        let sys = dir.join("sys");
        for (port, name) in [("vport0p1", "org.other.0"), ("vport1p2", PORT_NAME)] {
            std::fs::create_dir_all(sys.join(port)).expect("mkdir");
            std::fs::write(sys.join(port).join("name"), format!("{name}\n")).expect("write");
        }
        let found = find(&dir.join("no-links"), &sys).expect("scan");
        assert_eq!(found, Some(PathBuf::from("/dev/vport1p2")));
        std::fs::remove_file(sys.join("vport1p2").join("name")).expect("rm");
        assert_eq!(find(&dir.join("no-links"), &sys).expect("scan"), None);
        assert_eq!(find(&dir.join("no-links"), &dir.join("absent")).expect("scan"), None);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
