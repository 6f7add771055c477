//! `atrium-node bench clone --vs-boot`: a VM started as a clone of a template against the same
//! VM booted, in the same run and interleaved: start to the agent's ready (a clone's ready comes
//! after its renewal), and the host memory one more idle VM costs (PSS, shared pages counted
//! once), from which how many idle VMs fit in 8 GiB.
//!
//! Memory is measured the same way for both: VMs held at once, idle, and the growth of their
//! summed PSS per added VM (what QEMU's own files cost is shared alike). Against clones, the
//! template's sealed RAM is counted in full on top, although part of it is already in the
//! clones' PSS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use atrium_protocol::node::{Accel, VmState};
use serde::Serialize;

use super::median;
use crate::image::Image;
use crate::run::{RunError, RunOptions, one_shot_manager};
use crate::vm::{Vm, VmManager};

/// Host memory the density figures are for, in KiB.
const FILL_KIB: u64 = 8 << 20;
/// Time an idle VM is left to settle before its memory is read.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct CloneBenchOptions {
    pub run: RunOptions,
    pub runs: usize,
    /// Boot the same VM too, interleaved, and give the ratios.
    pub vs_boot: bool,
    /// VMs of each kind (clones, boots) held at once for their memory (at least 2).
    pub fill: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct CloneReport {
    pub image: String,
    pub accel: Option<Accel>,
    pub runs: usize,
    pub memory_mib: u32,
    /// From the first VM asked for as a clone to its template made.
    pub template_ms: u64,
    pub clone_ready_ms_median: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_ready_ms_median: Option<u64>,
    /// Clone over boot, start to ready (target at most 0.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clone_ratio: Option<f64>,
    /// One more idle clone: the growth of the clones' summed PSS per clone.
    pub clone_pss_mib: f64,
    /// One more idle booted VM, the same way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_pss_mib: Option<f64>,
    /// Clone over boot, memory (target at most 0.4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pss_ratio: Option<f64>,
    /// The template's sealed RAM, resident.
    pub template_mib: f64,
    /// Idle clones in 8 GiB, the template counted once.
    pub clones_in_8gib: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boots_in_8gib: Option<u64>,
    pub clone_ready_ms_all: Vec<u64>,
    pub boot_ready_ms_all: Vec<u64>,
    /// The clones' summed PSS with 1, 2, ... clones held.
    pub fill_pss_mib: Vec<f64>,
    /// The booted VMs' summed PSS with 1, 2, ... held.
    pub boot_fill_pss_mib: Vec<f64>,
}

fn mib(kib: u64) -> f64 {
    f64::from(u32::try_from(kib).unwrap_or(u32::MAX)) / 1024.0
}

fn elapsed_ms(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Starts one VM (asked for as a clone, or booted) and waits until it is ready; returns it and
/// the ms taken.
async fn start(
    manager: &Arc<VmManager>,
    image: &Arc<Image>,
    opts: &RunOptions,
    clone: bool,
) -> Result<(Arc<Vm>, u64), RunError> {
    let spec = opts.spec(image, clone);
    let t0 = Instant::now();
    let vm = manager.launch(spec, Arc::clone(image)).await?;
    let mut st = vm.state_watch();
    let settled =
        tokio::time::timeout(opts.timeout, st.wait_for(|s| *s != VmState::Starting)).await;
    let ms = elapsed_ms(t0);
    if settled.is_err() || vm.state() != VmState::Ready {
        let why = vm.info().error.unwrap_or_else(|| format!("not ready within {:?}", opts.timeout));
        return Err(RunError::NotReady(why));
    }
    Ok((vm, ms))
}

/// Runs the benchmark; cleans up whatever happens.
pub async fn bench_clone(o: &CloneBenchOptions) -> Result<CloneReport, RunError> {
    let image = Arc::new(Image::load(&o.run.image, true)?);
    let (manager, state) = one_shot_manager(&o.run).await?;
    let result = tokio::select! {
        r = measure(&manager, &image, o) => r,
        () = crate::server::shutdown_signal() => Err(RunError::Interrupted),
    };
    for vm in manager.list() {
        let _ = manager.delete(&vm.id).await;
    }
    manager.end_templates();
    let _ = std::fs::remove_dir_all(&state);
    result
}

async fn measure(
    manager: &Arc<VmManager>,
    image: &Arc<Image>,
    o: &CloneBenchOptions,
) -> Result<CloneReport, RunError> {
    let opts = &o.run;
    eprintln!(
        "bench clone: image {}, {} MiB, {}, {} runs, {} VMs of each kind held",
        image.manifest.reference(),
        opts.memory_mib,
        opts.display,
        o.runs,
        o.fill
    );
    // The template: the first VM asked for as a clone boots, and the node makes it meanwhile.
    let t0 = Instant::now();
    let (first, _) = start(manager, image, opts, true).await?;
    let deadline = t0 + opts.timeout * 2;
    while manager.templates_made() == 0 {
        if Instant::now() > deadline {
            return Err(RunError::NotReady("no template was made (see the log)".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let template_ms = elapsed_ms(t0);
    eprintln!("  template made in {template_ms} ms");
    manager.delete(&first.id).await?;

    // Clones and boots, interleaved, so a change in the machine's load falls on both.
    let mut clone_ms = Vec::new();
    let mut boot_ms = Vec::new();
    for i in 0..o.runs {
        let (vm, ms) = start(manager, image, opts, true).await?;
        if !vm.info().cloned {
            return Err(RunError::NotReady("a VM asked for as a clone was booted".into()));
        }
        eprintln!("  run {}: clone ready in {ms} ms", i + 1);
        clone_ms.push(ms);
        manager.delete(&vm.id).await?;
        if o.vs_boot {
            let (vm, ms) = start(manager, image, opts, false).await?;
            eprintln!("  run {}: boot ready in {ms} ms", i + 1);
            boot_ms.push(ms);
            manager.delete(&vm.id).await?;
        }
    }

    // Memory: VMs held at once, idle; their summed PSS after each one more.
    let fill = hold(manager, image, opts, true, o.fill.max(2)).await?;
    let template_kib = manager.templates_resident_kib();
    let boot_fill = if o.vs_boot {
        hold(manager, image, opts, false, o.fill.max(2)).await?
    } else {
        Vec::new()
    };
    let clone_pss_kib = growth(&fill);
    let boot_pss_kib = o.vs_boot.then(|| growth(&boot_fill));

    let clone_median = median(&clone_ms);
    let boot_median = o.vs_boot.then(|| median(&boot_ms));
    let fits = |per: u64, fixed: u64| FILL_KIB.saturating_sub(fixed).checked_div(per).unwrap_or(0);
    Ok(CloneReport {
        image: image.manifest.reference(),
        accel: first.info().accel,
        runs: o.runs,
        memory_mib: opts.memory_mib,
        template_ms,
        clone_ready_ms_median: clone_median,
        boot_ready_ms_median: boot_median,
        clone_ratio: boot_median.map(|b| ratio(clone_median, b)),
        clone_pss_mib: mib(clone_pss_kib),
        boot_pss_mib: boot_pss_kib.map(mib),
        pss_ratio: boot_pss_kib.map(|b| ratio(clone_pss_kib, b)),
        template_mib: mib(template_kib),
        clones_in_8gib: fits(clone_pss_kib, template_kib),
        boots_in_8gib: boot_pss_kib.map(|b| fits(b, 0)),
        clone_ready_ms_all: clone_ms,
        boot_ready_ms_all: boot_ms,
        fill_pss_mib: fill.into_iter().map(mib).collect(),
        boot_fill_pss_mib: boot_fill.into_iter().map(mib).collect(),
    })
}

/// Starts `n` VMs (clones, or boots) one after another, each left idle a moment; returns their
/// summed PSS after each one more, and deletes them.
async fn hold(
    manager: &Arc<VmManager>,
    image: &Arc<Image>,
    opts: &RunOptions,
    clone: bool,
    n: usize,
) -> Result<Vec<u64>, RunError> {
    let what = if clone { "clones" } else { "booted VMs" };
    let mut held = Vec::new();
    let mut sums = Vec::new();
    for _ in 0..n {
        let (vm, _) = start(manager, image, opts, clone).await?;
        if clone && !vm.info().cloned {
            return Err(RunError::NotReady("a VM asked for as a clone was booted".into()));
        }
        held.push(vm);
        tokio::time::sleep(SETTLE).await;
        let sum: u64 = held.iter().map(|v| v.memory_used_kib()).sum();
        eprintln!("  {} {what} held: PSS {:.1} MiB in all", held.len(), mib(sum));
        sums.push(sum);
    }
    for vm in held {
        manager.delete(&vm.id).await?;
    }
    Ok(sums)
}

/// The growth per added VM of summed PSS readings (first to last).
fn growth(sums: &[u64]) -> u64 {
    let (Some(first), Some(last)) = (sums.first(), sums.last()) else { return 0 };
    let added = u64::try_from(sums.len().saturating_sub(1)).unwrap_or(1).max(1);
    last.saturating_sub(*first) / added
}

/// `a` over `b`, to three decimals.
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        return 0.0;
    }
    let f = |v: u64| f64::from(u32::try_from(v).unwrap_or(u32::MAX));
    (f(a) / f(b) * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_per_added_vm_and_ratios_round() {
        assert_eq!(growth(&[100, 150, 210]), 55);
        assert_eq!(growth(&[100]), 0);
        assert_eq!(growth(&[]), 0);
        assert_eq!(ratio(1, 3), 0.333);
        assert_eq!(ratio(5, 0), 0.0);
    }
}
