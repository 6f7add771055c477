//! Users and groups of the host, looked up as the node needs them, and the ids handed to VMs
//! that run as their own user.

use std::sync::Arc;

/// A group's id: a number as written, else looked up in the group database.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `group` is a plain C struct of integers and pointers; all-zero is a valid value
    // (null pointers), and getgrnam_r fills it before it is read.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into `grp` and `buf` (sized as passed) and sets `out` to `&grp`
    // or null; all pointers are valid for the call, and nothing is kept past it.
    let r =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    (r == 0 && !out.is_null()).then_some(grp.gr_gid)
}

/// The user and group ids handed out to VMs (`run_as = "per-vm"`), one per running VM.
#[derive(Debug)]
pub(crate) struct UidPool {
    pub(crate) range: std::ops::RangeInclusive<u32>,
    pub(crate) used: std::sync::Mutex<std::collections::BTreeSet<u32>>,
}

/// A VM's own uid (and gid, the same number), given back to the pool when the VM is dropped.
#[derive(Debug)]
pub struct UidLease {
    pool: Arc<UidPool>,
    pub uid: u32,
}

impl UidPool {
    /// The lowest free id, or `None` when every id in the range is in use.
    pub(crate) fn lease(self: &Arc<Self>) -> Option<UidLease> {
        let mut used = self.used.lock().expect("uid pool lock");
        let uid = self.range.clone().find(|u| !used.contains(u))?;
        used.insert(uid);
        Some(UidLease { pool: Arc::clone(self), uid })
    }
}

impl UidPool {
    /// Id `uid` again (a VM taken back after a node restart), unless it is outside the range
    /// or in use.
    pub(crate) fn claim(self: &Arc<Self>, uid: u32) -> Option<UidLease> {
        if !self.range.contains(&uid) {
            return None;
        }
        let fresh = self.used.lock().expect("uid pool lock").insert(uid);
        fresh.then(|| UidLease { pool: Arc::clone(self), uid })
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        self.pool.used.lock().expect("uid pool lock").remove(&self.uid);
    }
}

/// An unprivileged user to run VMs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Looks a user up in the password database.
pub(crate) fn lookup_user(name: &str) -> Option<RunAs> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut pwd: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes into `pwd` and `buf` (sized as passed) and sets `out` to `&pwd`
    // or null; all pointers are valid for the call, and nothing is kept past it.
    let r =
        unsafe { libc::getpwnam_r(c.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        return None;
    }
    Some(RunAs { name: name.to_owned(), uid: pwd.pw_uid, gid: pwd.pw_gid })
}

fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: `passwd` is a plain C struct of integers and pointers; all-zero is a valid value
    // (null pointers), and getpwnam_r fills it before it is read.
    unsafe { std::mem::zeroed() }
}
