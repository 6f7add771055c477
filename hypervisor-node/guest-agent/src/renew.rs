//! A clone made its own ([`atrium_protocol::agent::HostMessage::Renew`]): a desktop restored
//! from a template VM starts with the template's random state, clock, machine-id and host
//! name. The kernel reseeds its random numbers itself when the VM's generation id changes
//! (QEMU's `vmgenid`); the agent adds the host's random bytes to the pool too (credited, so
//! the pool counts as seeded whatever the kernel), sets the clock, and makes a new machine-id
//! (from the pool, after the host's bytes) and takes the host name.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use atrium_protocol::agent::{RENEW_ENTROPY, check_hostname};

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;

/// This clone's renewal, once done: its host name and machine-id. The host sends its renewal
/// again until it hears back (one sent just before a new hello is not read); a repeat takes the
/// host's new bytes and clock and keeps the machine-id.
#[derive(Debug, Default)]
pub struct Renewal(Option<(String, String)>);

impl Renewal {
    /// Renews (or renews again); the machine-id, and whether it is new.
    pub fn apply(
        &mut self,
        entropy: &[u8],
        time_ms: u64,
        hostname: &str,
    ) -> Result<(String, bool), String> {
        if let Some((h, id)) = &self.0
            && h == hostname
        {
            refresh(entropy, time_ms)?;
            return Ok((id.clone(), false));
        }
        let id = renew(entropy, time_ms, hostname)?;
        self.0 = Some((hostname.to_owned(), id.clone()));
        Ok((id, true))
    }
}

/// Makes this machine its own; the new machine-id.
pub fn renew(entropy: &[u8], time_ms: u64, hostname: &str) -> Result<String, String> {
    check_hostname(hostname)?;
    refresh(entropy, time_ms)?;
    let id = machine_id().map_err(|e| format!("making a machine-id: {e}"))?;
    write_replacing(Path::new("/etc/machine-id"), format!("{id}\n").as_bytes())
        .map_err(|e| format!("writing /etc/machine-id: {e}"))?;
    set_hostname(hostname).map_err(|e| format!("setting the host name: {e}"))?;
    Ok(id)
}

/// The host's random bytes into the pool and its clock (a renewal repeated does only this).
fn refresh(entropy: &[u8], time_ms: u64) -> Result<(), String> {
    if !RENEW_ENTROPY.contains(&entropy.len()) {
        return Err(format!(
            "{} random bytes: a renewal takes {} to {}",
            entropy.len(),
            RENEW_ENTROPY.start(),
            RENEW_ENTROPY.end()
        ));
    }
    add_entropy(entropy).map_err(|e| format!("adding the host's random bytes: {e}"))?;
    set_clock(time_ms).map_err(|e| format!("setting the clock: {e}"))
}

/// Mixes `bytes` into the kernel's pool, credited with 8 bits each.
fn add_entropy(bytes: &[u8]) -> io::Result<()> {
    let urandom = std::fs::OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let len = i32::try_from(bytes.len()).map_err(|_| io::Error::other("too many bytes"))?;
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&(len * 8).to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(bytes);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info: two ints and buf_size bytes after them,
    // all within `info`, which lives across the call; the kernel writes nothing back.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_clock(time_ms: u64) -> io::Result<()> {
    let secs = i64::try_from(time_ms / 1000).map_err(|_| io::Error::other("time out of range"))?;
    let nanos = i64::try_from((time_ms % 1000) * 1_000_000).expect("under a second");
    let ts = libc::timespec { tv_sec: secs, tv_nsec: nanos };
    // SAFETY: clock_settime reads the timespec it is given, which lives across the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// 128 random bits as 32 hex digits, marked as a version 4 UUID (as systemd makes them).
fn machine_id() -> io::Result<String> {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if usize::try_from(n).ok() != Some(b.len()) {
        return Err(io::Error::last_os_error());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: sethostname reads `name.len()` bytes from the pointer.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    write_replacing(Path::new("/etc/hostname"), format!("{name}\n").as_bytes())
}

/// Writes `path` whole: a new file renamed over the old one.
fn write_replacing(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("atrium-new");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_version_4_and_new_each_time() {
        let a = machine_id().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(&a[12..13], "4");
        assert_ne!(a, machine_id().unwrap());
    }

    #[test]
    fn bad_renewals_change_nothing() {
        assert!(renew(&[0; 8], 0, "desk").unwrap_err().contains("8 random bytes"));
        assert!(renew(&[0; 32], 0, "Not A Name").unwrap_err().contains("not a host name"));
    }
}
