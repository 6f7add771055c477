//! The node agent's HTTP API (`/api/v1/...` on `atrium-node`) and the broker's node
//! registration API. Both ends use these types.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::agent::SessionUser;

/// Smallest and largest values a VM spec may ask for.
pub const MIN_MEMORY_MIB: u32 = 64;
pub const MAX_MEMORY_MIB: u32 = 1024 * 1024;
pub const MAX_VCPUS: u32 = 64;
pub const MIN_DISPLAY: u32 = 320;
pub const MAX_DISPLAY_WIDTH: u32 = 7680;
pub const MAX_DISPLAY_HEIGHT: u32 = 4320;

/// A screen size, written `WIDTHxHEIGHT` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DisplaySize {
    pub width: u32,
    pub height: u32,
}

impl DisplaySize {
    pub const fn new(width: u32, height: u32) -> Self {
        Self { width, height }
    }

    /// Checks the bounds every runtime supports.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_DISPLAY..=MAX_DISPLAY_WIDTH).contains(&self.width)
            || !(MIN_DISPLAY..=MAX_DISPLAY_HEIGHT).contains(&self.height)
        {
            return Err(format!(
                "{self} is outside {MIN_DISPLAY}x{MIN_DISPLAY}..{MAX_DISPLAY_WIDTH}x{MAX_DISPLAY_HEIGHT}"
            ));
        }
        if !self.width.is_multiple_of(8) {
            return Err(format!("width {} is not a multiple of 8", self.width));
        }
        Ok(())
    }
}

impl fmt::Display for DisplaySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl FromStr for DisplaySize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (w, h) = s
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("display size {s:?} is not WIDTHxHEIGHT"))?;
        let width = w.trim().parse().map_err(|_| format!("display width {w:?} is not a number"))?;
        let height =
            h.trim().parse().map_err(|_| format!("display height {h:?} is not a number"))?;
        Ok(Self { width, height })
    }
}

impl Serialize for DisplaySize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DisplaySize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which VM runtime runs a desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// One `qemu-system-x86_64` per VM (KVM where the host has VMX/SVM, else TCG).
    Qemu,
    /// Atrium's own rust-vmm monitor (hardware KVM hosts).
    Builtin,
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Qemu => "qemu",
            Self::Builtin => "builtin",
        })
    }
}

impl FromStr for RuntimeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "qemu" => Ok(Self::Qemu),
            "builtin" => Ok(Self::Builtin),
            other => Err(format!("unknown runtime {other:?} (expected qemu or builtin)")),
        }
    }
}

/// What `/dev/kvm` on a host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmKind {
    /// Hardware virtualization (Intel VMX, `kvm_intel`).
    Vmx,
    /// Hardware virtualization (AMD SVM, `kvm_amd`).
    Svm,
    /// `kvm_pvm`: guest kernels run under KVM's instruction emulator.
    Pvm,
    /// `/dev/kvm` exists but its kind could not be told.
    Unknown,
    /// No usable `/dev/kvm`.
    Absent,
}

impl KvmKind {
    /// Whether a stock guest kernel runs at native speed.
    pub fn is_hardware(self) -> bool {
        matches!(self, Self::Vmx | Self::Svm)
    }
}

/// The accelerator a VM actually runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        })
    }
}

/// `POST /api/v1/vms`: what the broker asks a node for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Image reference: `NAME` (newest version on the node) or `NAME@VERSION`.
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub display: DisplaySize,
    /// `None`: the node's default runtime.
    #[serde(default)]
    pub runtime: Option<RuntimeKind>,
    /// A persistent disk id (dedicated desktops): the node keeps the disk after the VM is
    /// deleted and attaches it again to the next VM that names it. `None`: nothing survives.
    #[serde(default)]
    pub persistent_disk: Option<String>,
    /// The signed-in user, when the VM is created for someone (not as a pool spare).
    #[serde(default)]
    pub user: Option<SessionUser>,
    /// Start it as a clone of the node's template for its image and size (a floating desktop:
    /// no persistent disk; the qemu runtime): no boot, memory shared with the template until
    /// written. The node boots it instead while the template is being made.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clone: bool,
}

/// A field-level validation error in a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

/// Names (images, disks, pools, nodes) are short, ASCII and safe in file names and URLs.
pub fn validate_name(field: &'static str, name: &str, max: usize) -> Result<(), FieldError> {
    if name.is_empty() || name.len() > max {
        return Err(FieldError::new(field, format!("must be 1 to {max} characters")));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(FieldError::new(field, "may contain only letters, digits, '-', '_' and '.'"));
    }
    if name.starts_with('.') {
        return Err(FieldError::new(field, "must not start with '.'"));
    }
    Ok(())
}

/// An image reference split into name and optional version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub name: String,
    pub version: Option<String>,
}

impl ImageRef {
    pub fn parse(field: &'static str, s: &str) -> Result<Self, FieldError> {
        let (name, version) = match s.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        validate_name(field, name, 64)?;
        if let Some(v) = version {
            validate_name(field, v, 64)?;
        }
        Ok(Self { name: name.to_owned(), version: version.map(str::to_owned) })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl VmSpec {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<ImageRef, FieldError> {
        let image = ImageRef::parse("image", &self.image)?;
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(FieldError::new("vcpus", format!("must be 1 to {MAX_VCPUS}")));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(FieldError::new(
                "memory_mib",
                format!("must be {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB}"),
            ));
        }
        self.display.validate().map_err(|m| FieldError::new("display", m))?;
        if let Some(disk) = &self.persistent_disk {
            validate_name("persistent_disk", disk, 128)?;
        }
        if let Some(user) = &self.user {
            user.validate().map_err(|m| FieldError::new("user", m))?;
        }
        if self.clone && self.persistent_disk.is_some() {
            return Err(FieldError::new(
                "clone",
                "a clone is a floating desktop: it cannot have a persistent disk",
            ));
        }
        if self.clone && self.runtime == Some(RuntimeKind::Builtin) {
            return Err(FieldError::new("clone", "the builtin runtime does not clone VMs yet"));
        }
        Ok(image)
    }
}

/// The life of a VM on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// The VM process runs; the guest agent has not said ready yet.
    Starting,
    /// The guest agent said ready: the desktop can be used.
    Ready,
    /// Stopped on request; its disk is kept until `DELETE`.
    Stopped,
    /// The VM died or never became ready; `error` says why.
    Failed,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }
}

/// Where a VM's screen can be reached on the node's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DisplayEndpoint {
    /// An RFB (VNC) server on a unix socket (QEMU).
    VncUnix { path: String },
    /// An RFB (VNC) server on TCP (an existing VNC desktop).
    VncTcp { address: String },
    /// The builtin VMM's display channel (see [`crate::vmm_channel`]).
    Shm { path: String },
}

/// `GET /api/v1/vms/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub id: String,
    pub state: VmState,
    pub runtime: RuntimeKind,
    pub accel: Option<Accel>,
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub display: DisplaySize,
    /// The guest's screen as its agent last reported it; `None` while it has not, and for
    /// desktops whose screen cannot change size (see `PUT .../screen`).
    #[serde(default)]
    pub screen: Option<DisplaySize>,
    /// The VM has a sound card whose output its VNC server carries (QEMU's audio extension).
    #[serde(default)]
    pub sound: bool,
    pub persistent_disk: Option<String>,
    /// The user whose session the guest agent was last told about.
    pub user: Option<String>,
    pub created_at_ms: u64,
    pub ready_at_ms: Option<u64>,
    pub error: Option<String>,
    pub display_endpoint: DisplayEndpoint,
    /// Started as a clone of the node's template for its image and size (`VmSpec::clone`);
    /// `false` for a boot (asked for, or while the template was being made).
    #[serde(default)]
    pub cloned: bool,
    /// Its image runs Atrium's guest agent (absent from older nodes: they run only such
    /// images). Without one: no sign-in, clipboard, files or screen sizes through Atrium.
    #[serde(default = "yes")]
    pub agent: bool,
}

fn yes() -> bool {
    true
}

/// `POST /api/v1/vms/{id}/session`: tell the guest agent who signed in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub user: SessionUser,
}

/// `POST /api/v1/vms/{id}/clipboard`: what to put on the guest clipboard, text or an image
/// (a PNG file, base64): exactly one of the two.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipboardPaste {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::b64::option")]
    pub png: Option<Vec<u8>>,
}

/// Answer to `POST /api/v1/vms/{id}/uploads?name=NAME&size=BYTES` (local socket): the guest
/// has the whole file, not yet the user's. `upload` names it for
/// `POST .../uploads/{upload}/commit` (give it to the user) or `DELETE .../uploads/{upload}`
/// (throw it away); one not committed within minutes is thrown away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadStaged {
    pub upload: u64,
    pub size: u64,
}

/// Answer to `POST /api/v1/vms/{id}/uploads/{upload}/commit`: where the file is in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadSaved {
    pub path: String,
}

/// Answer to `GET /api/v1/vms/{id}/files`: the files the signed-in user may download from the
/// desktop (those in their transfer folder), newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListing {
    pub files: Vec<crate::agent::FileEntry>,
}

/// The header of `GET /api/v1/vms/{id}/files/content` that gives the file's size (the body's
/// length: a body that ends before it was cut off).
pub const FILE_SIZE_HEADER: &str = "x-atrium-file-size";

/// `PUT /api/v1/vms/{id}/screen`: give the desktop's screen this size (at most the VM's
/// display size, which it booted with). Answered with the size the guest's screen took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScreenSize {
    pub size: DisplaySize,
}

/// `GET /api/v1/vms/{id}/clipboard?after=SEQ`: the guest's clipboard, with a sequence number
/// that grows at each change (long-polled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipboardState {
    pub seq: u64,
    /// The clipboard's text, when it holds text.
    pub text: Option<String>,
    /// The clipboard's image (a PNG file, base64), when it holds an image.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::b64::option")]
    pub png: Option<Vec<u8>>,
}

/// An image a node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    pub version: String,
    pub kind: String,
    /// It runs Atrium's guest agent (absent from older nodes: all theirs do).
    #[serde(default = "yes")]
    pub agent: bool,
    /// `uefi` or `bios` for a disk booted by firmware (an imported image); absent for an image
    /// whose kernel is loaded directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// For an imported image, the SHA-256 of the file it was imported from (hex): what the
    /// broker's image library knows an image by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// `GET /api/v1/capacity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub vcpus_total: u32,
    pub vcpus_allocated: u32,
    pub memory_mib_total: u64,
    pub memory_mib_allocated: u64,
    /// Host memory the VMs really use: the proportional set size (PSS) of their processes,
    /// so pages they share (a template's, the host's libraries) are counted once between them,
    /// plus the templates' memory in full.
    #[serde(default)]
    pub memory_mib_used: u64,
    /// Host memory for VMs: `memory_mib_total` without the node's memory overcommit. A node
    /// with overcommit takes a VM only while `memory_mib_used` leaves room for its share
    /// (guest memory × this / `memory_mib_total`). 0 from older nodes (no such check).
    #[serde(default)]
    pub memory_mib_physical: u64,
    pub vms: u32,
    pub kvm: KvmKind,
    pub default_runtime: RuntimeKind,
    pub images: Vec<ImageInfo>,
    /// Images of the broker's library this node is fetching or failed to fetch (one it holds
    /// is in `images`). Absent from nodes older than the library.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_fetches: Vec<ImageFetch>,
}

/// Where a node is with an image of the broker's library ([`LibraryImage`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFetch {
    pub name: String,
    pub version: String,
    /// `fetching` (downloading, checking or converting it) or `failed`.
    pub state: String,
    /// Why it failed (the node does not try the same file again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Most images a broker's library holds; what a heartbeat's reply lists.
pub const MAX_LIBRARY_IMAGES: usize = 1000;
/// Largest disk image the library takes (4 TiB, as `atrium-node image import`).
pub const MAX_LIBRARY_IMAGE_BYTES: u64 = 4 << 40;

/// A disk image an administrator gave the broker (`PUT /api/v1/admin/images/{name}/{version}`)
/// that every node should hold: a node that lacks it fetches the file
/// (`GET /api/v1/nodes/images/{name}/{version}`, signed), checks its SHA-256 against `sha256`
/// and imports it as `atrium-node image import` would, with these settings.
/// Fields a later broker adds are ignored (nodes are upgraded after brokers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryImage {
    pub name: String,
    pub version: String,
    /// SHA-256 of the file as uploaded, hex.
    pub sha256: String,
    pub size_bytes: u64,
    /// `qcow2`, `vmdk`, `vhdx` or `raw` when the administrator said (else read from the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// `uefi` or `bios`.
    pub firmware: String,
    pub secure_boot: bool,
    pub tpm: bool,
    pub agent: bool,
    pub min_memory_mib: u32,
}

impl LibraryImage {
    /// Checks every field (the node runs `qemu-img` on what this names).
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_name("name", &self.name, 64)?;
        validate_name("version", &self.version, 64)?;
        if self.sha256.len() != 64
            || !self.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(FieldError::new("sha256", "must be 64 lower-case hex digits"));
        }
        if self.size_bytes == 0 || self.size_bytes > MAX_LIBRARY_IMAGE_BYTES {
            return Err(FieldError::new("size_bytes", "must be 1 byte to 4 TiB"));
        }
        if let Some(f) = &self.format
            && !matches!(f.as_str(), "qcow2" | "vmdk" | "vhdx" | "raw")
        {
            return Err(FieldError::new("format", "must be qcow2, vmdk, vhdx or raw"));
        }
        match self.firmware.as_str() {
            "uefi" => {}
            "bios" if !self.secure_boot => {}
            "bios" => {
                return Err(FieldError::new("secure_boot", "Secure Boot needs UEFI firmware"));
            }
            _ => return Err(FieldError::new("firmware", "must be uefi or bios")),
        }
        if !(64..=4_194_304).contains(&self.min_memory_mib) {
            return Err(FieldError::new("min_memory_mib", "must be 64-4194304"));
        }
        Ok(())
    }
}

impl Capacity {
    pub fn memory_mib_free(&self) -> u64 {
        self.memory_mib_total.saturating_sub(self.memory_mib_allocated)
    }

    /// Whether a VM of `memory_mib` guest memory fits what the VMs really use
    /// ([`fits_real_use`]).
    pub fn real_use_allows(&self, memory_mib: u32) -> bool {
        fits_real_use(
            self.memory_mib_used,
            self.memory_mib_physical,
            self.memory_mib_total,
            memory_mib,
        )
    }
}

/// Whether a VM of `memory_mib` guest memory fits beside `used` MiB that VMs really use, on a
/// node with `physical` MiB for VMs handing out `total` (overcommit: `total` / `physical`): its
/// share of host memory, `memory_mib` × `physical` / `total`, must fit. Always true for a node
/// without overcommit (or one that does not say: `physical` 0).
pub fn fits_real_use(used: u64, physical: u64, total: u64, memory_mib: u32) -> bool {
    if physical == 0 || physical >= total {
        return true;
    }
    let share = u128::from(memory_mib) * u128::from(physical) / u128::from(total);
    u128::from(used) + share <= u128::from(physical)
}

/// A VM's id and state, as carried in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    pub id: String,
    pub state: VmState,
    pub error: Option<String>,
}

/// `POST /api/v1/nodes/heartbeat` on the broker (bearer node token): registers a node the
/// first time, then keeps it alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeHeartbeat {
    /// Stable node id (configured, or the host name).
    pub node_id: String,
    /// Base URL of the node agent's API, as the broker reaches it.
    pub api_url: String,
    /// Base URL of the display proxy beside this node, as browsers reach it (`ws://` or `wss://`).
    pub display_url: String,
    pub capacity: Capacity,
    pub vms: Vec<VmStatus>,
    /// What the display proxy beside the node last said of the broker sessions it serves
    /// ([`crate::session::ActivityReport`]). Absent from nodes that do not report it (older ones): the broker
    /// then cannot tell input or viewers, and takes those nodes' sessions as in use. A node
    /// whose proxy stopped reporting sends an empty list: nobody can be connected through it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Vec<crate::session::SessionActivity>>,
    /// Files that crossed at the display proxy since the last heartbeat the broker took, for
    /// its audit log. Sent only when there are some (a broker older than transfers refuses the
    /// field; brokers are upgraded first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transfers: Vec<crate::session::TransferRecord>,
}

/// The broker's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Seconds until the next heartbeat is due.
    pub interval_secs: u64,
    /// The broker drained this node: it places no new VMs here.
    pub draining: bool,
    /// The broker's public signing keys: the node accepts API calls signed by one of these
    /// (see [`crate::signed`]), and nothing else.
    #[serde(default)]
    pub broker_keys: Vec<BrokerKey>,
    /// The broker's image library: every node should hold these ([`LibraryImage`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<LibraryImage>,
}

/// One of the broker's public signing keys (Ed25519).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerKey {
    pub kid: String,
    /// The public key, base64url (a JWK's `x`).
    pub x: String,
}

/// `POST /api/v1/nodes/enrol` on the broker: a node proves it holds a one-time enrolment token
/// an administrator created, and binds its id to its own public key. Heartbeats are then signed
/// with that key (see [`crate::signed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    pub token: String,
    pub node_id: String,
    /// The node's Ed25519 public key, base64url ([`crate::signed::NodeKey::public`]).
    pub public_key: String,
    /// What the node has when it enrols; the broker never trusts more than this later (nor
    /// more than the enrolment token allows).
    pub vcpus_total: u32,
    pub memory_mib_total: u64,
}

/// The broker's answer to an enrolment: the capacity it will trust this node with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolReply {
    pub node_id: String,
    pub max_vcpus: u32,
    pub max_memory_mib: u64,
}

/// Error body of every Atrium HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// The request field at fault, for validation errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            image: "console".into(),
            vcpus: 1,
            memory_mib: 512,
            display: DisplaySize::new(1280, 800),
            runtime: None,
            persistent_disk: None,
            user: None,
            clone: false,
        }
    }

    #[test]
    fn real_use_counts_only_with_overcommit() {
        // No overcommit (or an older node): only what is handed out counts.
        assert!(fits_real_use(9000, 8192, 8192, 1024));
        assert!(fits_real_use(9000, 0, 8192, 1024));
        // Overcommit 4: a VM of 1024 MiB needs 256 MiB beside what the VMs use.
        assert!(fits_real_use(7936, 8192, 32768, 1024));
        assert!(!fits_real_use(7937, 8192, 32768, 1024));
        assert!(!fits_real_use(u64::MAX, 8192, 32768, 1));
    }

    #[test]
    fn display_size_round_trips_and_rejects_garbage() {
        let d: DisplaySize = "1280x800".parse().unwrap();
        assert_eq!(d, DisplaySize::new(1280, 800));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1280x800\"");
        for bad in ["", "x", "1280", "ax800", "1280x", "-1x5", "99999999999x1"] {
            assert!(bad.parse::<DisplaySize>().is_err(), "{bad:?} parsed");
        }
        assert!(DisplaySize::new(100, 100).validate().is_err());
        assert!(DisplaySize::new(1281, 800).validate().is_err());
        assert!(DisplaySize::new(1920, 1080).validate().is_ok());
    }

    #[test]
    fn spec_validation_names_the_field() {
        assert_eq!(spec().validate().unwrap().name, "console");
        let mut s = spec();
        s.vcpus = 0;
        assert_eq!(s.validate().unwrap_err().field, "vcpus");
        let mut s = spec();
        s.memory_mib = 1;
        assert_eq!(s.validate().unwrap_err().field, "memory_mib");
        let mut s = spec();
        s.image = "../etc/passwd".into();
        assert_eq!(s.validate().unwrap_err().field, "image");
        let mut s = spec();
        s.image = "console@v/1".into();
        assert_eq!(s.validate().unwrap_err().field, "image");
        let mut s = spec();
        s.persistent_disk = Some(String::new());
        assert_eq!(s.validate().unwrap_err().field, "persistent_disk");
        // A clone is floating, and the qemu runtime's.
        let mut s = spec();
        s.clone = true;
        assert!(s.validate().is_ok());
        s.persistent_disk = Some("d1".into());
        assert_eq!(s.validate().unwrap_err().field, "clone");
        s.persistent_disk = None;
        s.runtime = Some(RuntimeKind::Builtin);
        assert_eq!(s.validate().unwrap_err().field, "clone");
        // Not asked for, it is not sent: an older node reads the spec as before.
        let json = serde_json::to_string(&spec()).unwrap();
        assert!(!json.contains("clone"), "{json}");
    }

    #[test]
    fn spec_rejects_unknown_fields() {
        let r: Result<VmSpec, _> = serde_json::from_str(
            r#"{"image":"a","vcpus":1,"memory_mib":512,"display":"1280x800","evil":1}"#,
        );
        assert!(r.is_err());
    }

    #[test]
    fn image_ref_parses_versions() {
        let r = ImageRef::parse("image", "console@20261126-1").unwrap();
        assert_eq!(r.version.as_deref(), Some("20261126-1"));
        assert_eq!(r.to_string(), "console@20261126-1");
        assert!(ImageRef::parse("image", "a@").is_err());
        assert!(ImageRef::parse("image", ".hidden").is_err());
    }

    #[test]
    fn a_heartbeat_without_sessions_reads_as_unknown() {
        let hb = r#"{"node_id":"n","api_url":"http://127.0.0.1:1","display_url":"ws://127.0.0.1:2",
            "capacity":{"vcpus_total":2,"vcpus_allocated":0,"memory_mib_total":1024,"memory_mib_allocated":0,
            "vms":0,"kvm":"unknown","default_runtime":"qemu","images":[]},"vms":[]}"#;
        match serde_json::from_str::<NodeHeartbeat>(hb) {
            Ok(hb) => assert_eq!(hb.sessions, None),
            Err(e) => panic!("{e}"),
        }
    }
}
