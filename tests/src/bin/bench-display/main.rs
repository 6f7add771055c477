//! `bench-display` (`scripts/bench-display.sh`): what the display proxy costs and how it
//! compares.
//!
//! - encode cost at 1920x1080: a full redraw and a text-scroll diff, beside a whole-frame PNG
//!   and the same diff without scroll detection, measured in the same run;
//! - motion: the same moving content as still images and as VP8 video (bytes, encode time,
//!   the video's quality);
//! - watermark: bytes for the same frames with and without a watermark drawn in, and what an
//!   idle watermarked desktop sends;
//! - with `--audio` or `--vs-novnc`: a desktop's test tones to the browser's output, and
//!   input-to-pixel on a moving desktop with video on and off;
//! - recording: bytes stored against bytes sent to a recorded viewer; with `--seek` or
//!   `--vs-novnc`, seek times in a one-hour recording in the admin portal's player;
//! - fan-out: how many viewers of one synthetic desktop get 30 fps on this machine;
//! - with `--vs-novnc`: one QEMU console guest, one scripted workload, watched at once by
//!   Atrium's web client through the proxy and by Debian's noVNC through websockify, both in
//!   headless Chromium; then key-to-update times on QEMU's VNC socket alone (what any VNC
//!   client can get); then a video playing in a QEMU desktop guest, watched the same two ways
//!   (bytes and CPU of Atrium's VP8 against noVNC's).
//!
//! The last line printed is one JSON object with every figure.

mod audio;
mod encode;
mod fanout;
mod in_browser;
mod motion;
mod novnc;
mod qemu_floor;
mod recording;
mod relay;
mod rig;
mod seek;
mod video_latency;
mod watermark;

use std::path::PathBuf;

use clap::Parser;

/// Options of the display benchmark.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "bench-display",
    about = "Measure: encode cost at 1920x1080, fan-out, and (with --vs-novnc) Atrium against noVNC on one QEMU console guest. The last line printed is one JSON object."
)]
pub struct BenchOptions {
    /// Also compare with noVNC on a QEMU console guest and on a desktop guest playing a video
    /// (needs QEMU, the console and desktop images, Chromium, noVNC, websockify and
    /// tests/browser/node_modules).
    #[arg(long)]
    pub vs_novnc: bool,
    /// Skip the encode-cost measurement.
    #[arg(long)]
    pub skip_encode: bool,
    /// Skip the watermark's cost (bytes with and without it on the same frames).
    #[arg(long)]
    pub skip_watermark: bool,
    /// With --vs-novnc: Atrium's viewer's ticket asks for a watermark (the broker's default),
    /// to compare the workload's bytes with a run without.
    #[arg(long)]
    pub watermark: bool,
    /// Measure, in headless Chromium, audio latency (a desktop's test tones to Atrium's viewer)
    /// and input-to-pixel on a moving desktop with video on and off (also done with
    /// --vs-novnc; needs Chromium and tests/browser/node_modules).
    #[arg(long)]
    pub audio: bool,
    /// With --vs-novnc: skip the audio latency and input-to-pixel-with-video measurements.
    #[arg(long)]
    pub skip_audio: bool,
    /// With --vs-novnc: skip the console workload (the video in the desktop still runs).
    #[arg(long)]
    pub skip_console: bool,
    /// With --vs-novnc: skip the video in the desktop.
    #[arg(long)]
    pub skip_video: bool,
    /// Skip the motion measurement (stills against video on the same moving content).
    #[arg(long)]
    pub skip_motion: bool,
    /// Skip the recording's cost (bytes stored against bytes sent to a recorded viewer).
    #[arg(long)]
    pub skip_recording: bool,
    /// Seek in a one-hour recording in the admin portal's player, in headless Chromium (also
    /// done with --vs-novnc; needs slapd, Chromium and tests/browser/node_modules).
    #[arg(long)]
    pub seek: bool,
    /// With --vs-novnc: skip the seek measurement.
    #[arg(long)]
    pub skip_seek: bool,
    /// Seconds each recording workload runs (long enough for several key frames).
    #[arg(long, default_value_t = 60)]
    pub recording_secs: u64,
    /// Skip the fan-out measurement.
    #[arg(long)]
    pub skip_fanout: bool,
    /// Seconds each fan-out step runs.
    #[arg(long, default_value_t = 5)]
    pub fanout_secs: u64,
    /// The workspace root (holds web-client/ and tests/browser/); default: the current folder.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// The console image folder; default: $ATRIUM_CONSOLE_IMAGE, else
    /// ~/.cache/atrium/images/console.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// The proxy's `keep_refresh_after_input_ms` in the comparison with noVNC (0: off; by
    /// default the service's default, 1000).
    #[arg(long, default_value_t = atrium_display::config::DisplayConfig::default().keep_refresh_after_input_ms)]
    pub keep_refresh_ms: u64,
}

fn main() -> anyhow::Result<()> {
    atrium_door::client::install_default_provider();
    let opts = BenchOptions::parse();
    // The benchmark runs a service in-process: only its warnings go with the figures.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        // Colours only on a terminal: the figures often go to a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(opts))
}

async fn run(opts: BenchOptions) -> anyhow::Result<()> {
    let mut out = serde_json::Map::new();
    if !opts.skip_encode {
        let e = tokio::task::spawn_blocking(encode::run).await??;
        out.extend(e);
    }
    if !opts.skip_motion {
        let m = tokio::task::spawn_blocking(motion::run).await??;
        out.extend(m);
    }
    if !opts.skip_watermark {
        let w = tokio::task::spawn_blocking(watermark::run).await??;
        out.extend(w);
    }
    if !opts.skip_recording || opts.seek {
        let (figures, [terminal, photo]) = recording::run(opts.recording_secs).await?;
        out.extend(figures);
        if opts.seek || (opts.vs_novnc && !opts.skip_seek) {
            out.extend(seek::run(&terminal, &photo).await?);
        }
    }
    if !opts.skip_fanout {
        out.extend(fanout::run(opts.fanout_secs).await?);
    }
    if opts.audio || (opts.vs_novnc && !opts.skip_audio) {
        out.extend(audio::run(&opts).await?);
        out.extend(video_latency::run(&opts).await?);
    }
    if opts.vs_novnc {
        if !opts.skip_console {
            out.extend(novnc::run(&opts).await?);
        }
        if !opts.skip_video {
            out.extend(novnc::run_video(&opts).await?);
        }
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

/// Rounds for the JSON output.
fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}
