//! Counters exported at `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A gauge read at scrape time: name, help, and values by label set.
pub type Gauge<'a> = (&'a str, &'a str, Vec<(String, u64)>);

#[derive(Debug, Default)]
pub struct Metrics {
    pub logins_ok: AtomicU64,
    pub logins_failed: AtomicU64,
    pub logins_locked: AtomicU64,
    pub logins_unavailable: AtomicU64,
    pub connects_existing: AtomicU64,
    pub connects_spare: AtomicU64,
    pub connects_new: AtomicU64,
    pub connects_refused: AtomicU64,
    pub tickets_issued: AtomicU64,
    pub provision_failures: AtomicU64,
    pub reconcile_runs: AtomicU64,
    pub reconcile_errors: AtomicU64,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counters, followed by `gauges` (name, help, labelled values) read from the database.
    pub fn render(&self, gauges: &[Gauge<'_>]) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, vals: &[(&str, &AtomicU64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in vals {
                let l = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
                let _ = writeln!(out, "{name}{l} {}", v.load(Ordering::Relaxed));
            }
        };
        counter(
            &mut out,
            "atrium_broker_logins_total",
            "Sign-in attempts by outcome.",
            &[
                ("outcome=\"success\"", &self.logins_ok),
                ("outcome=\"invalid\"", &self.logins_failed),
                ("outcome=\"locked\"", &self.logins_locked),
                ("outcome=\"directory_unavailable\"", &self.logins_unavailable),
            ],
        );
        counter(
            &mut out,
            "atrium_broker_connects_total",
            "Desktop connects by how the desktop was found.",
            &[
                ("source=\"existing\"", &self.connects_existing),
                ("source=\"spare\"", &self.connects_spare),
                ("source=\"new\"", &self.connects_new),
                ("source=\"refused\"", &self.connects_refused),
            ],
        );
        counter(
            &mut out,
            "atrium_broker_tickets_issued_total",
            "Display tickets minted.",
            &[("", &self.tickets_issued)],
        );
        counter(
            &mut out,
            "atrium_broker_provision_failures_total",
            "Node VM creations that failed.",
            &[("", &self.provision_failures)],
        );
        counter(
            &mut out,
            "atrium_broker_reconcile_runs_total",
            "Reconcile passes.",
            &[("", &self.reconcile_runs)],
        );
        counter(
            &mut out,
            "atrium_broker_reconcile_errors_total",
            "Reconcile passes that failed.",
            &[("", &self.reconcile_errors)],
        );
        for (name, help, vals) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, v) in vals {
                let l = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
                let _ = writeln!(out, "{name}{l} {v}");
            }
        }
        out
    }
}

/// Escapes a Prometheus label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
