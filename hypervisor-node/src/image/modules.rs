//! Kernel modules for an initramfs: which `.ko` files a set of wanted modules needs, in the
//! order to load them.
//!
//! Debian's kernel package ships no `modules.dep`, so the dependencies come from each module's
//! `.modinfo` section (`depends=a,b` and `softdep=pre: c`); a module listed in
//! `modules.builtin` needs no file.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::elf;

#[derive(Debug, Error)]
pub enum ModuleError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Elf { path: PathBuf, source: elf::ElfError },
    #[error("module {0:?} is neither in the kernel package nor built in")]
    Missing(String),
    #[error("module dependencies form a cycle through {0:?}")]
    Cycle(String),
}

/// What a module's `.modinfo` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub name: Option<String>,
    pub depends: Vec<String>,
    /// `softdep=pre:` modules: loaded first when they exist.
    pub pre: Vec<String>,
}

/// Parses a `.modinfo` section: NUL-separated `key=value` strings.
pub fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for entry in section.split(|&b| b == 0) {
        let Ok(entry) = std::str::from_utf8(entry) else { continue };
        let Some((key, value)) = entry.split_once('=') else { continue };
        match key {
            "name" => info.name = Some(canonical(value)),
            "depends" => {
                info.depends.extend(value.split(',').filter(|s| !s.is_empty()).map(canonical));
            }
            "softdep" => {
                // "pre: a b post: c"
                let mut pre = false;
                for word in value.split_whitespace() {
                    match word {
                        "pre:" => pre = true,
                        "post:" => pre = false,
                        m if pre => info.pre.push(canonical(m)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    info
}

/// Module names treat `-` and `_` alike; `_` is canonical.
pub fn canonical(name: &str) -> String {
    name.trim().replace('-', "_")
}

/// The modules of one unpacked kernel: `lib/modules/<version>/`.
#[derive(Debug)]
pub struct ModuleTree {
    files: HashMap<String, PathBuf>,
    builtin: HashSet<String>,
}

impl ModuleTree {
    /// Indexes the `.ko` files under `dir` by name, and reads `modules.builtin`.
    pub fn scan(dir: &Path) -> Result<Self, ModuleError> {
        let mut files = HashMap::new();
        let mut stack = vec![dir.join("kernel")];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d)
                .map_err(|source| ModuleError::Io { path: d.clone(), source })?;
            for entry in entries {
                let entry = entry.map_err(|source| ModuleError::Io { path: d.clone(), source })?;
                let path = entry.path();
                let ft = entry
                    .file_type()
                    .map_err(|source| ModuleError::Io { path: path.clone(), source })?;
                if ft.is_dir() {
                    stack.push(path);
                } else if let Some(stem) =
                    path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko"))
                {
                    files.insert(canonical(stem), path);
                }
            }
        }
        let builtin_path = dir.join("modules.builtin");
        let builtin = match std::fs::read_to_string(&builtin_path) {
            Ok(s) => s
                .lines()
                .filter_map(|l| Path::new(l.trim()).file_stem()?.to_str().map(canonical))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(source) => return Err(ModuleError::Io { path: builtin_path, source }),
        };
        Ok(Self { files, builtin })
    }

    fn info(&self, path: &Path) -> Result<ModInfo, ModuleError> {
        let bytes =
            std::fs::read(path).map_err(|source| ModuleError::Io { path: path.into(), source })?;
        let section = elf::section(&bytes, ".modinfo")
            .map_err(|source| ModuleError::Elf { path: path.into(), source })?;
        Ok(section.map(parse_modinfo).unwrap_or_default())
    }

    /// The files to load for `wanted`, dependencies first. Built-in modules are skipped; a
    /// `softdep` that names no module file is skipped too (it is only a hint).
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>, ModuleError> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        let mut visiting = HashSet::new();
        for w in wanted {
            self.visit(&canonical(w), true, &mut visiting, &mut done, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        required: bool,
        visiting: &mut HashSet<String>,
        done: &mut HashSet<String>,
        order: &mut Vec<(String, PathBuf)>,
    ) -> Result<(), ModuleError> {
        if done.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        let Some(path) = self.files.get(name) else {
            return if required { Err(ModuleError::Missing(name.into())) } else { Ok(()) };
        };
        if !visiting.insert(name.to_owned()) {
            return Err(ModuleError::Cycle(name.into()));
        }
        let info = self.info(path)?;
        for dep in &info.pre {
            self.visit(dep, false, visiting, done, order)?;
        }
        for dep in &info.depends {
            self.visit(dep, true, visiting, done, order)?;
        }
        visiting.remove(name);
        done.insert(name.to_owned());
        order.push((name.to_owned(), path.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_depends_and_softdeps() {
        let s = b"license=GPL\0depends=mbcache,crc16,jbd2\0softdep=pre: crc32c post: foo\0name=ext4\0\0";
        let i = parse_modinfo(s);
        assert_eq!(i.name.as_deref(), Some("ext4"));
        assert_eq!(i.depends, ["mbcache", "crc16", "jbd2"]);
        assert_eq!(i.pre, ["crc32c"]);
        let empty = parse_modinfo(b"depends=\0\xff\xfe=bad\0noequals\0");
        assert!(empty.depends.is_empty());
        assert_eq!(canonical("crc32c-intel"), "crc32c_intel");
    }

    /// Builds a fake module tree whose `.ko` files are tiny ELF files with a `.modinfo`
    /// section, made by the host's assembler (binutils is a test dependency of the project).
    fn fake_module(dir: &Path, name: &str, modinfo: &str) {
        let src = dir.join(format!("{name}.s"));
        let body: String = modinfo.split('\0').map(|e| format!(".asciz \"{e}\"\n")).collect();
        std::fs::write(&src, format!(".section .modinfo,\"a\"\n{body}")).expect("write asm");
        let out = dir.join("kernel").join(format!("{name}.ko"));
        let st = std::process::Command::new("as")
            .arg("--64")
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .status()
            .expect("run as (binutils)");
        assert!(st.success());
    }

    #[test]
    fn orders_dependencies_first_and_skips_builtins() {
        let dir = std::env::temp_dir().join(format!("atrium-modtree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("kernel")).expect("mkdir");
        fake_module(
            &dir,
            "ext4",
            "depends=mbcache,jbd2\0softdep=pre: crc32c_generic nothere\0name=ext4",
        );
        fake_module(&dir, "jbd2", "depends=\0name=jbd2");
        fake_module(&dir, "mbcache", "depends=\0name=mbcache");
        fake_module(&dir, "crc32c_generic", "depends=\0name=crc32c_generic");
        fake_module(&dir, "bochs", "depends=drm,virtio\0name=bochs");
        fake_module(&dir, "loop_a", "depends=loop-b\0name=loop_a");
        fake_module(&dir, "loop_b", "depends=loop_a\0name=loop_b");
        std::fs::write(dir.join("modules.builtin"), "kernel/drivers/virtio/virtio.ko\n")
            .expect("w");

        let tree = ModuleTree::scan(&dir).expect("scan");
        let order: Vec<String> =
            tree.load_order(&["ext4"]).expect("order").into_iter().map(|(n, _)| n).collect();
        assert_eq!(order, ["crc32c_generic", "mbcache", "jbd2", "ext4"]);

        match tree.load_order(&["bochs"]) {
            Err(ModuleError::Missing(m)) => assert_eq!(m, "drm"),
            other => panic!("expected drm missing, got {other:?}"),
        }
        assert!(matches!(tree.load_order(&["loop_a"]), Err(ModuleError::Cycle(_))));
        assert!(matches!(tree.load_order(&["nope"]), Err(ModuleError::Missing(_))));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
