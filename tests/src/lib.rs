//! The test harness for flows across Atrium's components. Each service a test needs is started
//! by the harness itself on a loopback port, in a temporary directory, and stopped when its
//! handle drops.
//!
//! Test groups that need something from the machine (`ldap`, `postgres`, `qemu`, `kvm`,
//! `browser`, `containers`) never skip silently: a missing prerequisite fails the test, unless the group is
//! named in `ATRIUM_SKIP` (set by `scripts/test.sh --skip GROUP,...`), and then the test prints
//! what it skipped and returns.

pub mod broker;
pub mod browser;
pub mod clamd;
pub mod display;
pub mod fake_node;
pub mod https;
pub mod node;
pub mod oidc;
pub mod pki;
pub mod postgres;
pub mod procstat;
pub mod rfb;
pub mod screen;
pub mod slapd;
pub mod stack;
pub mod static_files;
pub mod tier;
pub mod util;
pub mod vmm;

pub use util::{Group, TempDir, bin_path, free_port, skip, wait_for, workspace_root};
