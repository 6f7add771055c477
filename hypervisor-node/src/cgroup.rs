//! A cgroup per VM, with memory, CPU and process limits, on cgroup v1 (these machines: a hybrid
//! layout with `/sys/fs/cgroup/{memory,cpu,pids}/`) or v2 (one unified tree).
//!
//! CPU: a VM uses at most as many host CPUs as it has vCPUs (its quota), and where VMs contend
//! (a node hands out several vCPUs per host CPU) each gets CPU time by its weight, its vCPUs
//! times the default weight: one busy desktop cannot starve the others.
//!
//! The VM process joins its group between `fork` and `exec` (the runtime writes `0` to the
//! pre-opened `cgroup.procs` files), so it never runs outside its limits. On v1, with
//! `parent = "auto"`, VM groups are made inside the node's own group of each controller, so a
//! node started by a supervisor with limits keeps its VMs under them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("no cgroup file system at {0} (neither v2's cgroup.controllers nor v1's memory/)")]
    NotMounted(PathBuf),
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cgroup {0} still has processes {1:?}")]
    Busy(PathBuf, Vec<u32>),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// What a VM may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub cpus: u32,
    pub pids: u32,
}

const CPU_PERIOD_US: u64 = 100_000;
/// A group's default CPU weight on v2 (`cpu.weight`, 1 to 10000) and on v1 (`cpu.shares`,
/// 2 to 262144): a VM's is its vCPUs times this.
const V2_WEIGHT: u64 = 100;
const V1_SHARES: u64 = 1024;

/// The CPU weight of a VM with `cpus` vCPUs on v2 (`cpu.weight`).
fn v2_weight(cpus: u32) -> u64 {
    (u64::from(cpus) * V2_WEIGHT).clamp(1, 10_000)
}

/// The CPU weight of a VM with `cpus` vCPUs on v1 (`cpu.shares`).
fn v1_shares(cpus: u32) -> u64 {
    (u64::from(cpus) * V1_SHARES).clamp(2, 262_144)
}
const V1_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// The directories and files that make one VM's group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPlan {
    /// `cgroup.subtree_control` files to enable controllers in (v2 only), top down.
    pub enable: Vec<PathBuf>,
    /// The VM's group, one per hierarchy (v1: memory, cpu, pids; v2: one).
    pub dirs: Vec<PathBuf>,
    /// Limit files and values, written after the groups exist.
    pub writes: Vec<(PathBuf, String)>,
}

/// The path of this process's group for `controller` (v1) or of the unified group (v2, the
/// `0::` line), from `/proc/self/cgroup`.
pub fn own_group(proc_self_cgroup: &str, controller: Option<&str>) -> Option<String> {
    proc_self_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = match controller {
            Some(c) => ctrls.split(',').any(|x| x == c),
            None => ctrls.is_empty(),
        };
        hit.then(|| path.to_owned())
    })
}

/// Plans the group of VM `vm` under `parent` (a path inside each hierarchy) with `limits`.
/// `parents` gives, per v1 controller, the parent path (they may differ with `auto`).
pub fn plan(
    version: CgroupVersion,
    root: &Path,
    parents: &[(String, String)],
    vm: &str,
    limits: Limits,
) -> CgroupPlan {
    let rel = |p: &str| p.trim_start_matches('/').to_owned();
    let mut out = CgroupPlan { enable: vec![], dirs: vec![], writes: vec![] };
    match version {
        CgroupVersion::V1 => {
            for (ctrl, parent) in parents {
                let dir = root.join(ctrl).join(rel(parent)).join(vm);
                match ctrl.as_str() {
                    "memory" => {
                        out.writes.push((
                            dir.join("memory.limit_in_bytes"),
                            limits.memory_bytes.to_string(),
                        ));
                    }
                    "cpu" => {
                        out.writes.push((dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string()));
                        out.writes.push((
                            dir.join("cpu.cfs_quota_us"),
                            (u64::from(limits.cpus) * CPU_PERIOD_US).to_string(),
                        ));
                        out.writes
                            .push((dir.join("cpu.shares"), v1_shares(limits.cpus).to_string()));
                    }
                    "pids" => out.writes.push((dir.join("pids.max"), limits.pids.to_string())),
                    _ => {}
                }
                out.dirs.push(dir);
            }
        }
        CgroupVersion::V2 => {
            let parent = parents.first().map_or("/atrium", |(_, p)| p.as_str());
            let mut at = root.to_path_buf();
            out.enable.push(at.join("cgroup.subtree_control"));
            for part in Path::new(&rel(parent)).components() {
                at = at.join(part);
                out.enable.push(at.join("cgroup.subtree_control"));
            }
            let dir = at.join(vm);
            out.writes.push((dir.join("memory.max"), limits.memory_bytes.to_string()));
            out.writes.push((
                dir.join("cpu.max"),
                format!("{} {CPU_PERIOD_US}", u64::from(limits.cpus) * CPU_PERIOD_US),
            ));
            out.writes.push((dir.join("cpu.weight"), v2_weight(limits.cpus).to_string()));
            out.writes.push((dir.join("pids.max"), limits.pids.to_string()));
            out.dirs.push(dir);
        }
    }
    out
}

/// Makes VM groups on this host.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    version: CgroupVersion,
    root: PathBuf,
    /// Per controller (v1) or one entry (v2): the parent path of VM groups.
    parents: Vec<(String, String)>,
}

impl CgroupManager {
    /// Detects v1 or v2 under `root`; `parent` is `auto` or an absolute group path.
    pub fn detect(root: &Path, parent: &str) -> Result<Self, CgroupError> {
        let version = if root.join("cgroup.controllers").exists() {
            CgroupVersion::V2
        } else if root.join("memory").is_dir() {
            CgroupVersion::V1
        } else {
            return Err(CgroupError::NotMounted(root.into()));
        };
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let parents = match version {
            CgroupVersion::V1 => V1_CONTROLLERS
                .iter()
                .map(|c| {
                    let p = if parent == "auto" {
                        let base = own_group(&own, Some(c)).unwrap_or_else(|| "/".into());
                        format!("{}/atrium", base.trim_end_matches('/'))
                    } else {
                        parent.to_owned()
                    };
                    ((*c).to_owned(), p)
                })
                .collect(),
            CgroupVersion::V2 => {
                let p = if parent == "auto" { "/atrium".to_owned() } else { parent.to_owned() };
                vec![(String::new(), p)]
            }
        };
        Ok(Self { version, root: root.into(), parents })
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Where VM groups go (for the log).
    pub fn describe(&self) -> String {
        let v = match self.version {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        };
        let parents: Vec<String> = self
            .parents
            .iter()
            .map(|(c, p)| if c.is_empty() { p.clone() } else { format!("{c}:{p}") })
            .collect();
        format!("cgroup {v} under {} ({})", self.root.display(), parents.join(", "))
    }

    /// Makes the group of VM `vm` with its limits.
    pub fn create(&self, vm: &str, limits: Limits) -> Result<VmCgroup, CgroupError> {
        let plan = plan(self.version, &self.root, &self.parents, vm, limits);
        for ctl in &plan.enable {
            if let Some(dir) = ctl.parent() {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            }
            let current = std::fs::read_to_string(ctl).unwrap_or_default();
            let missing: Vec<String> = ["memory", "cpu", "pids"]
                .iter()
                .filter(|c| !current.split_whitespace().any(|x| x == **c))
                .map(|c| format!("+{c}"))
                .collect();
            if !missing.is_empty() {
                std::fs::write(ctl, missing.join(" ")).map_err(io_err(ctl))?;
            }
        }
        let group = VmCgroup { dirs: plan.dirs.clone(), version: self.version };
        for dir in &plan.dirs {
            if let Err(e) = std::fs::create_dir_all(dir) {
                let _ = group.remove();
                return Err(CgroupError::Io { path: dir.clone(), source: e });
            }
        }
        for (file, value) in &plan.writes {
            if let Err(e) = std::fs::write(file, value) {
                let _ = group.remove();
                return Err(CgroupError::Io { path: file.clone(), source: e });
            }
        }
        Ok(group)
    }

    /// The existing group of VM `vm` (to clean up after a crash), without touching limits.
    pub fn existing(&self, vm: &str) -> VmCgroup {
        let dirs = plan(
            self.version,
            &self.root,
            &self.parents,
            vm,
            Limits { memory_bytes: 0, cpus: 1, pids: 1 },
        )
        .dirs;
        VmCgroup { dirs, version: self.version }
    }
}

/// One VM's group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmCgroup {
    dirs: Vec<PathBuf>,
    version: CgroupVersion,
}

impl VmCgroup {
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The `cgroup.procs` files, opened for writing: a child writes `0` to each between `fork`
    /// and `exec` to join the group.
    pub fn open_procs(&self) -> Result<Vec<File>, CgroupError> {
        self.dirs
            .iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|source| CgroupError::Io { path: p, source })
            })
            .collect()
    }

    /// The processes in the group.
    pub fn pids(&self) -> Vec<u32> {
        let mut all: Vec<u32> = self
            .dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<u32>>())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Memory charged to the group, in bytes.
    pub fn memory_usage(&self) -> Option<u64> {
        let file = match self.version {
            CgroupVersion::V1 => "memory.usage_in_bytes",
            CgroupVersion::V2 => "memory.current",
        };
        self.dirs
            .iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok()?.trim().parse().ok())
    }

    /// Ends any process still in the group and removes it.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let pids = self.pids();
        for pid in &pids {
            if let Ok(pid) = i32::try_from(*pid) {
                // SAFETY: kill has no memory-safety preconditions; the pids are members of a
                // group this node made for a VM that is being removed.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in &self.dirs {
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) => {
                        if Instant::now() > deadline {
                            let left = self.pids();
                            if left.is_empty() {
                                return Err(CgroupError::Io { path: dir.clone(), source: e });
                            }
                            return Err(CgroupError::Busy(dir.clone(), left));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { memory_bytes: 768 << 20, cpus: 2, pids: 512 };

    #[test]
    fn v1_groups_per_controller_with_their_limit_files() {
        let parents: Vec<(String, String)> = V1_CONTROLLERS
            .iter()
            .map(|c| {
                (
                    (*c).to_owned(),
                    if *c == "memory" { "/job/7/atrium".into() } else { "/atrium".into() },
                )
            })
            .collect();
        let p = plan(CgroupVersion::V1, Path::new("/sys/fs/cgroup"), &parents, "vm-1", LIMITS);
        assert!(p.enable.is_empty());
        assert_eq!(
            p.dirs,
            [
                PathBuf::from("/sys/fs/cgroup/memory/job/7/atrium/vm-1"),
                PathBuf::from("/sys/fs/cgroup/cpu/atrium/vm-1"),
                PathBuf::from("/sys/fs/cgroup/pids/atrium/vm-1"),
            ]
        );
        let w: Vec<(String, &str)> =
            p.writes.iter().map(|(f, v)| (f.display().to_string(), v.as_str())).collect();
        assert!(w.contains(&(
            "/sys/fs/cgroup/memory/job/7/atrium/vm-1/memory.limit_in_bytes".into(),
            "805306368"
        )));
        assert!(w.contains(&("/sys/fs/cgroup/cpu/atrium/vm-1/cpu.cfs_quota_us".into(), "200000")));
        assert!(w.contains(&("/sys/fs/cgroup/cpu/atrium/vm-1/cpu.cfs_period_us".into(), "100000")));
        assert!(w.contains(&("/sys/fs/cgroup/cpu/atrium/vm-1/cpu.shares".into(), "2048")));
        assert!(w.contains(&("/sys/fs/cgroup/pids/atrium/vm-1/pids.max".into(), "512")));
        assert!(
            !w.iter().any(|(f, _)| f.ends_with("memory.max")),
            "memory.max does not exist on v1"
        );
    }

    #[test]
    fn v2_one_group_and_controllers_enabled_top_down() {
        let p = plan(
            CgroupVersion::V2,
            Path::new("/sys/fs/cgroup"),
            &[(String::new(), "/atrium/vms".into())],
            "vm-2",
            LIMITS,
        );
        assert_eq!(p.dirs, [PathBuf::from("/sys/fs/cgroup/atrium/vms/vm-2")]);
        assert_eq!(
            p.enable,
            [
                PathBuf::from("/sys/fs/cgroup/cgroup.subtree_control"),
                PathBuf::from("/sys/fs/cgroup/atrium/cgroup.subtree_control"),
                PathBuf::from("/sys/fs/cgroup/atrium/vms/cgroup.subtree_control"),
            ]
        );
        let w: Vec<(String, &str)> =
            p.writes.iter().map(|(f, v)| (f.display().to_string(), v.as_str())).collect();
        assert!(w.contains(&("/sys/fs/cgroup/atrium/vms/vm-2/memory.max".into(), "805306368")));
        assert!(w.contains(&("/sys/fs/cgroup/atrium/vms/vm-2/cpu.max".into(), "200000 100000")));
        assert!(w.contains(&("/sys/fs/cgroup/atrium/vms/vm-2/cpu.weight".into(), "200")));
    }

    #[test]
    fn cpu_weights_grow_with_vcpus_within_the_kernels_ranges() {
        assert_eq!((v2_weight(1), v2_weight(4)), (100, 400));
        assert_eq!((v1_shares(1), v1_shares(4)), (1024, 4096));
        assert_eq!((v2_weight(0), v1_shares(0)), (1, 2));
        assert_eq!((v2_weight(u32::MAX), v1_shares(u32::MAX)), (10_000, 262_144));
    }

    #[test]
    fn finds_the_own_group_per_controller() {
        let s = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/51\n2:cpu,cpuacct:/svc\n0::/unified\n";
        assert_eq!(own_group(s, Some("memory")).as_deref(), Some("/process_api/51"));
        assert_eq!(own_group(s, Some("cpu")).as_deref(), Some("/svc"));
        assert_eq!(own_group(s, Some("pids")).as_deref(), Some("/"));
        assert_eq!(own_group(s, None).as_deref(), Some("/unified"));
        assert_eq!(own_group(s, Some("blkio")), None);
    }

    #[test]
    fn detects_the_version_from_the_mount() {
        let d = std::env::temp_dir().join(format!("atrium-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        assert!(matches!(CgroupManager::detect(&d, "auto"), Err(CgroupError::NotMounted(_))));
        std::fs::create_dir_all(d.join("memory")).expect("mkdir");
        assert_eq!(CgroupManager::detect(&d, "/atrium").expect("v1").version(), CgroupVersion::V1);
        std::fs::write(d.join("cgroup.controllers"), "cpu memory pids").expect("w");
        let m = CgroupManager::detect(&d, "auto").expect("v2");
        assert_eq!(m.version(), CgroupVersion::V2);
        assert!(m.describe().contains("/atrium"));
        std::fs::remove_dir_all(&d).expect("cleanup");
    }
}
