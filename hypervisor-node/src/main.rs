//! `atrium-node`: the node agent of an Atrium KVM host, and the operator's tools for it.
//!
//! Each command is one variant of [`Command`] with its own arguments struct; adding a command
//! is adding a variant and a match arm.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use atrium_node::config::NodeConfig;
use atrium_node::image::Firmware;
use atrium_node::image::build::{self, BuildOptions, ImageKind};
use atrium_node::image::import::{self, ImportOptions, SourceFormat};
use atrium_node::run::{RunError, RunOptions};
use atrium_node::{bench, server};
use atrium_protocol::agent::SessionUser;
use atrium_protocol::node::{DisplaySize, RuntimeKind};
use clap::{Args, Parser, Subcommand};

mod vmm_cli;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Parser)]
#[command(name = "atrium-node", version, about = "Atrium's node agent: desktop VMs on this host")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Guest images: build one from Debian packages, or print its content key.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Run one VM in this process with the builtin VMM (the builtin runtime starts one per VM).
    Vmm(vmm_cli::VmmArgs),
    /// Serve the node API: run desktop VMs for the broker.
    Serve(ServeArgs),
    /// Boot one VM from an image folder, wait for its agent, take a screenshot, print a JSON
    /// line, clean up.
    Run(RunArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The qemu runtime: VM start to agent-ready (median of N, beside a bare
    /// qemu-system-x86_64 in the same run) and memory per VM beyond guest memory.
    Qemu(BenchQemuArgs),
    /// Instant clones: a VM started as a clone of a template against the same VM booted
    /// (start to agent-ready, and the memory of one more idle VM), interleaved in one run.
    Clone(BenchCloneArgs),
    #[command(flatten)]
    Vmm(vmm_cli::BenchCommand),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The configuration file (TOML; docs/configuration.md).
    #[arg(long)]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The image folder (with manifest.json).
    #[arg(long)]
    image: PathBuf,
    #[arg(long, value_parser = parse_runtime)]
    runtime: Option<RuntimeKind>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Display size, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x800")]
    display: DisplaySize,
    /// Stop once the guest agent is ready (else run until Ctrl-C).
    #[arg(long)]
    until_ready: bool,
    /// Write a PNG of the screen once ready.
    #[arg(long)]
    screenshot: Option<PathBuf>,
    /// Seconds to wait for ready.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Run without a cgroup (when this user cannot make one).
    #[arg(long)]
    no_cgroup: bool,
    /// Sign this user in once ready and wait for the session (desktop images).
    #[arg(long)]
    user: Option<String>,
}

#[derive(Debug, Args)]
struct BenchQemuArgs {
    /// The image folder (default: the console image in ~/.cache/atrium/images/console).
    #[arg(long)]
    image: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value_t = 256)]
    memory: u32,
    #[arg(long, default_value = "1024x768")]
    display: DisplaySize,
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Sign this user in once ready and time the session (desktop images); memory is then
    /// measured with the session on screen.
    #[arg(long)]
    user: Option<String>,
}

#[derive(Debug, Args)]
struct BenchCloneArgs {
    /// The image folder (default: the desktop image in ~/.cache/atrium/images/desktop).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Boot the same VM too, interleaved, and give the ratios.
    #[arg(long)]
    vs_boot: bool,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// VMs of each kind (clones, boots) held at once for their memory (at least 2).
    #[arg(long, default_value_t = 4)]
    fill: usize,
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    #[arg(long, default_value = "1280x800")]
    display: DisplaySize,
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// A signed-in user for `--user` (a name only, as a directory without POSIX ids gives).
fn session_user(name: Option<String>) -> anyhow::Result<Option<SessionUser>> {
    let Some(username) = name else { return Ok(None) };
    let user =
        SessionUser { username, display_name: None, uid: None, gid: None, keyboard_layout: None };
    user.validate().map_err(|e| anyhow::anyhow!("--user: {e}"))?;
    Ok(Some(user))
}

fn parse_runtime(s: &str) -> Result<RuntimeKind, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build an image directory from Debian packages (apt-get download, dpkg -x).
    Build(ImageBuildArgs),
    /// Print the content key of the image `build` would make (packages, agent, builder).
    Key(ImageKeyArgs),
    /// Import an operator's own disk image (qcow2, raw, VMDK or VHDX), booted by UEFI or BIOS,
    /// into the node's images as NAME@VERSION (docs/images.md).
    Import(ImageImportArgs),
}

#[derive(Debug, Args)]
struct ImageImportArgs {
    /// The disk image file.
    file: PathBuf,
    #[arg(long)]
    name: String,
    #[arg(long)]
    version: String,
    /// How the disk boots: `uefi` (OVMF) or `bios` (SeaBIOS).
    #[arg(long)]
    firmware: Firmware,
    /// The file's format (`qcow2`, `vmdk`, `vhdx` or `raw`), when you know it: a raw disk whose
    /// first bytes look like another format's is read as raw (default: told by those bytes).
    #[arg(long)]
    format: Option<SourceFormat>,
    /// UEFI Secure Boot, with Microsoft's keys enrolled.
    #[arg(long)]
    secure_boot: bool,
    /// A virtual TPM 2.0 per VM (swtpm), as Windows 11 requires.
    #[arg(long)]
    tpm: bool,
    /// Atrium's guest agent is installed in the image (docs/images.md).
    #[arg(long)]
    agent: bool,
    /// The least memory a VM of it may have, in MiB.
    #[arg(long, default_value_t = 1024)]
    min_memory: u32,
    /// The node's images folder (`[node] images_dir`); the image goes to NAME/VERSION in it.
    #[arg(long, default_value = "/var/lib/atrium-node/images")]
    images_dir: PathBuf,
    #[arg(long, default_value = "qemu-img")]
    qemu_img: PathBuf,
}

#[derive(Debug, Args)]
struct ImageBuildArgs {
    #[arg(long, value_enum)]
    kind: ImageKind,
    /// The image directory to write.
    #[arg(long)]
    out: PathBuf,
    /// Image name (default: the kind).
    #[arg(long)]
    name: Option<String>,
    /// Image version (default: YYYYMMDD-<content key>).
    #[arg(long)]
    version: Option<String>,
    /// The guest agent binary (default: atrium-guest-agent beside this program).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Where downloaded packages are cached (default: ~/.cache/atrium/debs).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct ImageKeyArgs {
    #[arg(long, value_enum)]
    kind: ImageKind,
    #[arg(long)]
    agent: Option<PathBuf>,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ATRIUM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// `~/.cache/atrium` (or `$ATRIUM_CACHE`).
fn cache_root() -> PathBuf {
    if let Some(c) = std::env::var_os("ATRIUM_CACHE") {
        return PathBuf::from(c);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/atrium")
}

/// The guest agent beside this program (`cargo build` puts both in one folder).
fn default_agent() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating atrium-node")?;
    Ok(exe.with_file_name("atrium-guest-agent"))
}

fn image_build(a: ImageBuildArgs) -> anyhow::Result<()> {
    let agent = match a.agent {
        Some(p) => p,
        None => default_agent()?,
    };
    let opts = BuildOptions {
        kind: a.kind,
        name: a.name,
        version: a.version,
        out: a.out,
        agent,
        cache_dir: a.cache.unwrap_or_else(|| cache_root().join("debs")),
        force: a.force,
    };
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let image = build::build(&opts, &bar);
    bar.finish_and_clear();
    let image = image.context("building the image")?;
    println!(
        "built {} ({} kind, key {}) in {}",
        image.manifest.reference(),
        image.manifest.kind,
        image.manifest.content_key,
        image.dir.display()
    );
    Ok(())
}

fn image_import(a: ImageImportArgs) -> anyhow::Result<()> {
    let opts = ImportOptions {
        out: a.images_dir.join(&a.name).join(&a.version),
        source: a.file,
        name: a.name,
        version: a.version,
        firmware: a.firmware,
        format: a.format,
        secure_boot: a.secure_boot,
        tpm: a.tpm,
        agent: a.agent,
        min_memory_mib: a.min_memory,
        qemu_img: a.qemu_img,
    };
    let image = import::import(&opts).context("importing the image")?;
    let m = &image.manifest;
    let disk = m.disk.as_ref().map_or(0, |d| d.size_mib);
    println!(
        "imported {} ({} firmware{}{}, {} MiB disk, {}) in {}",
        m.reference(),
        opts.firmware.as_str(),
        if opts.secure_boot { " with Secure Boot" } else { "" },
        if opts.tpm { ", a TPM" } else { "" },
        disk,
        if opts.agent { "with Atrium's agent" } else { "no agent" },
        image.dir.display()
    );
    Ok(())
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn serve(a: &ServeArgs) -> anyhow::Result<()> {
    let config = NodeConfig::load(Some(&a.config))?;
    tokio_runtime()?.block_on(server::serve(config))?;
    Ok(())
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let opts = RunOptions {
        image: a.image,
        runtime: a.runtime,
        vcpus: a.vcpus,
        memory_mib: a.memory,
        display: a.display,
        timeout: Duration::from_secs(a.timeout),
        screenshot: a.screenshot,
        until_ready: a.until_ready,
        cgroups: !a.no_cgroup,
        measure_memory: false,
        session: session_user(a.user)?,
    };
    let report = match tokio_runtime()?.block_on(atrium_node::run::run_once(&opts)) {
        Ok(r) => r,
        // Without --until-ready, Ctrl-C is how the run ends.
        Err(RunError::Interrupted) if !opts.until_ready => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn bench_qemu(a: BenchQemuArgs) -> anyhow::Result<()> {
    let image = a.image.unwrap_or_else(|| cache_root().join("images/console"));
    let opts = RunOptions {
        measure_memory: true,
        session: session_user(a.user)?,
        ..RunOptions::bench(image, 1, a.memory, a.display, Duration::from_secs(a.timeout))
    };
    let r = tokio_runtime()?.block_on(bench::bench_qemu(&opts, a.runs))?;
    println!(
        "qemu runtime ({}), {} runs: VM start to agent-ready median {} ms through the node \
         (start {} ms), bare qemu-system-x86_64 {} ms: node overhead {} ms (ratio {:.3})",
        r.accel.map_or_else(|| "-".to_owned(), |a| a.to_string()),
        r.runs,
        r.ready_ms_median,
        r.start_ms_median,
        r.bare_qemu_ready_ms_median,
        r.node_overhead_ms,
        r.node_ratio
    );
    if let Some(ms) = r.session_ms_median {
        println!("session signed in and drawn: median {ms} ms after ready");
    }
    println!(
        "memory per VM ({} MiB guest): QEMU resident {:.1} MiB, of which guest RAM {:.1} MiB; \
         overhead beyond guest memory {:.1} MiB",
        a.memory,
        r.qemu_rss_mib_median,
        r.guest_ram_resident_mib_median,
        r.memory_overhead_mib_median
    );
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

fn bench_clone(a: BenchCloneArgs) -> anyhow::Result<()> {
    let image = a.image.unwrap_or_else(|| cache_root().join("images/desktop"));
    let o = atrium_node::bench::clone::CloneBenchOptions {
        run: RunOptions::bench(image, a.vcpus, a.memory, a.display, Duration::from_secs(a.timeout)),
        runs: a.runs,
        vs_boot: a.vs_boot,
        fill: a.fill.max(2),
    };
    let r = tokio_runtime()?.block_on(atrium_node::bench::clone::bench_clone(&o))?;
    println!(
        "clones of {} ({} MiB): template made in {} ms; start to agent-ready median {} ms{}",
        r.image,
        r.memory_mib,
        r.template_ms,
        r.clone_ready_ms_median,
        r.boot_ready_ms_median
            .map(|b| format!(", a boot {b} ms: clone_ratio {}", r.clone_ratio.unwrap_or_default()))
            .unwrap_or_default()
    );
    println!(
        "memory of one more idle VM: clone {:.1} MiB (template {:.1} MiB once){}; in 8 GiB: {} clones{}",
        r.clone_pss_mib,
        r.template_mib,
        r.boot_pss_mib
            .map(|b| format!(", boot {b:.1} MiB: pss_ratio {}", r.pss_ratio.unwrap_or_default()))
            .unwrap_or_default(),
        r.clones_in_8gib,
        r.boots_in_8gib.map(|b| format!(", {b} boots")).unwrap_or_default()
    );
    let mut json = serde_json::to_value(&r)?;
    // The builtin VMM with its test firmware: a restore from a snapshot against a cold start.
    match bench::restore::bench_restore(a.runs.max(5)) {
        Ok(b) => {
            print_restore(&b);
            json["builtin_restore_ms"] = b.restore_ms_median.into();
            json["builtin_cold_ms"] = b.cold_ms_median.into();
            json["builtin_restore_ratio"] = b.restore_ratio.into();
            json["builtin"] = serde_json::to_value(&b)?;
        }
        Err(e) => println!("builtin VMM restore: not measured here: {e:#}"),
    }
    println!("{json}");
    Ok(())
}

fn print_restore(b: &bench::restore::RestoreReport) {
    println!(
        "builtin VMM ({}), test firmware: spawn to agent answer, restore {:.1} ms against a cold start {:.1} ms (median of {}): restore_ratio {}; snapshot written in {} ms ({} KiB of memory)",
        b.kvm,
        b.restore_ms_median,
        b.cold_ms_median,
        b.runs,
        b.restore_ratio,
        b.snapshot_ms,
        b.snapshot_memory_kib
    );
}

fn main() -> anyhow::Result<()> {
    atrium_door::client::install_default_provider();
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Image(ImageCommand::Build(a)) => image_build(a),
        Command::Image(ImageCommand::Import(a)) => image_import(a),
        Command::Vmm(a) => vmm_cli::vmm(&a),
        Command::Bench(BenchCommand::Vmm(b)) => vmm_cli::bench(&b),
        Command::Bench(BenchCommand::Qemu(a)) => bench_qemu(a),
        Command::Bench(BenchCommand::Clone(a)) => bench_clone(a),
        Command::Serve(a) => serve(&a),
        Command::Run(a) => run(a),
        Command::Image(ImageCommand::Key(a)) => {
            let agent = match a.agent {
                Some(p) => p,
                None => default_agent()?,
            };
            let plan = build::plan(a.kind, &agent).context("resolving the image's inputs")?;
            println!("{}", plan.key);
            Ok(())
        }
    }
}
