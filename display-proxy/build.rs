//! Links Debian's libopus (`libopus-dev`) statically: the display proxy encodes desktop sound
//! with it, and no machine that runs the proxy needs the library installed.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=ATRIUM_OPUS_LIB_DIR");
    let candidates: Vec<PathBuf> = std::env::var_os("ATRIUM_OPUS_LIB_DIR")
        .map(|d| vec![PathBuf::from(d)])
        .unwrap_or_else(|| {
            let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
            [
                format!("/usr/lib/{arch}-linux-gnu"),
                "/usr/lib64".into(),
                "/usr/lib".into(),
                "/usr/local/lib".into(),
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect()
        });
    let Some(dir) = candidates.iter().find(|d| Path::new(d).join("libopus.a").is_file()) else {
        panic!(
            "libopus.a not found in {candidates:?}: install libopus-dev (apt-get install \
             libopus-dev), or set ATRIUM_OPUS_LIB_DIR to the folder that holds it"
        );
    };
    println!("cargo:rerun-if-changed={}", dir.join("libopus.a").display());
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=static=opus");
}
