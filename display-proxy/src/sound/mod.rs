//! A desktop's sound: the 16-bit stereo samples its source hands over (QEMU's VNC audio at
//! 48 kHz), cut into 20 ms frames, encoded once with Opus whoever listens, and broadcast as
//! ready-made `Audio` messages to the viewers that asked for sound. Nothing is kept for a
//! viewer that falls behind: sound that is late is better dropped than played late.

pub mod opus;

use std::sync::Arc;

use atrium_protocol::display::{AUDIO_FRAME, AUDIO_RATE, MAX_AUDIO_PACKET, ServerMessage};
use axum::body::Bytes;
use tokio::sync::broadcast;

use crate::metrics::Metrics;

/// Opus bitrate for stereo desktop sound (music is clear at this rate).
const BITRATE: u32 = 96_000;
/// Encoder complexity: about half of libopus's most expensive, a few percent of a core.
const COMPLEXITY: u8 = 5;

/// Encodes a desktop's sound as it comes.
#[derive(Debug)]
pub struct SoundEncoder {
    encoder: opus::Encoder,
    /// Interleaved samples not yet a whole frame.
    pending: Vec<i16>,
    /// The number of the first pending sample (per channel), wrapping.
    at: u32,
    out: broadcast::Sender<Bytes>,
    packet: Vec<u8>,
    metrics: Arc<Metrics>,
}

impl SoundEncoder {
    pub fn new(out: broadcast::Sender<Bytes>, metrics: Arc<Metrics>) -> Result<Self, String> {
        Ok(Self {
            encoder: opus::Encoder::new(AUDIO_RATE, BITRATE, COMPLEXITY)?,
            pending: Vec::with_capacity(AUDIO_FRAME * 4),
            at: 0,
            out,
            packet: vec![0; MAX_AUDIO_PACKET],
            metrics,
        })
    }

    /// Takes samples: 16-bit little-endian, interleaved stereo (a trailing odd byte is dropped).
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend(bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])));
        while self.pending.len() >= AUDIO_FRAME * 2 {
            self.encode_frame();
        }
    }

    /// The sound stopped: what is left goes out, padded with silence to a frame.
    pub fn end(&mut self) {
        if !self.pending.is_empty() {
            self.pending.resize(AUDIO_FRAME * 2, 0);
            self.encode_frame();
        }
    }

    fn encode_frame(&mut self) {
        let at = self.at;
        self.at = self.at.wrapping_add(u32::try_from(AUDIO_FRAME).expect("small"));
        // Nobody listens (every viewer muted): no work. Opus starts again cleanly after a gap.
        let encoded = (self.out.receiver_count() > 0)
            .then(|| self.encoder.encode(&self.pending[..AUDIO_FRAME * 2], &mut self.packet));
        self.pending.drain(..AUDIO_FRAME * 2);
        let Some(encoded) = encoded else { return };
        match encoded {
            Ok(n) if n > 0 => {
                Metrics::add(&self.metrics.audio_packets, 1);
                let packet = self.packet[..n].to_vec();
                let _ = self.out.send(Bytes::from(ServerMessage::Audio { at, packet }.encode()));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "a sound frame could not be encoded"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Interleaved stereo samples of a sine at `hz`, as little-endian bytes.
    fn tone(hz: f64, samples: usize) -> Vec<u8> {
        (0..samples)
            .flat_map(|i| {
                let v = (f64::from(u32::try_from(i).unwrap()) * hz * std::f64::consts::TAU
                    / f64::from(AUDIO_RATE))
                .sin();
                #[allow(clippy::cast_possible_truncation)] // within ±12,000
                let s = (v * 12_000.0).round() as i16;
                [s.to_le_bytes(), s.to_le_bytes()].concat()
            })
            .collect()
    }

    #[test]
    fn a_tone_is_encoded_in_20_ms_packets_and_decodes_to_the_same_tone() {
        let (tx, mut rx) = broadcast::channel(256);
        let mut enc = SoundEncoder::new(tx, Arc::default()).expect("encoder");
        // Half a second, in pieces of odd sizes (as QEMU's audio timer hands them over).
        let all = tone(440.0, 24_000);
        for piece in all.chunks(1_764) {
            enc.push(piece);
        }
        enc.end();
        let mut packets = Vec::new();
        let mut ats = Vec::new();
        while let Ok(m) = rx.try_recv() {
            let ServerMessage::Audio { at, packet } = ServerMessage::decode(&m).expect("decodes")
            else {
                panic!("not an audio message")
            };
            ats.push(at);
            packets.push(packet);
        }
        assert_eq!(packets.len(), 25, "24,000 samples are 25 frames of 960");
        assert_eq!(ats[1] - ats[0], 960);
        let bytes: usize = packets.iter().map(Vec::len).sum();
        // 96 kbit/s is 240 bytes a frame: far below the 3,840 of raw samples.
        assert!(bytes < 25 * 600, "{bytes} bytes for half a second");
        let pcm = opus::decode::decode_all(&packets);
        // Count the left channel's rising zero crossings after the encoder's start-up.
        let left: Vec<i16> = pcm.iter().step_by(2).copied().skip(4_800).take(14_400).collect();
        let rising = left.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
        // 14,400 samples at 48 kHz are 0.3 s: 132 periods of 440 Hz.
        assert!((128..=136).contains(&rising), "{rising} periods: not the 440 Hz tone");
    }

    #[test]
    fn nothing_is_encoded_for_nobody_and_odd_bytes_are_harmless() {
        let (tx, rx) = broadcast::channel(4);
        drop(rx);
        let metrics = Arc::new(Metrics::default());
        let mut enc = SoundEncoder::new(tx.clone(), Arc::clone(&metrics)).expect("encoder");
        enc.push(&[1, 2, 3]);
        enc.push(&tone(1000.0, 2_000));
        enc.end();
        assert_eq!(metrics.audio_packets.load(std::sync::atomic::Ordering::Relaxed), 0);
        // Someone listens: the next frame is encoded and sent.
        let mut rx = tx.subscribe();
        enc.push(&tone(1000.0, 960));
        assert!(rx.try_recv().is_ok());
        assert_eq!(metrics.audio_packets.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
