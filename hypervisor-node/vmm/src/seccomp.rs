//! Seccomp filters, one per kind of thread, installed by each thread for itself once its
//! set-up is done and before it touches anything the guest controls (as Firecracker does).
//!
//! A guest that takes over a thread through a device bug gets only the system calls that
//! thread needs to run: no `open`, `socket`, `connect`, `execve`, `ptrace` or `mount` on any of
//! them, and `ioctl` only with the requests that thread makes. Anything else kills the whole
//! VMM process (`SECCOMP_RET_KILL_PROCESS`): a VM that stops is better than one that escapes.
//! The lists were taken from `strace -ff` of the VMM through every test that drives it.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_dirty_log, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_translation, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};

const KVMIO: u32 = 0xAE;
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_translation);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);
// A snapshot: the vCPU thread reads its vCPU, the main thread the VM's in-kernel devices.
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);

/// The threads of a VMM process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs one vCPU: `KVM_RUN`, and the devices a vCPU exit reaches (registers, and queues
    /// when KVM has no ioeventfd).
    Vcpu,
    /// The device event loop: queue notifications, disk I/O, the display and agent sockets.
    Devices,
    /// The control socket: reads requests, hands them to the main thread, writes answers.
    Control,
    /// The main thread once the VM runs: commands to the vCPUs, then the teardown.
    Main,
}

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("building the {0:?} thread's seccomp filter: {1}")]
    Build(ThreadKind, String),
    #[error("installing the {0:?} thread's seccomp filter: {1}")]
    Install(ThreadKind, seccompiler::Error),
}

/// Installs `kind`'s filter on the calling thread (and on threads it creates later).
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let program = filter(kind)?;
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install(kind, e))
}

/// Installs `kind`'s filter, or stops the process: a thread never goes on unfiltered.
pub fn install_or_abort(kind: ThreadKind) {
    if let Err(e) = install(kind) {
        tracing::error!(error = %e, "the VMM stops rather than run a thread without its filter");
        std::process::abort();
    }
}

/// `kind`'s filter as a BPF program.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let bad = |e: &dyn std::fmt::Display| SeccompError::Build(kind, e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in COMMON {
        rules.insert(nr, Vec::new());
    }
    let extra: &[&[i64]] = match kind {
        ThreadKind::Vcpu => &[DISK_IO],
        ThreadKind::Devices => &[DISK_IO, SOCKETS],
        ThreadKind::Control => &[SOCKETS],
        ThreadKind::Main => &[MAIN],
    };
    for &nr in extra.iter().copied().flatten() {
        rules.insert(nr, Vec::new());
    }
    let ioctls: Vec<u64> = match kind {
        ThreadKind::Vcpu => vec![
            KVM_RUN(),
            KVM_GET_REGS(),
            KVM_SET_REGS(),
            KVM_TRANSLATE(),
            KVM_GET_VCPU_EVENTS(),
            KVM_SET_VCPU_EVENTS(),
            KVM_GET_SREGS(),
            KVM_GET_MSRS(),
            KVM_GET_LAPIC(),
            KVM_GET_MP_STATE(),
            KVM_GET_DEBUGREGS(),
            KVM_GET_XSAVE(),
            KVM_GET_XCRS(),
        ],
        ThreadKind::Devices => {
            vec![KVM_GET_DIRTY_LOG(), libc::FIONBIO, libc::FIOCLEX]
        }
        ThreadKind::Control => vec![libc::FIONBIO, libc::FIOCLEX],
        ThreadKind::Main => vec![KVM_GET_IRQCHIP(), KVM_GET_PIT2(), KVM_GET_CLOCK()],
    };
    let mut ioctl_rules = Vec::new();
    for request in ioctls {
        let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
            .map_err(|e| bad(&e))?;
        ioctl_rules.push(SeccompRule::new(vec![cond]).map_err(|e| bad(&e))?);
    }
    if !ioctl_rules.is_empty() {
        rules.insert(libc::SYS_ioctl, ioctl_rules);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| bad(&e))?;
    filter.try_into().map_err(|e: seccompiler::BackendError| bad(&e))
}

/// What every thread does: memory, locks and channels, signals (the vCPU kick), its own
/// exit, logging to stderr, and the eventfds it was given.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Disk requests, served by the vCPU thread when KVM has no ioeventfd for the queue.
const DISK_IO: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_lseek,
];

/// Sockets: accepting, reading and writing connections (the display, agent and control
/// sockets), waiting on them.
const SOCKETS: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
];

/// The teardown removes the VM's sockets; a snapshot writes the files opened at start
/// (positioned reads and writes, `SEEK_DATA` over the memory's memfd, sizes, syncs).
const MAIN: &[i64] = &[
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_ftruncate,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a child process with `kind`'s filter installed; returns how it ended.
    fn in_child(kind: ThreadKind, f: fn() -> i32) -> libc::c_int {
        let program = filter(kind).expect("the filter builds");
        // SAFETY: the child only installs the prepared filter, runs `f` (plain system calls)
        // and exits with `_exit`: nothing that needs the parent's other threads.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            if seccompiler::apply_filter(&program).is_err() {
                // SAFETY: `_exit` ends the child without running the parent's handlers.
                unsafe { libc::_exit(100) };
            }
            let code = f();
            // SAFETY: as above.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        assert_eq!(r, pid);
        status
    }

    #[test]
    fn every_filter_builds() {
        for kind in [ThreadKind::Vcpu, ThreadKind::Devices, ThreadKind::Control, ThreadKind::Main] {
            assert!(!filter(kind).unwrap().is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn allowed_calls_work_and_anything_else_kills_the_process() {
        // A thread that keeps to its list lives on.
        let status = in_child(ThreadKind::Vcpu, || {
            // SAFETY: getpid has no preconditions.
            let _ = unsafe { libc::getpid() };
            7
        });
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7, "{status:#x}");
        // Opening a file, making a socket or starting a program is the end of it.
        type Attempt = fn() -> i32;
        let attempts: [(ThreadKind, Attempt); 5] = [
            (ThreadKind::Vcpu, || {
                // SAFETY: a valid NUL-terminated path.
                unsafe { libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY) }
            }),
            (ThreadKind::Devices, || {
                // SAFETY: plain arguments.
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) }
            }),
            (ThreadKind::Control, || {
                // SAFETY: a valid NUL-terminated path and a null argv/envp are allowed.
                unsafe { libc::execve(c"/bin/true".as_ptr(), std::ptr::null(), std::ptr::null()) }
            }),
            (ThreadKind::Main, || {
                // SAFETY: a valid NUL-terminated path. A snapshot writes files opened at start.
                unsafe {
                    libc::open(c"/tmp/atrium-snapshot".as_ptr(), libc::O_RDWR | libc::O_CREAT)
                }
            }),
            (ThreadKind::Main, || {
                // SAFETY: plain arguments; the request does not matter, the filter decides.
                unsafe { libc::ioctl(0, libc::FIONBIO, std::ptr::null_mut::<libc::c_int>()) }
            }),
        ];
        for (kind, attempt) in attempts {
            let status = in_child(kind, attempt);
            assert!(
                libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
                "{kind:?}: {status:#x}"
            );
        }
        // A vCPU thread's ioctls are its own: a dirty-log read (the display's) is refused.
        let status = in_child(ThreadKind::Vcpu, || {
            // SAFETY: plain arguments; the filter refuses before the kernel looks at them.
            unsafe { libc::ioctl(0, KVM_GET_DIRTY_LOG(), 0usize) }
        });
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS);
    }
}
