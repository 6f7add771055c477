//! Users and groups of the host, looked up as the node needs them.

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
