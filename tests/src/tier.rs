//! Atrium's service tier as containers on this host, as `scripts/containers.sh` runs it and the
//! container tests use it: the images built from this workspace
//! (`deploy/containers/build.sh`), the secrets made by `deploy/kubernetes/make-secrets.sh` and
//! laid out as the cluster's Secrets would be mounted, and `deploy/kubernetes/overlays/podman`
//! rendered by kustomize and played by `podman kube play`, in a folder of its own that takes the
//! place of the overlay's `/var/lib/atrium/tier`.
//!
//! The overlay's ports are fixed (see [`PORTS`]): one tier runs on a host at a time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use reqwest::StatusCode;

use crate::broker::ApiClient;
use crate::https::HttpsClient;
use crate::util::{TempDir, wait_for, workspace_root};

/// Where browsers go: the edge, over TLS.
pub const PUBLIC_URL: &str = "https://127.0.0.1:8443";
/// Where node agents and gateways reach the brokers: the edge's internal frontend.
pub const INTERNAL_URL: &str = "http://127.0.0.1:28080";
/// The broker replicas: Deployment names and ports.
pub const BROKERS: [(&str, u16); 3] =
    [("atrium-broker-1", 28081), ("atrium-broker-2", 28082), ("atrium-broker-3", 28083)];
/// The display gateways: Deployment names and ports (TLS).
pub const GATEWAYS: [(&str, u16); 2] = [("atrium-gateway-1", 28091), ("atrium-gateway-2", 28092)];
pub const POSTGRES: &str = "atrium-postgres";
pub const EDGE: &str = "atrium-edge";
/// The demo directory's port, as the overlay's brokers expect it.
pub const DIRECTORY_PORT: u16 = 28389;
/// A broker replica's own `/readyz` (TLS from the internal CA, like every hop of the tier).
pub fn broker_ready_url(port: u16) -> String {
    format!("https://127.0.0.1:{port}/readyz")
}

/// Every port the tier's pods use on 127.0.0.1 (the brokers' metrics on 28181-28183).
pub const PORTS: [u16; 11] =
    [8443, 28080, 28081, 28082, 28083, 28181, 28182, 28183, 28091, 28092, 28432];
/// The folder the overlay names for its host paths.
const OVERLAY_STATE: &str = "/var/lib/atrium/tier";

/// `podman` with the project's settings (`deploy/containers/containers.conf`) unless the
/// caller set `CONTAINERS_CONF`.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        c.env("CONTAINERS_CONF", workspace_root().join("deploy/containers/containers.conf"));
    }
    c
}

/// Runs a command; its output, or an error with its stderr.
fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl` (with kustomize) and `kubernetes-validate` from PyPI, installed by
/// `scripts/lib/deps.sh` in `$ATRIUM_CACHE/kube-tools` (or the folder `ATRIUM_KUBE_TOOLS`
/// names).
#[derive(Debug, Clone)]
pub struct KubeTools {
    pub kubectl: PathBuf,
    pub validate: PathBuf,
}

impl KubeTools {
    pub fn find() -> anyhow::Result<Self> {
        let bin = match std::env::var_os("ATRIUM_KUBE_TOOLS") {
            Some(p) => PathBuf::from(p),
            None => {
                let cache = std::env::var_os("ATRIUM_CACHE").map_or_else(
                    || {
                        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                            .join(".cache/atrium")
                    },
                    PathBuf::from,
                );
                cache.join("kube-tools/bin")
            }
        };
        let me = Self { kubectl: bin.join("kubectl"), validate: bin.join("kubernetes-validate") };
        for p in [&me.kubectl, &me.validate] {
            ensure!(
                p.exists(),
                "{} is missing: scripts/lib/deps.sh installs kubectl and kubernetes-validate \
                 from PyPI there (scripts/test.sh and scripts/containers.sh run it)",
                p.display()
            );
        }
        Ok(me)
    }

    /// `kubectl kustomize DIR`.
    pub fn render(&self, dir: &Path) -> anyhow::Result<String> {
        run(Command::new(&self.kubectl).arg("kustomize").arg(dir), "kubectl kustomize")
    }

    /// Checks every document against the Kubernetes API schemas, unknown fields refused.
    pub fn validate(&self, yaml: &str) -> anyhow::Result<()> {
        let mut child = Command::new(&self.validate)
            .args(["--strict", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubernetes-validate")?;
        std::io::Write::write_all(&mut child.stdin.take().expect("piped"), yaml.as_bytes())?;
        let out = child.wait_with_output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(out.status.success(), "the manifests do not validate:\n{text}");
        Ok(())
    }
}

/// One document of a rendered multi-document YAML: its kind, name and text.
#[derive(Debug, Clone)]
pub struct Doc {
    pub kind: String,
    pub name: String,
    pub text: String,
}

/// Writes `policies` into a copy of the manifests and names them in the brokers' policies
/// ConfigMap (once: a kept state folder already has them).
fn add_policies(manifests: &Path, policies: &[(String, String)]) -> anyhow::Result<()> {
    let broker = manifests.join("base/broker");
    let kustomization = broker.join("kustomization.yaml");
    let mut k = std::fs::read_to_string(&kustomization)?;
    let anchor = "      - policies/default.cedar\n";
    for (name, text) in policies {
        std::fs::write(broker.join(format!("policies/{name}.cedar")), text)?;
        let line = format!("      - policies/{name}.cedar\n");
        if !k.contains(&line) {
            anyhow::ensure!(
                k.contains(anchor),
                "{} names no policies/default.cedar",
                kustomization.display()
            );
            k = k.replacen(anchor, &format!("{anchor}{line}"), 1);
        }
    }
    std::fs::write(&kustomization, k)?;
    Ok(())
}

/// Splits `kubectl kustomize` output (documents separated by `---` lines).
pub fn documents(yaml: &str) -> Vec<Doc> {
    yaml.split("\n---\n")
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            let field = |prefix: &str| {
                t.lines().find_map(|l| l.strip_prefix(prefix)).unwrap_or("").trim().to_owned()
            };
            Doc { kind: field("kind: "), name: field("  name: "), text: t.to_owned() }
        })
        .collect()
}

/// What [`Tier::start`] needs.
#[derive(Debug, Clone)]
pub struct TierOptions {
    /// The tier's folder; `None`: a temporary one, removed when the tier stops.
    pub state: Option<PathBuf>,
    /// Where `atrium-broker` and `atrium-display` are (a cargo profile folder).
    pub binaries: PathBuf,
    /// The directory service account's password.
    pub ldap_bind_password: String,
    /// Policies added to the brokers' (file name without `.cedar`, text), as a site adds its
    /// own: a file beside `default.cedar` in its copy of the manifests, named in the
    /// `atrium-policies` ConfigMap's generator.
    pub policies: Vec<(String, String)>,
}

/// The tier, played; stopped (pods stopped and removed) on drop.
#[derive(Debug)]
pub struct Tier {
    pub dir: PathBuf,
    _temp: Option<TempDir>,
    docs: Vec<Doc>,
    yaml_path: PathBuf,
    /// The internal CA, which issued the public and the gateways' certificates.
    ca: Vec<u8>,
    down: bool,
}

impl Tier {
    /// Fails when one of the overlay's ports is taken (another tier, or anything else).
    pub fn check_ports() -> anyhow::Result<()> {
        for port in PORTS {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!(
                    "127.0.0.1:{port} is in use: the container tier needs ports {PORTS:?} \
                     (is a tier already up? `scripts/containers.sh down` stops it)"
                );
            }
        }
        Ok(())
    }

    /// Builds the images (cached by content), makes the secrets, and plays the tier; returns
    /// once the edge answers with a ready broker. The directory must answer on
    /// [`DIRECTORY_PORT`] for sign-ins, not for the start.
    pub async fn start(opts: TierOptions) -> anyhow::Result<Self> {
        crate::util::install_crypto();
        Self::check_ports()?;
        run(podman().arg("--version"), "podman --version")
            .context("podman is missing (scripts/lib/deps.sh installs it)")?;
        let tools = KubeTools::find()?;
        let root = workspace_root();
        let started = Instant::now();
        run(
            Command::new(root.join("deploy/containers/build.sh"))
                .arg("--binaries")
                .arg(&opts.binaries)
                .env("CONTAINERS_CONF", root.join("deploy/containers/containers.conf")),
            "deploy/containers/build.sh",
        )?;
        eprintln!("tier: images ready after {:?}", started.elapsed());
        let (dir, temp) = match &opts.state {
            Some(d) => (d.clone(), None),
            None => {
                let t = TempDir::new("tier");
                (t.path().to_owned(), Some(t))
            }
        };
        std::fs::create_dir_all(&dir)?;
        // The manifests, as a site would keep its copy (the secrets go beside them).
        let manifests = dir.join("kubernetes");
        if !manifests.exists() {
            run(
                Command::new("cp").arg("-r").arg(root.join("deploy/kubernetes")).arg(&manifests),
                "copying deploy/kubernetes",
            )?;
        }
        add_policies(&manifests, &opts.policies)?;
        let secrets = manifests.join("base/secrets");
        std::fs::create_dir_all(&secrets)?;
        run(
            Command::new(manifests.join("make-secrets.sh"))
                .args(["--public-name", "127.0.0.1", "--public-name", "localhost"])
                .args(["--database-host", "127.0.0.1", "--database-port", "28432"])
                .env("ATRIUM_LDAP_BIND_PASSWORD", &opts.ldap_bind_password),
            "make-secrets.sh",
        )?;
        lay_out_volumes(&dir, &secrets)?;
        let yaml = tools
            .render(&manifests.join("overlays/podman"))?
            .replace(OVERLAY_STATE, &dir.display().to_string());
        let yaml_path = dir.join("tier.yaml");
        std::fs::write(&yaml_path, &yaml)?;
        let me = Self {
            docs: documents(&yaml),
            yaml_path,
            ca: std::fs::read(secrets.join("ca.crt"))?,
            dir,
            _temp: temp,
            down: false,
        };
        me.remove_stale();
        run(podman().args(["kube", "play"]).arg(&me.yaml_path), "podman kube play")?;
        eprintln!("tier: played after {:?}", started.elapsed());
        me.wait_ready(Duration::from_secs(120)).await?;
        eprintln!("tier: ready after {:?}", started.elapsed());
        Ok(me)
    }

    /// The Deployments played.
    pub fn deployments(&self) -> Vec<String> {
        self.docs.iter().filter(|d| d.kind == "Deployment").map(|d| d.name.clone()).collect()
    }

    /// The pod podman made for a Deployment (one replica each here).
    pub fn pod(deployment: &str) -> String {
        format!("{deployment}-pod-0")
    }

    /// The main container of a Deployment's pod.
    pub fn container(&self, deployment: &str) -> anyhow::Result<String> {
        let doc = self
            .docs
            .iter()
            .find(|d| d.kind == "Deployment" && d.name == deployment)
            .with_context(|| format!("no Deployment {deployment}"))?;
        let name = doc
            .text
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("containers:"))
            .find_map(|l| l.trim_start().strip_prefix("name: "))
            .with_context(|| format!("{deployment} has no container"))?;
        Ok(format!("{}-{}", Self::pod(deployment), name.trim()))
    }

    /// Pods and ConfigMap volumes a previous run left (a crash of the harness).
    fn remove_stale(&self) {
        for d in self.deployments() {
            let _ = podman().args(["pod", "rm", "-f", &Self::pod(&d)]).output();
        }
        self.remove_config_volumes();
    }

    fn remove_config_volumes(&self) {
        for d in self.docs.iter().filter(|d| d.kind == "ConfigMap") {
            let _ = podman().args(["volume", "rm", "-f", &d.name]).output();
        }
    }

    /// Polls until the edge answers `/readyz` (a broker is ready) and every gateway and broker
    /// answers its own.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let http = self.http();
        let gw = self.gateway_http();
        let r = wait_for("the tier to be ready", timeout, || {
            let http = http.clone();
            let gw = gw.clone();
            async move {
                let ok = |r: anyhow::Result<reqwest::Response>| {
                    r.is_ok_and(|r| r.status() == StatusCode::OK)
                };
                if !ok(http.get(&format!("{PUBLIC_URL}/readyz")).await) {
                    return None;
                }
                for (_, port) in BROKERS {
                    if !ok(gw.get(&broker_ready_url(port)).await) {
                        return None;
                    }
                }
                for (_, port) in GATEWAYS {
                    if !ok(gw.get(&format!("https://127.0.0.1:{port}/readyz")).await) {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
        if let Err(e) = r {
            bail!("{e}\n{}", self.all_logs());
        }
        Ok(())
    }

    /// An HTTPS client that trusts the tier's CA (the edge's, the brokers' and the gateways'
    /// certificates).
    pub fn http(&self) -> HttpsClient {
        HttpsClient::new(&self.ca, false, Duration::from_secs(60)).expect("the tier's CA")
    }

    /// The same, with a short timeout, for the brokers' and the gateways' own ports.
    pub fn gateway_http(&self) -> HttpsClient {
        HttpsClient::new(&self.ca, false, Duration::from_secs(10)).expect("the tier's CA")
    }

    /// A browser-like API client at the public address.
    pub fn client(&self) -> ApiClient {
        ApiClient::with_ca(PUBLIC_URL, &self.ca).expect("the tier's CA")
    }

    /// The CA certificate (PEM) the edge's certificate is from, for clients outside Rust.
    pub fn ca_cert(&self) -> &[u8] {
        &self.ca
    }

    /// The host PID of a Deployment's main container.
    pub fn pid(&self, deployment: &str) -> anyhow::Result<u32> {
        let c = self.container(deployment)?;
        let out =
            run(podman().args(["inspect", "--format", "{{.State.Pid}}", &c]), "podman inspect")?;
        let pid: u32 = out.trim().parse().with_context(|| format!("{c}: pid {out:?}"))?;
        ensure!(pid > 0, "{c} is not running");
        Ok(pid)
    }

    /// How often podman restarted a Deployment's main container.
    pub fn restarts(&self, deployment: &str) -> anyhow::Result<u32> {
        let c = self.container(deployment)?;
        let out =
            run(podman().args(["inspect", "--format", "{{.RestartCount}}", &c]), "podman inspect")?;
        out.trim().parse().with_context(|| format!("{c}: restart count {out:?}"))
    }

    /// `kill -9` of a Deployment's main process, as a crash would.
    pub fn kill(&self, deployment: &str) -> anyhow::Result<()> {
        let pid = i32::try_from(self.pid(deployment)?)?;
        // SAFETY: kill(2) has no memory-safety preconditions.
        ensure!(unsafe { libc::kill(pid, libc::SIGKILL) } == 0, "kill -9 {pid} failed");
        Ok(())
    }

    /// Stops a Deployment's pod as an orchestrator does: SIGTERM (its image's stop signal), up
    /// to `grace`, then SIGKILL.
    pub fn stop(&self, deployment: &str, grace: Duration) -> anyhow::Result<()> {
        run(
            podman().args([
                "pod",
                "stop",
                "-t",
                &grace.as_secs().to_string(),
                &Self::pod(deployment),
            ]),
            "podman pod stop",
        )?;
        Ok(())
    }

    /// Starts a stopped Deployment's pod again.
    pub fn start_again(&self, deployment: &str) -> anyhow::Result<()> {
        run(podman().args(["pod", "start", &Self::pod(deployment)]), "podman pod start")?;
        Ok(())
    }

    /// One step of a rolling update: the Deployment's pod is stopped gracefully (it drains),
    /// then played again from the manifests (a new pod), and this returns once the new one
    /// answers `/readyz` on `ready_url` and the edge had time to see it (its checks run every
    /// second).
    pub async fn replace(&self, deployment: &str, ready_url: &str) -> anyhow::Result<()> {
        self.stop(deployment, Duration::from_secs(30))?;
        let doc = self
            .docs
            .iter()
            .find(|d| d.kind == "Deployment" && d.name == deployment)
            .with_context(|| format!("no Deployment {deployment}"))?;
        // The Deployment with the ConfigMaps it mounts.
        let mut yaml = String::new();
        for d in &self.docs {
            if d.name == doc.name
                || (d.kind == "ConfigMap" && doc.text.contains(&format!("name: {}\n", d.name)))
            {
                yaml.push_str(&d.text);
                yaml.push_str("\n---\n");
            }
        }
        let path = self.dir.join(format!("{deployment}.yaml"));
        std::fs::write(&path, yaml)?;
        run(podman().args(["kube", "play", "--replace"]).arg(&path), "podman kube play --replace")?;
        let https = self.gateway_http();
        wait_for(&format!("{deployment} to be ready again"), Duration::from_secs(60), || {
            let https = https.clone();
            async move {
                let r = if ready_url.starts_with("https") {
                    https.get(ready_url).await.ok()
                } else {
                    reqwest::get(ready_url).await.ok()
                };
                r.filter(|r| r.status() == StatusCode::OK)
            }
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        Ok(())
    }

    /// The last lines of a Deployment's main container's log.
    pub fn logs(&self, deployment: &str) -> String {
        let Ok(c) = self.container(deployment) else { return String::new() };
        podman()
            .args(["logs", "--tail", "40", &c])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }

    /// Every Deployment's last log lines, for a failure message.
    pub fn all_logs(&self) -> String {
        self.deployments()
            .iter()
            .map(|d| format!("--- {d} ---\n{}", self.logs(d)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops every pod (graceful, PostgreSQL's fast shutdown) and removes them and their
    /// ConfigMap volumes.
    pub fn down(&mut self) {
        if self.down {
            return;
        }
        self.down = true;
        let pods: Vec<String> = self.deployments().iter().map(|d| Self::pod(d)).collect();
        let _ = podman().args(["pod", "stop", "-t", "15"]).args(&pods).output();
        let _ = podman().args(["pod", "rm", "-f"]).args(&pods).output();
        self.remove_config_volumes();
    }
}

impl Drop for Tier {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.all_logs());
        }
        self.down();
    }
}

/// Lays the secret files out as the cluster's Secrets are mounted: one folder per Secret under
/// `<dir>/volumes`, each readable only by the user of the pods that mount it.
fn lay_out_volumes(dir: &Path, secrets: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, chown};
    let volumes = dir.join("volumes");
    let pem = |parts: &[&str]| -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        for p in parts {
            out.extend(std::fs::read(secrets.join(p)).with_context(|| format!("secret {p}"))?);
        }
        Ok(out)
    };
    // (folder, owner uid, [(file, contents)])
    type Volume<'a> = (&'a str, u32, Vec<(&'a str, Vec<u8>)>);
    let layout: [Volume; 8] = [
        (
            "broker-keys",
            10001,
            vec![("signing-1.pem", pem(&["signing-1.pem"])?), ("mfa.key", pem(&["mfa.key"])?)],
        ),
        (
            "database",
            10001,
            vec![("url", pem(&["database-url"])?), ("password", pem(&["database-password"])?)],
        ),
        ("ldap", 10001, vec![("bind-password", pem(&["ldap-bind-password"])?)]),
        (
            "broker-tls",
            10001,
            vec![("tls.crt", pem(&["broker.crt"])?), ("tls.key", pem(&["broker.key"])?)],
        ),
        ("internal-ca", 10001, vec![("ca.crt", pem(&["ca.crt"])?)]),
        (
            "gateway-tls",
            10001,
            vec![("tls.crt", pem(&["gateway.crt"])?), ("tls.key", pem(&["gateway.key"])?)],
        ),
        (
            "edge-tls",
            10001,
            vec![("edge.pem", pem(&["public.crt", "public.key"])?), ("ca.crt", pem(&["ca.crt"])?)],
        ),
        ("postgres", 999, vec![("password", pem(&["database-password"])?)]),
    ];
    std::fs::create_dir_all(&volumes)?;
    std::fs::set_permissions(&volumes, std::fs::Permissions::from_mode(0o711))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    for (folder, uid, files) in layout {
        let d = volumes.join(folder);
        std::fs::create_dir_all(&d)?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
        for (name, bytes) in files {
            let f = d.join(name);
            // Created readable by its owner only, before a byte is in it.
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o400)
                .open(&f)?;
            std::io::Write::write_all(&mut out, &bytes)?;
            chown(&f, Some(uid), Some(uid))?;
        }
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o500))?;
        chown(&d, Some(uid), Some(uid))?;
    }
    // Session recordings: one folder every broker replica writes (a volume they share).
    let recordings = volumes.join("recordings");
    std::fs::create_dir_all(&recordings)?;
    std::fs::set_permissions(&recordings, std::fs::Permissions::from_mode(0o700))?;
    chown(&recordings, Some(10001), Some(10001))?;
    // The image library: the same, for the disk images administrators upload.
    let images = volumes.join("images");
    std::fs::create_dir_all(&images)?;
    std::fs::set_permissions(&images, std::fs::Permissions::from_mode(0o700))?;
    chown(&images, Some(10001), Some(10001))?;
    let pgdata = dir.join("postgres");
    std::fs::create_dir_all(&pgdata)?;
    std::fs::set_permissions(&pgdata, std::fs::Permissions::from_mode(0o700))?;
    chown(&pgdata, Some(999), Some(999))?;
    Ok(())
}
