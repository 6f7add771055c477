//! Builds the test firmware (firmware/start.S + firmware/fw.c) into a flat binary with the
//! machine's gcc and binutils. The VMM crate embeds it (`atrium_vmm::firmware::TEST_FIRMWARE`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run {shown}: {e} (the test firmware needs gcc and binutils: apt-get install gcc binutils)")
    });
    assert!(status.success(), "{shown} failed with {status}");
}

fn main() {
    let src = Path::new("firmware");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for f in ["start.S", "fw.c", "fw.ld"] {
        println!("cargo:rerun-if-changed=firmware/{f}");
    }
    println!("cargo:rerun-if-env-changed=CC");
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".to_owned());
    let flags = [
        "-m64",
        "-O2",
        "-ffreestanding",
        "-nostdlib",
        "-mno-red-zone",
        "-fno-pic",
        "-fno-pie",
        "-mgeneral-regs-only",
        "-fno-stack-protector",
        "-fno-asynchronous-unwind-tables",
        "-fno-builtin",
        "-fcf-protection=none",
        "-Wall",
        "-Wextra",
        "-Werror",
    ];
    let start_o = out.join("start.o");
    let fw_o = out.join("fw.o");
    let elf = out.join("atrium-test-fw.elf");
    let bin = out.join("atrium-test-fw.bin");
    run(Command::new(&cc).args(["-m64", "-c"]).arg(src.join("start.S")).arg("-o").arg(&start_o));
    run(Command::new(&cc).args(flags).arg("-c").arg(src.join("fw.c")).arg("-o").arg(&fw_o));
    run(Command::new("ld")
        .args(["-nostdlib", "-static", "-no-pie", "--build-id=none", "-T"])
        .arg(src.join("fw.ld"))
        .arg(&start_o)
        .arg(&fw_o)
        .arg("-o")
        .arg(&elf));
    run(Command::new("objcopy").args(["-O", "binary"]).arg(&elf).arg(&bin));
}
