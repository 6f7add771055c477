//! Counters for `/metrics` (Prometheus text format).

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// The service's counters. Cheap to update from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub frames_captured: AtomicU64,
    pub encode_nanos: AtomicU64,
    pub encodes: AtomicU64,
    pub clients: AtomicI64,
    pub desktops: AtomicI64,
    pub connections_refused: AtomicU64,
    pub connections_closed_bad_message: AtomicU64,
    pub input_dropped: AtomicU64,
    pub refinements: AtomicU64,
    pub audio_packets: AtomicU64,
    pub audio_dropped: AtomicU64,
    pub video_frames: AtomicU64,
    pub video_key_frames: AtomicU64,
    pub video_bytes: AtomicU64,
    pub video_encode_nanos: AtomicU64,
    /// Bytes of session recordings handed on to leave the node (chunks, headers included).
    pub recorded_bytes: AtomicU64,
    pub recording_key_frames: AtomicU64,
    pub recordings_failed: AtomicU64,
}

impl Metrics {
    pub fn record_encode(&self, d: Duration) {
        self.encode_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.encodes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = write!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n");
        };
        counter(
            "atrium_display_frames_sent_total",
            "Frames sent to viewers.",
            get(&self.frames_sent),
        );
        counter(
            "atrium_display_bytes_sent_total",
            "Bytes of display messages sent to viewers.",
            get(&self.bytes_sent),
        );
        counter(
            "atrium_display_frames_dropped_total",
            "Captured frames a viewer skipped because it had too many frames in flight.",
            get(&self.frames_dropped),
        );
        counter(
            "atrium_display_frames_captured_total",
            "Frames captured from sources.",
            get(&self.frames_captured),
        );
        counter("atrium_display_encodes_total", "Rectangles encoded.", get(&self.encodes));
        counter(
            "atrium_display_refinements_total",
            "Lossless refinements sent.",
            get(&self.refinements),
        );
        counter(
            "atrium_display_connections_refused_total",
            "WebSocket connections refused (ticket, origin, desktop).",
            get(&self.connections_refused),
        );
        counter(
            "atrium_display_connections_closed_bad_message_total",
            "Connections closed for a malformed, unknown or oversize message.",
            get(&self.connections_closed_bad_message),
        );
        counter(
            "atrium_display_input_dropped_total",
            "Input events dropped (view-only or queue full).",
            get(&self.input_dropped),
        );
        counter(
            "atrium_display_audio_packets_total",
            "Opus packets of desktop sound encoded (once per desktop, whoever listens).",
            get(&self.audio_packets),
        );
        counter(
            "atrium_display_audio_dropped_total",
            "Sound packets a viewer missed because it fell behind.",
            get(&self.audio_dropped),
        );
        counter(
            "atrium_display_video_frames_total",
            "VP8 frames of moving areas sent to viewers.",
            get(&self.video_frames),
        );
        counter(
            "atrium_display_video_key_frames_total",
            "VP8 key frames (streams started).",
            get(&self.video_key_frames),
        );
        counter(
            "atrium_display_video_bytes_total",
            "Bytes of VP8 frames sent to viewers.",
            get(&self.video_bytes),
        );
        counter(
            "atrium_display_recorded_bytes_total",
            "Bytes of session recordings sent on to the broker (chunks as stored).",
            get(&self.recorded_bytes),
        );
        counter(
            "atrium_display_recording_key_frames_total",
            "Key frames (whole screens) added to session recordings.",
            get(&self.recording_key_frames),
        );
        counter(
            "atrium_display_recordings_failed_total",
            "Recorded viewers ended because their recording could not be stored.",
            get(&self.recordings_failed),
        );
        let video_secs = get(&self.video_encode_nanos) as f64 / 1e9;
        let _ = write!(
            s,
            "# HELP atrium_display_video_encode_seconds_total Time spent encoding VP8 frames.\n# TYPE atrium_display_video_encode_seconds_total counter\natrium_display_video_encode_seconds_total {video_secs:.6}\n"
        );
        let secs = get(&self.encode_nanos) as f64 / 1e9;
        let _ = write!(
            s,
            "# HELP atrium_display_encode_seconds_total Time spent encoding rectangles.\n# TYPE atrium_display_encode_seconds_total counter\natrium_display_encode_seconds_total {secs:.6}\n"
        );
        let _ = write!(
            s,
            "# HELP atrium_display_clients Connected viewers.\n# TYPE atrium_display_clients gauge\natrium_display_clients {}\n",
            self.clients.load(Ordering::Relaxed)
        );
        let _ = write!(
            s,
            "# HELP atrium_display_desktops Desktops with an open source.\n# TYPE atrium_display_desktops gauge\natrium_display_desktops {}\n",
            self.desktops.load(Ordering::Relaxed)
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads one sample from a Prometheus text exposition.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    #[test]
    fn renders_and_parses() {
        let m = Metrics::default();
        Metrics::add(&m.frames_sent, 3);
        m.record_encode(Duration::from_millis(1500));
        m.clients.store(2, Ordering::Relaxed);
        let t = m.render();
        assert_eq!(sample(&t, "atrium_display_frames_sent_total"), Some(3.0));
        assert_eq!(sample(&t, "atrium_display_encode_seconds_total"), Some(1.5));
        assert_eq!(sample(&t, "atrium_display_clients"), Some(2.0));
        assert_eq!(sample(&t, "atrium_display_nope"), None);
    }
}
