//! `atrium-node serve --config FILE`: one TOML file, every key overridable from the environment
//! as `ATRIUM_NODE_<KEY>` (keys of `[node]`) or `ATRIUM_NODE_<SECTION>_<KEY>` (other sections).
//! Documented in `docs/configuration.md` (section "Node (atrium-node)").

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use atrium_protocol::config::{EnvKeys, EnvSpec};
use serde::{Deserialize, Serialize};

pub use atrium_protocol::config::ConfigError;

/// A value the node cannot work with, naming its key.
fn invalid(key: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid(format!("{key}: {message}"))
}

pub use atrium_protocol::secret::Secret;

/// Which runtime a VM spec without `runtime` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultRuntime {
    /// `qemu` for now (see [`crate::kvm::default_runtime`]).
    Auto,
    Qemu,
    Builtin,
}

/// What the node does with its VMs when it is stopped (SIGTERM, SIGINT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmsAtStop {
    /// Leave them running: the node's next start takes them back, so restarting or upgrading
    /// the node ends no desktop. (VMs of a runtime that cannot be taken back are ended.)
    Keep,
    /// End and delete them all (a node taken out of service, a development stack).
    End,
}

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccelChoice {
    /// KVM where `/dev/kvm` has hardware virtualization, else TCG.
    Auto,
    Kvm,
    Tcg,
}

/// The absolute pointer device a QEMU VM gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pointer {
    VirtioTablet,
    UsbTablet,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Stable node id (default: the host name).
    pub id: Option<String>,
    pub listen: SocketAddr,
    /// The API's base URL as the broker reaches it (default: `http://<listen>`).
    pub api_url: Option<String>,
    /// The display proxy beside this node, as browsers reach it.
    pub display_url: Option<String>,
    /// Gone: the node has its own key and checks the broker's signature. Read only to say so.
    #[serde(skip_serializing)]
    pub token: Option<Secret>,
    #[serde(skip_serializing)]
    pub token_file: Option<PathBuf>,
    /// The local socket the display proxy beside the node reads displays and clipboards on
    /// (default `<state_dir>/api.sock`). Mode 0660: root and `local_socket_group` may use it.
    pub local_socket: Option<PathBuf>,
    /// The group that may use the local socket (the display proxy's, e.g. `atrium-display`).
    pub local_socket_group: Option<String>,
    /// PEM certificate chain the API presents over TLS (reloaded on SIGHUP and when it changes);
    /// with `tls_key`. Without them the API is plain HTTP, which the broker accepts on a
    /// loopback address only.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub images_dir: PathBuf,
    /// VM folders (sockets, overlays) and persistent disks.
    pub state_dir: PathBuf,
    pub default_runtime: DefaultRuntime,
    /// A VM whose agent has not said ready by then is failed.
    pub ready_timeout_secs: u64,
    /// How long a stop waits for the guest to power off before the VM is ended.
    pub stop_grace_secs: u64,
    /// Interval of the health ping to each guest agent.
    pub ping_interval_secs: u64,
    /// What happens to running VMs when the node is stopped.
    pub vms_at_stop: VmsAtStop,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            id: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            api_url: None,
            display_url: None,
            token: None,
            token_file: None,
            local_socket: None,
            local_socket_group: None,
            tls_cert: None,
            tls_key: None,
            images_dir: PathBuf::from("/var/lib/atrium-node/images"),
            state_dir: PathBuf::from("/var/lib/atrium-node/state"),
            default_runtime: DefaultRuntime::Auto,
            ready_timeout_secs: 300,
            stop_grace_secs: 10,
            ping_interval_secs: 15,
            vms_at_stop: VmsAtStop::Keep,
        }
    }
}

/// vCPUs per host CPU when `[capacity] vcpu_overcommit` is unset: what VDI hosts plan for
/// office desktops (a few per core, not one).
pub const DEFAULT_VCPU_OVERCOMMIT: u32 = 4;
/// The most vCPUs per host CPU a node hands out.
pub const MAX_VCPU_OVERCOMMIT: u32 = 32;
/// The most guest memory a node hands out per MiB it has for VMs.
pub const MAX_MEMORY_OVERCOMMIT: u32 = 16;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacitySection {
    /// vCPUs the node hands out (default: the host's CPUs times `vcpu_overcommit`).
    pub vcpus: Option<u32>,
    /// vCPUs handed out per host CPU when `vcpus` is unset (default
    /// [`DEFAULT_VCPU_OVERCOMMIT`]): desktops are idle most of the time, and each VM's CPU
    /// weight keeps a busy one from starving the others.
    pub vcpu_overcommit: Option<u32>,
    /// Guest memory the node hands out (default: host memory less `reserved_memory_mib`).
    pub memory_mib: Option<u64>,
    /// Host memory kept for the host itself and for per-VM overhead when `memory_mib` is unset.
    pub reserved_memory_mib: Option<u64>,
    /// Guest memory handed out per MiB of `memory_mib` (default 1: none beyond it). Above 1 the
    /// node also admits a VM only while what its VMs really use (PSS, shared pages counted
    /// once, and the templates' memory) leaves room for the new VM's share: idle desktops,
    /// clones above all, use a fraction of their guest memory.
    pub memory_overcommit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QemuSection {
    pub binary: PathBuf,
    pub img_binary: PathBuf,
    pub accel: AccelChoice,
    pub pointer: Pointer,
    /// Memory the VM's cgroup allows beyond guest memory (QEMU itself, TCG's code cache).
    pub memory_overhead_mib: u64,
    /// TCG translation cache size (QEMU's default is 1 GiB of address space per VM).
    pub tcg_tb_size_mib: u32,
    /// Who QEMU drops to once it has opened its files (`-runas`), so that a guest that escapes
    /// into QEMU is not root on the host: `per-vm` (each VM its own user and group, numbered
    /// from `vm_uids`, so one escaped VM cannot touch another), a user name (one system user
    /// for all VMs, created when missing), or empty (QEMU keeps the node's user). Applies when
    /// the node runs as root.
    pub run_as: String,
    /// The user and group ids `run_as = "per-vm"` hands out, `FIRST-LAST` (no account is made:
    /// pick numbers no account on the host uses).
    pub vm_uids: String,
    /// Where OVMF's files are (`OVMF_CODE_4M.fd` and the rest, Debian's `ovmf`): the UEFI
    /// firmware of images booted by firmware.
    pub ovmf_dir: PathBuf,
    /// `swtpm` (Debian's `swtpm`): the virtual TPM of images imported with `--tpm`.
    pub swtpm: PathBuf,
}

/// What `qemu.run_as` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAsChoice {
    /// QEMU keeps the node's user.
    Node,
    /// Each VM its own uid and gid, from this range.
    PerVm(std::ops::RangeInclusive<u32>),
    /// One named system user for all VMs.
    User(String),
}

impl QemuSection {
    /// `run_as` and `vm_uids`, read.
    pub fn run_as_choice(&self) -> Result<RunAsChoice, String> {
        let name = self.run_as.trim();
        if name.is_empty() {
            return Ok(RunAsChoice::Node);
        }
        if name != "per-vm" {
            return Ok(RunAsChoice::User(name.to_owned()));
        }
        let bad = || {
            format!("qemu.vm_uids must be FIRST-LAST (e.g. 200000-299999), not {:?}", self.vm_uids)
        };
        let (a, b) = self.vm_uids.split_once('-').ok_or_else(bad)?;
        let (first, last): (u32, u32) =
            (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if first < 1000 || last < first || last == u32::MAX {
            return Err(format!(
                "qemu.vm_uids {first}-{last}: the first must be at least 1000 (no system account) \
                 and the last not below it"
            ));
        }
        Ok(RunAsChoice::PerVm(first..=last))
    }
}

impl Default for QemuSection {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("qemu-system-x86_64"),
            img_binary: PathBuf::from("qemu-img"),
            accel: AccelChoice::Auto,
            pointer: Pointer::VirtioTablet,
            memory_overhead_mib: 256,
            tcg_tb_size_mib: 64,
            run_as: "per-vm".into(),
            vm_uids: "200000-299999".into(),
            ovmf_dir: PathBuf::from("/usr/share/OVMF"),
            swtpm: PathBuf::from("swtpm"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupSection {
    /// Put each VM in its own cgroup with memory, CPU and process limits.
    pub enabled: bool,
    /// Where the cgroup file systems are mounted.
    pub root: PathBuf,
    /// The group VM groups are made under: `auto` (on cgroup v1, inside the node's own group of
    /// each controller; on v2, `/atrium`) or a path such as `/atrium`.
    pub parent: String,
    /// Most processes and threads a VM may have.
    pub pids_max: u32,
}

impl Default for CgroupSection {
    fn default() -> Self {
        Self {
            enabled: true,
            root: PathBuf::from("/sys/fs/cgroup"),
            parent: "auto".into(),
            pids_max: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// The broker's base URL; when set, the node registers and heartbeats there.
    pub url: Option<String>,
    /// Heartbeat interval until the broker names one.
    pub heartbeat_secs: u64,
    /// Longest wait between retries while the broker cannot be reached.
    pub max_backoff_secs: u64,
    pub timeout_secs: u64,
    /// The one-time token an administrator created for this node (portal, admin API or
    /// `atrium-broker enrol-token`): the node enrols with it when the broker does not know its
    /// key yet. Not needed once enrolled.
    pub enrolment_token: Option<Secret>,
    /// File whose first line is `enrolment_token`, instead of it.
    pub enrolment_token_file: Option<PathBuf>,
    /// Keys the node API trusts besides the broker's (which arrive with each heartbeat reply):
    /// a JSON list of `{"kid": ..., "x": ...}` (Ed25519, base64url), for an operator's own
    /// tooling. Calls signed by them must still name this node and this request.
    pub trusted_keys_file: Option<PathBuf>,
    /// PEM bundle of the CA that issued the broker's certificate (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Allows `url = "http://..."` to a loopback address (one host, tests). Any other plain URL
    /// is refused.
    pub plain_http_loopback: bool,
}

impl Default for BrokerSection {
    fn default() -> Self {
        Self {
            url: None,
            heartbeat_secs: 10,
            max_backoff_secs: 30,
            timeout_secs: 5,
            enrolment_token: None,
            enrolment_token_file: None,
            trusted_keys_file: None,
            ca_file: None,
            plain_http_loopback: false,
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub capacity: CapacitySection,
    pub qemu: QemuSection,
    pub cgroup: CgroupSection,
    pub broker: BrokerSection,
}

/// `ATRIUM_NODE_<KEY>` for keys of `[node]`, `ATRIUM_NODE_<SECTION>_<KEY>` for the others; a
/// variable that names no key is an error.
const ENV: EnvSpec<'static> = EnvSpec {
    prefix: "ATRIUM_NODE_",
    keys: EnvKeys::Bare { bare: "node", sections: &["capacity", "qemu", "cgroup", "broker"] },
};

impl NodeConfig {
    /// Reads `path` (when given), applies `ATRIUM_NODE_*` variables from the environment, and
    /// checks the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|source| ConfigError::Read { path: p.into(), source })?,
            None => String::new(),
        };
        let name = path.map_or_else(|| "(no file)".to_owned(), |p| p.display().to_string());
        Self::from_parts(&name, &text, std::env::vars())
    }

    /// The same, from a file's text and a set of variables (for tests).
    pub fn from_parts(
        name: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let config: Self = atrium_protocol::config::from_text(Path::new(name), text, ENV, &env)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let n = &self.node;
        if let Some(id) = &n.id {
            atrium_protocol::node::validate_name("node.id", id, 128)
                .map_err(|e| invalid("node.id", e.message))?;
        }
        if n.token.is_some() || n.token_file.is_some() {
            return Err(invalid(
                "node.token",
                "node.token and node.token_file are no longer used: the node enrols with a \
                 one-time token (broker.enrolment_token) and signs with its own key, and accepts \
                 calls the broker signed (docs/node.md, \"Enrolment\"); remove them",
            ));
        }
        // Unix socket paths are at most 107 bytes: <state_dir>/templates/<id>/serial.sock (a
        // template's, longer than a VM's under vms/).
        let longest =
            n.state_dir.as_os_str().len() + "/templates/vm-0123456789abcdef/serial.sock".len();
        if longest > 107 {
            return Err(invalid(
                "node.state_dir",
                format!(
                    "{} is too long: VM socket paths under it would pass the 107-byte limit",
                    n.state_dir.display()
                ),
            ));
        }
        if !n.state_dir.is_absolute() || !n.images_dir.is_absolute() {
            return Err(invalid(
                "node.state_dir",
                "node.state_dir and node.images_dir must be absolute paths",
            ));
        }
        for (key, secs) in [
            ("node.ready_timeout_secs", n.ready_timeout_secs),
            ("node.ping_interval_secs", n.ping_interval_secs),
            ("broker.heartbeat_secs", self.broker.heartbeat_secs),
            ("broker.max_backoff_secs", self.broker.max_backoff_secs),
            ("broker.timeout_secs", self.broker.timeout_secs),
        ] {
            if secs == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if n.tls_cert.is_some() != n.tls_key.is_some() {
            return Err(invalid("node.tls_cert", "set node.tls_cert and node.tls_key together"));
        }
        if let Some(url) = &self.broker.url {
            if url.starts_with("ws://") || url.starts_with("wss://") {
                return Err(invalid("broker.url", format!("{url:?} is not an http(s):// URL")));
            }
            atrium_door::client::check_url(url, self.broker.plain_http_loopback)
                .map_err(|e| invalid("broker.url", format!("{e} (broker.plain_http_loopback)")))?;
            if n.display_url.is_none() {
                return Err(invalid(
                    "node.display_url",
                    "must be set when broker.url is (the broker hands it to browsers)",
                ));
            }
        }
        self.qemu.run_as_choice().map_err(|e| invalid("qemu.run_as", e))?;
        if let Some(o) = self.capacity.vcpu_overcommit
            && !(1..=MAX_VCPU_OVERCOMMIT).contains(&o)
        {
            return Err(invalid(
                "capacity.vcpu_overcommit",
                format!("must be 1 to {MAX_VCPU_OVERCOMMIT} vCPUs per host CPU, not {o}"),
            ));
        }
        if let Some(o) = self.capacity.memory_overcommit
            && !(1..=MAX_MEMORY_OVERCOMMIT).contains(&o)
        {
            return Err(invalid(
                "capacity.memory_overcommit",
                format!("must be 1 to {MAX_MEMORY_OVERCOMMIT}, not {o}"),
            ));
        }
        if self.cgroup.pids_max < 16 {
            return Err(invalid("cgroup.pids_max", "must be at least 16"));
        }
        if self.cgroup.parent != "auto" && !self.cgroup.parent.starts_with('/') {
            return Err(invalid(
                "cgroup.parent",
                "must be `auto` or an absolute path such as /atrium",
            ));
        }
        Ok(())
    }

    /// The enrolment token, from `broker.enrolment_token` or `broker.enrolment_token_file`.
    pub fn enrolment_token(&self) -> Result<Option<Secret>, ConfigError> {
        let b = &self.broker;
        match (&b.enrolment_token, &b.enrolment_token_file) {
            (Some(_), Some(_)) => Err(invalid(
                "broker.enrolment_token",
                "set broker.enrolment_token or broker.enrolment_token_file, not both",
            )),
            (Some(t), None) => Ok(Some(t.clone())),
            (None, Some(path)) => {
                let t = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                let t = t.lines().next().unwrap_or("").trim();
                Ok((!t.is_empty()).then(|| Secret::new(t)))
            }
            (None, None) => Ok(None),
        }
    }

    /// Where this node's own key is kept.
    pub fn key_path(&self) -> PathBuf {
        self.node.state_dir.join("node-key.pem")
    }

    /// The local socket for the display proxy.
    pub fn local_socket(&self) -> PathBuf {
        self.node.local_socket.clone().unwrap_or_else(|| self.node.state_dir.join("api.sock"))
    }

    /// The node id: configured, or the host name.
    pub fn node_id(&self) -> String {
        self.node.id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "node".into())
        })
    }

    pub fn api_url(&self) -> String {
        let scheme = if self.node.tls_cert.is_some() { "https" } else { "http" };
        self.node.api_url.clone().unwrap_or_else(|| format!("{scheme}://{}", self.node.listen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<NodeConfig, ConfigError> {
        NodeConfig::from_parts(
            "test.toml",
            text,
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    #[test]
    fn a_bad_token_value_is_not_shown_in_the_error() {
        let e = parse("[broker]\nenrolment_token = 98765432\n", &[]).unwrap_err().to_string();
        assert!(!e.contains("98765432") && e.contains("enrolment_token"), "{e}");
        let e = parse("[broker]\nenrolment_token = \"ab\\qcd\"\n", &[]).unwrap_err().to_string();
        assert!(!e.contains("ab\\qcd") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn defaults_and_a_full_file() {
        let c = parse("", &[]).expect("empty file");
        assert_eq!(c, NodeConfig::default());
        let c = parse(
            r#"
[node]
id = "node-1"
listen = "0.0.0.0:7070"
display_url = "ws://node-1:7443"
state_dir = "/srv/atrium"
images_dir = "/srv/images"
[capacity]
vcpus = 8
memory_mib = 16384
[qemu]
accel = "tcg"
pointer = "usb-tablet"
[cgroup]
parent = "/atrium"
[broker]
url = "https://broker:8443"
enrolment_token = "atrium-enrol-0123456789"
"#,
            &[],
        )
        .expect("valid");
        assert_eq!(c.capacity.vcpus, Some(8));
        assert_eq!(c.qemu.accel, AccelChoice::Tcg);
        assert_eq!(c.qemu.pointer, Pointer::UsbTablet);
        assert_eq!(
            c.enrolment_token().expect("token").expect("set").expose(),
            "atrium-enrol-0123456789"
        );
        assert_eq!(format!("{:?}", c.broker.enrolment_token), "Some([redacted])");
        assert_eq!(c.local_socket(), PathBuf::from("/srv/atrium/api.sock"));
        assert_eq!(c.api_url(), "http://0.0.0.0:7070");
    }

    #[test]
    fn bad_files_are_refused_with_the_key() {
        for (text, needle) in [
            ("[node]\nlisten = 7070", "listen"),
            ("[node]\nfrobnicate = 1", "frobnicate"),
            ("[nodes]\nid = \"a\"", "nodes"),
            ("[qemu]\naccel = \"hvf\"", "hvf"),
            ("[node]\nid = \"a b\"", "node.id"),
            ("[node]\nstate_dir = \"relative\"", "absolute"),
            (&format!("[node]\nstate_dir = \"/{}\"", "x".repeat(90)), "too long"),
            // A template's sockets are 6 bytes further in than a VM's.
            (&format!("[node]\nstate_dir = \"/{}\"", "x".repeat(66)), "too long"),
            ("[node]\nready_timeout_secs = 0", "ready_timeout_secs"),
            ("[broker]\nurl = \"https://b\"", "display_url"),
            ("[broker]\nurl = \"ftp://b\"\n[node]\ndisplay_url=\"ws://x\"", "scheme"),
            ("[broker]\nurl = \"http://b\"\n[node]\ndisplay_url=\"ws://x\"", "use TLS"),
            (
                "[broker]\nurl = \"http://b\"\nplain_http_loopback = true\n[node]\ndisplay_url=\"ws://x\"",
                "another host",
            ),
            ("[node]\ntls_cert = \"/c\"", "together"),
            ("[cgroup]\nparent = \"atrium\"", "cgroup.parent"),
            ("[cgroup]\npids_max = 1", "pids_max"),
            ("[capacity]\nvcpu_overcommit = 0", "vcpu_overcommit"),
            ("[capacity]\nvcpu_overcommit = 33", "1 to 32"),
            ("[capacity]\nvcpu_overcommit = -1", "vcpu_overcommit"),
            ("[capacity]\nmemory_overcommit = 0", "memory_overcommit"),
            ("[capacity]\nmemory_overcommit = 17", "1 to 16"),
            ("[capacity]\nmemory_overcommit = 1.5", "memory_overcommit"),
            ("not toml [", "test.toml"),
            ("[node]\ntoken = \"0123456789abcdef0123\"", "no longer used"),
        ] {
            let e = parse(text, &[]).expect_err(text).to_string();
            assert!(e.contains(needle), "{text:?} gave {e:?}, wanted {needle:?}");
        }
        let both = "[broker]\nenrolment_token = \"a\"\nenrolment_token_file = \"/x\"";
        let e = parse(both, &[]).expect("parses").enrolment_token().unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        assert!(parse("", &[]).expect("parses").enrolment_token().expect("none").is_none());
    }

    #[test]
    fn environment_overrides_every_key() {
        let c = parse(
            "[node]\nstop_grace_secs = 3",
            &[
                ("ATRIUM_NODE_BROKER_ENROLMENT_TOKEN", "atrium-enrol-abcdefghijklmnopq"),
                ("ATRIUM_NODE_STOP_GRACE_SECS", "7"),
                ("ATRIUM_NODE_QEMU_ACCEL", "kvm"),
                ("ATRIUM_NODE_CGROUP_ENABLED", "false"),
                ("ATRIUM_NODE_CAPACITY_VCPUS", "4"),
                ("ATRIUM_NODE_BROKER_URL", "https://broker:8443"),
                ("ATRIUM_NODE_DISPLAY_URL", "ws://node:8090"),
                ("ATRIUM_NODE_ID", "node-7"),
                ("PATH", "/usr/bin"),
            ],
        )
        .expect("valid");
        assert_eq!(c.node.stop_grace_secs, 7);
        assert_eq!(c.qemu.accel, AccelChoice::Kvm);
        assert!(!c.cgroup.enabled);
        assert_eq!(c.capacity.vcpus, Some(4));
        assert_eq!(c.broker.url.as_deref(), Some("https://broker:8443"));
        assert_eq!(c.node.id.as_deref(), Some("node-7"));
        assert!(c.enrolment_token().expect("read").is_some());
        // A section's key without its section is no key of [node].
        let e = parse("", &[("ATRIUM_NODE_VCPUS", "4")]).unwrap_err().to_string();
        assert!(e.contains("ATRIUM_NODE_VCPUS"), "{e}");

        let e = parse("", &[("ATRIUM_NODE_TOKNE", "x")]).unwrap_err().to_string();
        assert!(e.contains("ATRIUM_NODE_TOKNE"), "{e}");
        let e = parse("", &[("ATRIUM_NODE_STOP_GRACE_SECS", "soon")]).unwrap_err().to_string();
        assert!(e.contains("integer"), "{e}");
        let e = parse("", &[("ATRIUM_NODE_CGROUP_ENABLED", "maybe")]).unwrap_err().to_string();
        assert!(e.contains("true or false"), "{e}");
    }
}
