//! The web client's own unit tests (`web-client/js/**/*.test.mjs`), run with Node's test
//! runner (Debian's `nodejs`, which the test command installs).

use atrium_tests::util::workspace_root;

#[test]
fn the_web_clients_unit_tests_pass() {
    let root = workspace_root().join("web-client/js");
    let mut files = Vec::new();
    let mut dirs = vec![root];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("web-client/js") {
            let p = e.expect("a folder entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.to_string_lossy().ends_with(".test.mjs") {
                files.push(p);
            }
        }
    }
    assert!(!files.is_empty(), "no *.test.mjs under web-client/js");
    let out = std::process::Command::new("node")
        .arg("--test")
        .args(&files)
        .output()
        .expect("node (Debian package `nodejs`; scripts/test.sh installs it)");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "node --test failed:\n{text}");
    assert!(text.contains("# fail 0"), "{text}");
}
