//! A throwaway OpenLDAP `slapd` on loopback, with its own `cn=config` in a temporary folder,
//! seeded over LDAP from `tests/fixtures/directory.ldif` (so the memberof overlay fills
//! `memberOf`). Optionally with TLS (LDAPS and StartTLS) from a CA the harness makes.
//!
//! Accounts (password in brackets): service account `cn=atrium,ou=services,dc=example,dc=com`
//! [service-pw]; `alice` [alice-pw], `bob` [bob-pw] and `émile` [émile-pw] in atrium-users;
//! `carol` [carol-pw] in atrium-users and atrium-admins; `dave` [dave-pw] in no group; `frank`
//! [`p"a's ü ß`] in atrium-users. posixGroup `developers` has memberUid alice and bob.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{TempDir, free_port, workspace_root};

pub const BASE: &str = "dc=example,dc=com";
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=com";
pub const ADMIN_PW: &str = "admin-pw";
pub const SERVICE_DN: &str = "cn=atrium,ou=services,dc=example,dc=com";
pub const SERVICE_PW: &str = "service-pw";

/// A running slapd; stopped and removed on drop.
#[derive(Debug)]
pub struct Slapd {
    dir: TempDir,
    child: Child,
    pub port: u16,
    /// LDAPS port, when started with TLS.
    pub tls_port: Option<u16>,
    /// The CA certificate (PEM) that signed the server certificate, when started with TLS.
    pub ca_file: Option<PathBuf>,
}

impl Slapd {
    /// Starts slapd seeded with the fixtures, plain LDAP only.
    pub fn start() -> anyhow::Result<Self> {
        crate::util::install_crypto();
        Self::start_with(false)
    }

    /// Starts slapd; with `tls`, also LDAPS on a second port and StartTLS on the first, with a
    /// server certificate for 127.0.0.1 (IP SAN) signed by a fresh CA.
    pub fn start_with(tls: bool) -> anyhow::Result<Self> {
        crate::util::install_crypto();
        Self::start_full(tls, None)
    }

    /// Starts slapd (plain LDAP) on a given port, for services configured with a fixed address
    /// (the container tier's brokers).
    pub fn start_on(port: u16) -> anyhow::Result<Self> {
        crate::util::install_crypto();
        Self::start_full(false, Some(port))
    }

    fn start_full(tls: bool, port: Option<u16>) -> anyhow::Result<Self> {
        let slapd = find_slapd()?;
        let dir = TempDir::new("slapd");
        let conf = dir.path().join("slapd.d");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&conf)?;
        std::fs::create_dir_all(&data)?;
        let ca_file = if tls { Some(make_certs(dir.path())?) } else { None };
        let ldif = config_ldif(dir.path(), &data, tls);
        let cfg_path = dir.path().join("config.ldif");
        std::fs::write(&cfg_path, ldif)?;
        run(Command::new(slapd.with_file_name("slapadd"))
            .args(["-n0", "-F"])
            .arg(&conf)
            .arg("-l")
            .arg(&cfg_path))?;
        let port = port.unwrap_or_else(free_port);
        let tls_port = tls.then(free_port);
        let mut urls = format!("ldap://127.0.0.1:{port}/");
        if let Some(p) = tls_port {
            urls.push_str(&format!(" ldaps://127.0.0.1:{p}/"));
        }
        let child = Command::new(&slapd)
            .args(["-d", "0", "-F"])
            .arg(&conf)
            .args(["-h", &urls])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("slapd.log"))?))
            .spawn()?;
        let me = Self { dir, child, port, tls_port, ca_file };
        me.wait_ready()?;
        me.ldapmodify(&workspace_root().join("tests/fixtures/directory.ldif"))?;
        Ok(me)
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    pub fn ldaps_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("ldaps://127.0.0.1:{p}"))
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let ok = Command::new("ldapsearch")
                .args(["-x", "-H", &self.url(), "-s", "base", "-b", "", "namingContexts"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success();
            if ok {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                let log =
                    std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default();
                anyhow::bail!("slapd did not start in 10 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Applies an LDIF file (adds, or `changetype:` records) as the directory manager.
    pub fn ldapmodify(&self, ldif: &Path) -> anyhow::Result<()> {
        run(Command::new("ldapmodify")
            .args(["-x", "-c", "-a", "-H", &self.url(), "-D", ADMIN_DN, "-w", ADMIN_PW, "-f"])
            .arg(ldif))
    }

    /// Applies LDIF text.
    pub fn apply(&self, ldif: &str) -> anyhow::Result<()> {
        let p = self.dir.path().join(format!("extra-{}.ldif", uuid::Uuid::new_v4().simple()));
        std::fs::write(&p, ldif)?;
        self.ldapmodify(&p)
    }

    /// Adds `n` users `user0000`.. with password `pw-<name>`, all in atrium-users.
    pub fn add_users(&self, prefix: &str, n: usize) -> anyhow::Result<Vec<(String, String)>> {
        let mut ldif = String::new();
        let mut members = String::new();
        let mut out = Vec::new();
        for i in 0..n {
            let uid = format!("{prefix}{i:04}");
            let pw = format!("pw-{uid}");
            ldif.push_str(&format!(
                "dn: uid={uid},ou=people,{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {pw}\n\n"
            ));
            members.push_str(&format!("member: uid={uid},ou=people,{BASE}\n"));
            out.push((uid, pw));
        }
        ldif.push_str(&format!(
            "dn: cn=atrium-users,ou=groups,{BASE}\nchangetype: modify\nadd: member\n{members}\n"
        ));
        self.apply(&ldif)?;
        Ok(out)
    }

    /// Pauses the server (SIGSTOP): connections hang, as with a directory that stopped answering.
    pub fn pause(&self) {
        send_signal(self.child.id(), libc::SIGSTOP);
    }

    pub fn resume(&self) {
        send_signal(self.child.id(), libc::SIGCONT);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        send_signal(self.child.id(), libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send_signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) with a pid we spawned and own; no memory is involved.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn find_slapd() -> anyhow::Result<PathBuf> {
    for p in ["/usr/sbin/slapd", "/usr/local/sbin/slapd"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    anyhow::bail!("slapd is not installed (Debian package `slapd`; scripts/test.sh installs it)")
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{:?} failed: {}{}",
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn config_ldif(dir: &Path, data: &Path, tls: bool) -> String {
    let d = dir.display();
    let tls_attrs = if tls {
        format!(
            "olcTLSCACertificateFile: {d}/ca.pem\nolcTLSCertificateFile: {d}/server.pem\nolcTLSCertificateKeyFile: {d}/server.key\n"
        )
    } else {
        String::new()
    };
    let schema = ["core", "cosine", "inetorgperson", "nis"]
        .iter()
        .map(|s| std::fs::read_to_string(format!("/etc/ldap/schema/{s}.ldif")).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let ad_schema = std::fs::read_to_string(workspace_root().join("tests/fixtures/ad-schema.ldif"))
        .unwrap_or_default();
    format!(
        "dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {d}/slapd.pid
olcArgsFile: {d}/slapd.args
{tls_attrs}
dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb
olcModuleLoad: memberof

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schema}
{ad_schema}
dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend
olcSizeLimit: 5000

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcRootDN: cn=config
olcRootPW: {ADMIN_PW}

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {BASE}
olcRootDN: {ADMIN_DN}
olcRootPW: {ADMIN_PW}
olcDbDirectory: {data}
olcDbMaxSize: 1073741824
olcDbIndex: objectClass eq
olcDbIndex: uid eq
olcDbIndex: member eq
olcDbIndex: memberUid eq
olcAccess: {{0}}to attrs=userPassword by anonymous auth by self write by * none
olcAccess: {{1}}to * by dn.exact=\"{SERVICE_DN}\" read by self read by * none

dn: olcOverlay={{0}}memberof,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcMemberOf
olcOverlay: {{0}}memberof
olcMemberOfRefInt: TRUE
olcMemberOfGroupOC: groupOfNames
olcMemberOfMemberAD: member
olcMemberOfMemberOfAD: memberOf
",
        data = data.display()
    )
}

/// A CA and a server certificate for 127.0.0.1 (IP SAN) and localhost, with openssl.
fn make_certs(dir: &Path) -> anyhow::Result<PathBuf> {
    let d = |f: &str| dir.join(f);
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Atrium Test CA",
            "-keyout",
        ])
        .arg(d("ca.key"))
        .arg("-out")
        .arg(d("ca.pem")))?;
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(d("server.key"))
        .arg("-out")
        .arg(d("server.csr")))?;
    std::fs::write(
        d("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )?;
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(d("server.csr"))
        .arg("-CA")
        .arg(d("ca.pem"))
        .arg("-CAkey")
        .arg(d("ca.key"))
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(d("ext.cnf"))
        .arg("-out")
        .arg(d("server.pem")))?;
    Ok(d("ca.pem"))
}
