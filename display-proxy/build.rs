//! Links Debian's libopus (`libopus-dev`) and libvpx (`libvpx-dev`) statically: the display
//! proxy encodes desktop sound with the first and moving regions (VP8) with the second, and no
//! machine that runs the proxy needs the libraries installed. libvpx is reached through a small
//! C shim (`src/video/vp8.c`) that keeps its version-dependent structures on the C side.

use std::path::{Path, PathBuf};

/// The folder holding `lib{name}.a`: `$ATRIUM_{NAME}_LIB_DIR`, else the usual system folders.
fn static_lib_dir(name: &str, package: &str) -> PathBuf {
    let var = format!("ATRIUM_{}_LIB_DIR", name.to_uppercase());
    println!("cargo:rerun-if-env-changed={var}");
    let candidates: Vec<PathBuf> = std::env::var_os(&var).map_or_else(
        || {
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
        },
        |d| vec![PathBuf::from(d)],
    );
    let file = format!("lib{name}.a");
    let Some(dir) = candidates.iter().find(|d| Path::new(d).join(&file).is_file()) else {
        panic!(
            "{file} not found in {candidates:?}: install {package} (apt-get install {package}), \
             or set {var} to the folder that holds it"
        );
    };
    println!("cargo:rerun-if-changed={}", dir.join(&file).display());
    dir.clone()
}

fn main() {
    let opus = static_lib_dir("opus", "libopus-dev");
    let vpx = static_lib_dir("vpx", "libvpx-dev");
    println!("cargo:rerun-if-changed=src/video/vp8.c");
    // The shim first: the linker then finds libvpx's symbols it uses.
    cc::Build::new().file("src/video/vp8.c").warnings(true).compile("atrium_vp8");
    for dir in [&opus, &vpx] {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
    println!("cargo:rustc-link-lib=static=opus");
    println!("cargo:rustc-link-lib=static=vpx");
}
