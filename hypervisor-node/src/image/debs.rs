//! Debian packages through the machine's own apt: `apt-cache show` to resolve a name to a
//! version and checksum, `apt-get download` to fetch the `.deb` (into a cache, checked against
//! the archive's SHA-256), `dpkg -x` to unpack it. Nothing comes from anywhere else.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DebError {
    #[error("running {command}: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("{command} failed ({status}): {stderr}")]
    Failed { command: String, status: String, stderr: String },
    #[error("apt knows no package {0:?} (is it in the configured Debian suites?)")]
    Unknown(String),
    #[error("apt's record for {package} has no {field} field")]
    MissingField { package: String, field: &'static str },
    #[error("{package} has no dependency on a linux-image-*-amd64 package")]
    NoKernel { package: String },
    #[error("{path}: sha256 {actual} does not match the archive's {expected}")]
    Checksum { path: PathBuf, expected: String, actual: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "apt's package lists are missing and `apt-get update` needs root: run `sudo apt-get update`"
    )]
    NoLists,
}

/// One package at one version, as apt describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub sha256: String,
    /// Path in the archive (its base name is the `.deb` file name).
    pub filename: String,
    pub depends: String,
    /// `Pre-Depends` (needed before the package is configured; here, like `Depends`).
    pub pre_depends: String,
    /// Virtual packages this one provides (`Provides`, without versions).
    pub provides: Vec<String>,
    /// `Installed-Size` in KiB.
    pub installed_kib: u64,
}

fn run(cmd: &mut Command) -> Result<String, DebError> {
    let command = format!("{cmd:?}");
    let out =
        cmd.output().map_err(|source| DebError::Spawn { command: command.clone(), source })?;
    if !out.status.success() {
        return Err(DebError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().chars().take(2000).collect(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `apt-get update` when the machine has no package lists yet.
pub fn ensure_lists(lists_dir: &Path) -> Result<(), DebError> {
    let has_lists = std::fs::read_dir(lists_dir)
        .map(|d| {
            d.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false);
    if has_lists {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(DebError::NoLists);
    }
    tracing::info!("apt package lists are missing: running apt-get update");
    run(Command::new("apt-get").args(["update", "-q"]))?;
    Ok(())
}

/// Parses the first stanza of `apt-cache show --no-all-versions` output.
pub fn parse_show(name: &str, text: &str) -> Result<Package, DebError> {
    parse_stanza(name, text.split("\n\n").next().unwrap_or_default())
}

/// Parses every stanza of `apt-cache show --no-all-versions A B ...` output.
pub fn parse_show_all(text: &str) -> Result<Vec<Package>, DebError> {
    text.split("\n\n")
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse_stanza("(stanza)", s))
        .collect()
}

fn parse_stanza(name: &str, stanza: &str) -> Result<Package, DebError> {
    let field = |key: &'static str| -> Result<String, DebError> {
        let mut value: Option<String> = None;
        for line in stanza.lines() {
            if let Some(v) = value.as_mut() {
                // Continuation lines start with a space.
                if line.starts_with(' ') {
                    v.push_str(line);
                    continue;
                }
                break;
            }
            if let Some(rest) = line.strip_prefix(key).and_then(|r| r.strip_prefix(':')) {
                value = Some(rest.trim().to_owned());
            }
        }
        value.ok_or(DebError::MissingField { package: name.to_owned(), field: key })
    };
    if stanza.trim().is_empty() {
        return Err(DebError::Unknown(name.to_owned()));
    }
    Ok(Package {
        name: field("Package")?,
        version: field("Version")?,
        sha256: field("SHA256")?,
        filename: field("Filename")?,
        depends: field("Depends").unwrap_or_default(),
        pre_depends: field("Pre-Depends").unwrap_or_default(),
        provides: field("Provides")
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| p.split_whitespace().next())
            .map(str::to_owned)
            .collect(),
        installed_kib: field("Installed-Size").ok().and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

/// Resolves many package names at once (one `apt-cache` run). Names apt has no candidate for
/// (unknown, or purely virtual) are missing from the answer.
pub fn resolve_many(names: &[String]) -> Result<Vec<Package>, DebError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", "--"])
        .args(names)
        .output()
        .map_err(|source| DebError::Spawn { command: "apt-cache show".into(), source })?;
    // apt-cache fails for a name it does not know, and still prints the others.
    parse_show_all(&String::from_utf8_lossy(&out.stdout))
}

/// The packages that provide the virtual package `name` (`apt-cache showpkg`, "Reverse
/// Provides"), first listed first.
pub fn providers(name: &str) -> Result<Vec<String>, DebError> {
    let text = run(Command::new("apt-cache").args(["showpkg", "--", name]))?;
    Ok(parse_reverse_provides(&text))
}

/// The package names under `Reverse Provides:` in `apt-cache showpkg` output.
pub fn parse_reverse_provides(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("Reverse Provides:") {
            inside = true;
            continue;
        }
        // The last section: each line is `name version (= ...)`.
        if inside {
            let Some(name) = line.split_whitespace().next() else { continue };
            if !out.iter().any(|n| n == name) {
                out.push(name.to_owned());
            }
        }
    }
    out
}

/// Resolves a package name to the version apt would install.
pub fn resolve(name: &str) -> Result<Package, DebError> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", name])
        .output()
        .map_err(|source| DebError::Spawn { command: "apt-cache show".into(), source })?;
    if !out.status.success() {
        return Err(DebError::Unknown(name.to_owned()));
    }
    parse_show(name, &String::from_utf8_lossy(&out.stdout))
}

/// The versioned kernel package a meta package (`linux-image-amd64`) depends on.
pub fn kernel_package_of(meta: &Package) -> Result<String, DebError> {
    meta.depends
        .split(',')
        .flat_map(|alt| alt.split('|'))
        .map(|d| d.split_whitespace().next().unwrap_or_default())
        .find(|d| d.starts_with("linux-image-") && d.ends_with("-amd64"))
        .map(str::to_owned)
        .ok_or_else(|| DebError::NoKernel { package: meta.name.clone() })
}

pub fn sha256_file(path: &Path) -> Result<String, DebError> {
    let mut f =
        std::fs::File::open(path).map_err(|source| DebError::Io { path: path.into(), source })?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|source| DebError::Io { path: path.into(), source })?;
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The `.deb` of `pkg` in `cache`, downloaded when missing or damaged.
pub fn download(pkg: &Package, cache: &Path) -> Result<PathBuf, DebError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DebError::Io { path, source }
    };
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    let base = pkg.filename.rsplit('/').next().unwrap_or(&pkg.filename);
    let dest = cache.join(base);
    if dest.exists() && sha256_file(&dest)? == pkg.sha256 {
        return Ok(dest);
    }
    let tmp = cache.join(format!(".download-{}-{}", std::process::id(), pkg.name));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = run(Command::new("apt-get")
        .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
        .arg(format!("{}={}", pkg.name, pkg.version))
        .current_dir(&tmp));
    let fetched = result.and_then(|_| {
        let file = std::fs::read_dir(&tmp)
            .map_err(io(&tmp))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| DebError::Failed {
                command: format!("apt-get download {}", pkg.name),
                status: "ok".into(),
                stderr: "no .deb file was written".into(),
            })?;
        let actual = sha256_file(&file)?;
        if actual != pkg.sha256 {
            return Err(DebError::Checksum { path: file, expected: pkg.sha256.clone(), actual });
        }
        std::fs::rename(&file, &dest).map_err(io(&dest))
    });
    let _ = std::fs::remove_dir_all(&tmp);
    fetched.map(|()| dest)
}

/// Unpacks a `.deb`'s files into `dest` (no maintainer scripts run).
pub fn unpack(deb: &Path, dest: &Path) -> Result<(), DebError> {
    std::fs::create_dir_all(dest).map_err(|source| DebError::Io { path: dest.into(), source })?;
    run(Command::new("dpkg").arg("-x").arg(deb).arg(dest))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "Package: linux-image-amd64\nSource: linux-signed-amd64 (6.1.192+2)\n\
Version: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\nDescription: Linux\n \
more text\nFilename: pool/main/l/linux-signed-amd64/linux-image-amd64_6.1.192-2_amd64.deb\n\
SHA256: abcd\n\nPackage: linux-image-amd64\nVersion: 6.1.176-1\n";

    #[test]
    fn parses_apt_cache_show() {
        let p = parse_show("linux-image-amd64", SHOW).expect("parse");
        assert_eq!(p.version, "6.1.192-2");
        assert_eq!(p.sha256, "abcd");
        assert!(p.filename.ends_with("_amd64.deb"));
        assert_eq!(kernel_package_of(&p).expect("kernel"), "linux-image-6.1.0-56-amd64");
        assert!(matches!(parse_show("x", ""), Err(DebError::Unknown(_))));
        assert!(matches!(
            parse_show("x", "Package: x\nVersion: 1\n"),
            Err(DebError::MissingField { field: "SHA256", .. })
        ));
        let no_kernel = Package { depends: "libc6 (>= 2.3)".into(), ..p };
        assert!(kernel_package_of(&no_kernel).is_err());
    }

    #[test]
    fn parses_every_stanza_with_provides_and_pre_depends() {
        let text = "Package: xterm\nVersion: 379-1\nInstalled-Size: 2456\nProvides: \
x-terminal-emulator, xterm-x (= 1)\nPre-Depends: libc6 (>= 2.34)\nDepends: xbitmaps, libx11-6\n\
Filename: pool/x.deb\nSHA256: 11\n\nPackage: xbitmaps\nVersion: 1.1\nFilename: pool/b.deb\n\
SHA256: 22\n\n";
        let all = parse_show_all(text).expect("parse");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].provides, ["x-terminal-emulator", "xterm-x"]);
        assert_eq!(all[0].pre_depends, "libc6 (>= 2.34)");
        assert_eq!(all[0].installed_kib, 2456);
        assert_eq!(all[1].name, "xbitmaps");
        assert!(all[1].provides.is_empty());
        assert!(parse_show_all("Package: broken\n").is_err());
    }

    #[test]
    fn parses_reverse_provides() {
        let text = "Package: libglx-vendor\nVersions: \n\nReverse Depends: \n  libglx0,libglx-vendor\n\
Dependencies: \nProvides: \nReverse Provides: \nlibglx-mesa0 22.3.6-1+deb12u1 (= )\n\
libglx-mesa0 22.3.6-1+deb12u2 (= )\nlibglx-nvidia0 1.0 (= )\n";
        assert_eq!(parse_reverse_provides(text), ["libglx-mesa0", "libglx-nvidia0"]);
        assert!(parse_reverse_provides("Package: x\nReverse Provides: \n").is_empty());
    }

    #[test]
    fn hashes_files() {
        let path = std::env::temp_dir().join(format!("atrium-sha-{}", std::process::id()));
        std::fs::write(&path, b"abc").expect("write");
        assert_eq!(
            sha256_file(&path).expect("hash"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::remove_file(&path).expect("cleanup");
    }
}
