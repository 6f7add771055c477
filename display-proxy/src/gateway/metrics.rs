//! The gateway's counters for `/metrics` (Prometheus text format).

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::relay::Traffic;
use atrium_door::DoorStats;

/// Why a viewer was not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a WebSocket upgrade, a bad VM id, a page from another origin.
    Request,
    /// No valid ticket.
    Ticket,
    /// Too many connections, in all or from one address.
    Limit,
    /// The display proxy could not be reached, or refused.
    Proxy,
}

/// The gateway's counters. Cheap to update from any task. (Connections and TLS handshakes are
/// the accept loop's: [`atrium_door::DoorStats`].)
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    pub relays: AtomicI64,
    pub relays_total: AtomicU64,
    pub relays_idle_closed: AtomicU64,
    refused_request: AtomicU64,
    refused_ticket: AtomicU64,
    refused_limit: AtomicU64,
    refused_proxy: AtomicU64,
    pub traffic: Traffic,
}

impl GatewayMetrics {
    fn counter(&self, why: Refusal) -> &AtomicU64 {
        match why {
            Refusal::Request => &self.refused_request,
            Refusal::Ticket => &self.refused_ticket,
            Refusal::Limit => &self.refused_limit,
            Refusal::Proxy => &self.refused_proxy,
        }
    }

    pub fn refuse(&self, why: Refusal) {
        self.counter(why).fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, why: Refusal) -> u64 {
        self.counter(why).load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition, with the accept loop's counters.
    pub fn render(&self, door: &DoorStats) -> String {
        let mut s = String::new();
        let mut family = |name: &str, kind: &str, help: &str, vals: &[(&str, i64)]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in vals {
                let l = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
                let _ = writeln!(s, "{name}{l} {v}");
            }
        };
        let n = |a: &AtomicU64| i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        family(
            "atrium_gateway_connections",
            "gauge",
            "Client connections open.",
            &[("", door.connections.load(Ordering::Relaxed))],
        );
        family(
            "atrium_gateway_relays",
            "gauge",
            "Display relays open.",
            &[("", self.relays.load(Ordering::Relaxed))],
        );
        family(
            "atrium_gateway_relays_total",
            "counter",
            "Display relays opened.",
            &[("", n(&self.relays_total))],
        );
        family(
            "atrium_gateway_relays_idle_closed_total",
            "counter",
            "Display relays closed for carrying nothing for idle_timeout_secs.",
            &[("", n(&self.relays_idle_closed))],
        );
        family(
            "atrium_gateway_refused_total",
            "counter",
            "Viewers not relayed, by reason.",
            &[
                ("reason=\"request\"", n(&self.refused_request)),
                ("reason=\"ticket\"", n(&self.refused_ticket)),
                ("reason=\"limit\"", n(&self.refused_limit).saturating_add(n(&door.refused))),
                ("reason=\"proxy\"", n(&self.refused_proxy)),
            ],
        );
        family(
            "atrium_gateway_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or timed out.",
            &[("", n(&door.tls_failures))],
        );
        family(
            "atrium_gateway_bytes_total",
            "counter",
            "Bytes relayed, by direction.",
            &[
                ("direction=\"to_viewer\"", n(&self.traffic.to_viewer)),
                ("direction=\"to_proxy\"", n(&self.traffic.to_proxy)),
            ],
        );
        s
    }
}
