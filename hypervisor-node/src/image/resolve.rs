//! The dependency closure of a few Debian packages: every package `dpkg -x` must unpack for
//! them to run, from apt's own records (`Depends` and `Pre-Depends`).
//!
//! Versions are apt's candidates (one consistent Debian release), so version constraints are not
//! checked again. Of alternatives (`a | b`), one already chosen wins, else the first apt has. A
//! virtual package is satisfied by a chosen package that provides it, else by its first
//! provider. Packages named in `excluded` are left out on purpose, and a dependency that names
//! one is taken as met: the image builder checks afterwards that every program's libraries are
//! there (`desktop::check_libraries`).

use std::collections::{BTreeMap, HashMap, HashSet};

use thiserror::Error;

use super::debs::{self, DebError, Package};

#[derive(Debug, Error)]
pub enum ResolveError {
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error("apt knows no package {0:?}")]
    Unknown(String),
    #[error("{0:?} is both wanted and excluded")]
    Excluded(String),
    #[error("{package} depends on {dependency}, which apt cannot provide")]
    Unsatisfiable { package: String, dependency: String },
}

/// Where package records come from: apt on this machine, or a fixed set in tests.
pub trait Archive {
    /// The candidate records of `names`; names without a candidate are left out.
    fn show(&mut self, names: &[String]) -> Result<Vec<Package>, DebError>;
    /// The packages providing the virtual package `name`.
    fn providers(&mut self, name: &str) -> Result<Vec<String>, DebError>;
}

/// The machine's apt.
#[derive(Debug, Default)]
pub struct Apt;

impl Archive for Apt {
    fn show(&mut self, names: &[String]) -> Result<Vec<Package>, DebError> {
        // Keep command lines short.
        let mut out = Vec::new();
        for chunk in names.chunks(200) {
            out.extend(debs::resolve_many(chunk)?);
        }
        Ok(out)
    }

    fn providers(&mut self, name: &str) -> Result<Vec<String>, DebError> {
        debs::providers(name)
    }
}

/// The alternatives of each dependency in a `Depends`-style field, names only
/// (`a (>= 1) | b:any, c` gives `[[a, b], [c]]`).
pub fn parse_depends(field: &str) -> Vec<Vec<String>> {
    field
        .split(',')
        .map(|group| {
            group
                .split('|')
                .filter_map(|alt| alt.split_whitespace().next())
                .map(|name| name.split(':').next().unwrap_or(name).to_owned())
                .filter(|n| !n.is_empty())
                .collect::<Vec<String>>()
        })
        .filter(|g| !g.is_empty())
        .collect()
}

/// Package records by name, looked up once; `None` for a name without a candidate.
struct Records<'a> {
    archive: &'a mut dyn Archive,
    known: HashMap<String, Option<Package>>,
}

impl Records<'_> {
    fn fetch(&mut self, names: &[String]) -> Result<(), DebError> {
        let mut wanted: Vec<String> =
            names.iter().filter(|n| !self.known.contains_key(*n)).cloned().collect();
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        for p in self.archive.show(&wanted)? {
            self.known.insert(p.name.clone(), Some(p));
        }
        for n in wanted {
            self.known.entry(n).or_insert(None);
        }
        Ok(())
    }

    fn get(&self, name: &str) -> Option<&Package> {
        self.known.get(name).and_then(Option::as_ref)
    }
}

/// The closure of `roots` without `excluded`, sorted by name.
pub fn closure(
    archive: &mut dyn Archive,
    roots: &[&str],
    excluded: &[&str],
) -> Result<Vec<Package>, ResolveError> {
    let excluded: HashSet<&str> = excluded.iter().copied().collect();
    if let Some(r) = roots.iter().find(|r| excluded.contains(**r)) {
        return Err(ResolveError::Excluded((*r).to_owned()));
    }
    let mut records = Records { archive, known: HashMap::new() };
    let root_names: Vec<String> = roots.iter().map(|r| (*r).to_owned()).collect();
    records.fetch(&root_names)?;

    let mut selected: BTreeMap<String, Package> = BTreeMap::new();
    // Virtual package -> a selected package that provides it.
    let mut provided: HashMap<String, String> = HashMap::new();
    // Dependencies still to satisfy: (who needs it, alternatives).
    let mut pending: Vec<(String, Vec<String>)> = Vec::new();
    let mut next: Vec<Package> = Vec::new();
    for r in &root_names {
        next.push(records.get(r).cloned().ok_or_else(|| ResolveError::Unknown(r.clone()))?);
    }
    loop {
        for p in next.drain(..) {
            if selected.contains_key(&p.name) {
                continue;
            }
            for v in &p.provides {
                provided.entry(v.clone()).or_insert_with(|| p.name.clone());
            }
            for group in parse_depends(&p.pre_depends).into_iter().chain(parse_depends(&p.depends))
            {
                pending.push((p.name.clone(), group));
            }
            selected.insert(p.name.clone(), p);
        }
        if pending.is_empty() {
            break;
        }
        let lookups: Vec<String> = pending
            .iter()
            .flat_map(|(_, g)| g.iter())
            .filter(|n| !excluded.contains(n.as_str()))
            .cloned()
            .collect();
        records.fetch(&lookups)?;
        for (by, group) in std::mem::take(&mut pending) {
            let met = |name: &String, next: &[Package]| {
                excluded.contains(name.as_str())
                    || selected.contains_key(name)
                    || provided.contains_key(name)
                    || next.iter().any(|p| &p.name == name || p.provides.contains(name))
            };
            if group.iter().any(|n| met(n, &next)) {
                continue;
            }
            if let Some(p) = group.iter().find_map(|n| records.get(n)) {
                next.push(p.clone());
                continue;
            }
            // Only virtual packages: their providers.
            let mut chosen = None;
            'virtual_names: for name in &group {
                let providers = records.archive.providers(name)?;
                records.fetch(&providers)?;
                for prov in &providers {
                    if excluded.contains(prov.as_str()) {
                        continue;
                    }
                    if let Some(p) = records.get(prov) {
                        chosen = Some(p.clone());
                        break 'virtual_names;
                    }
                }
            }
            match chosen {
                Some(p) => next.push(p),
                None => {
                    return Err(ResolveError::Unsatisfiable {
                        package: by,
                        dependency: group.join(" | "),
                    });
                }
            }
        }
        if next.is_empty() {
            break;
        }
    }
    Ok(selected.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small archive: name, depends, provides.
    struct Fake {
        packages: Vec<Package>,
        shows: usize,
    }

    fn pkg(name: &str, depends: &str, provides: &[&str]) -> Package {
        Package {
            name: name.into(),
            version: "1".into(),
            sha256: "0".into(),
            filename: format!("pool/{name}_1_amd64.deb"),
            depends: depends.into(),
            pre_depends: String::new(),
            provides: provides.iter().map(|p| (*p).to_owned()).collect(),
            installed_kib: 1,
        }
    }

    impl Archive for Fake {
        fn show(&mut self, names: &[String]) -> Result<Vec<Package>, DebError> {
            self.shows += 1;
            Ok(self.packages.iter().filter(|p| names.contains(&p.name)).cloned().collect())
        }

        fn providers(&mut self, name: &str) -> Result<Vec<String>, DebError> {
            Ok(self
                .packages
                .iter()
                .filter(|p| p.provides.iter().any(|v| v == name))
                .map(|p| p.name.clone())
                .collect())
        }
    }

    fn archive() -> Fake {
        let mut pre = pkg("libc6", "libgcc-s1", &[]);
        pre.pre_depends = String::new();
        let mut xterm = pkg("xterm", "libx11-6 (>= 2), xbitmaps", &["x-terminal-emulator"]);
        xterm.pre_depends = "libc6 (>= 2.34)".into();
        Fake {
            packages: vec![
                pre,
                pkg("libgcc-s1", "", &[]),
                pkg("libx11-6", "libc6, libx11-data", &[]),
                pkg("libx11-data", "", &[]),
                pkg("xbitmaps", "", &[]),
                xterm,
                pkg("rxvt-unicode", "libc6, perl", &["x-terminal-emulator"]),
                pkg("perl", "perl-base", &[]),
                pkg("perl-base", "", &[]),
                pkg("jwm", "rxvt-unicode | x-terminal-emulator, libc6, librsvg2-2:any", &[]),
                pkg("librsvg2-2", "libc6", &[]),
                pkg("xorg", "udev (>= 149), libc6, libgl1", &[]),
                pkg("udev", "libc6, adduser", &[]),
                pkg("libgl1", "libglx0", &[]),
                pkg("libglx0", "libglx-mesa0 | libglx-vendor", &[]),
                pkg("libglx-mesa0", "libllvm", &["libglx-vendor"]),
                pkg("libllvm", "", &[]),
                pkg("app", "virtual-thing", &[]),
                pkg("thing-a", "", &["virtual-thing"]),
                pkg("broken", "nowhere", &[]),
            ],
            shows: 0,
        }
    }

    fn names(p: &[Package]) -> Vec<&str> {
        p.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn takes_depends_and_pre_depends_and_prefers_chosen_alternatives() {
        let mut a = archive();
        let c = closure(&mut a, &["xterm", "jwm"], &[]).expect("closure");
        // jwm's terminal is met by xterm (it provides x-terminal-emulator): no rxvt, no perl.
        assert_eq!(
            names(&c),
            [
                "jwm",
                "libc6",
                "libgcc-s1",
                "librsvg2-2",
                "libx11-6",
                "libx11-data",
                "xbitmaps",
                "xterm"
            ]
        );
        // Looked up level by level, not one package at a time.
        assert!(a.shows <= 4, "{} apt-cache runs", a.shows);
    }

    #[test]
    fn excluded_packages_are_left_out_with_what_only_they_need() {
        let mut a = archive();
        let c = closure(&mut a, &["xorg"], &["udev", "libglx-mesa0"]).expect("closure");
        assert_eq!(names(&c), ["libc6", "libgcc-s1", "libgl1", "libglx0", "xorg"]);
        let c = closure(&mut a, &["xorg"], &["udev"]).expect("closure");
        assert!(names(&c).contains(&"libllvm"), "the GL driver comes back without its exclusion");
        // Without the exclusion, udev needs adduser, which this archive does not have.
        assert!(matches!(closure(&mut a, &["udev"], &[]), Err(ResolveError::Unsatisfiable { .. })));
        assert!(matches!(closure(&mut a, &["udev"], &["udev"]), Err(ResolveError::Excluded(_))));
    }

    #[test]
    fn virtual_packages_take_their_provider() {
        let mut a = archive();
        let c = closure(&mut a, &["app"], &[]).expect("closure");
        assert_eq!(names(&c), ["app", "thing-a"]);
        match closure(&mut a, &["broken"], &[]) {
            Err(ResolveError::Unsatisfiable { package, dependency }) => {
                assert_eq!((package.as_str(), dependency.as_str()), ("broken", "nowhere"));
            }
            other => panic!("expected unsatisfiable, got {other:?}"),
        }
        assert!(matches!(closure(&mut a, &["nothing"], &[]), Err(ResolveError::Unknown(_))));
    }

    #[test]
    fn parses_dependency_fields() {
        assert_eq!(
            parse_depends("a (>= 1) | b:any, c,, d [amd64]"),
            vec![vec!["a".to_owned(), "b".to_owned()], vec!["c".to_owned()], vec!["d".to_owned()]]
        );
        assert!(parse_depends("").is_empty());
    }
}
