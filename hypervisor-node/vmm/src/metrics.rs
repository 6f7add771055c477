//! Every device's counters in one place, rendered as JSON for the control socket.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Map, Value, json};

use crate::devices::framebuffer::FramebufferMetrics;
use crate::devices::serial::SerialMetrics;
use crate::devices::virtio::block::BlockMetrics;
use crate::devices::virtio::console::ConsoleMetrics;
use crate::devices::virtio::input::InputMetrics;
use crate::devices::virtio::mmio::TransportMetrics;
use crate::vcpu::VcpuMetrics;

macro_rules! counters {
    ($m:expr, $($f:ident),+) => {
        json!({ $(stringify!($f): $m.$f.load(Ordering::Relaxed)),+ })
    };
}

#[derive(Debug, Clone)]
pub enum DeviceMetrics {
    Input(Arc<InputMetrics>),
    Block(Arc<BlockMetrics>),
    Console(Arc<ConsoleMetrics>),
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub serial: Option<Arc<SerialMetrics>>,
    pub framebuffer: Option<Arc<FramebufferMetrics>>,
    pub virtio: Vec<(String, Arc<TransportMetrics>, DeviceMetrics)>,
    pub vcpus: Vec<Arc<VcpuMetrics>>,
}

impl Metrics {
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        if let Some(s) = &self.serial {
            out.insert("serial".into(), counters!(s, bytes_written, bytes_dropped, first_byte_ns));
        }
        if let Some(f) = &self.framebuffer {
            out.insert("framebuffer".into(), counters!(f, dirty_requests, dirty_pages_reported));
        }
        for (name, t, d) in &self.virtio {
            let mut v = counters!(t, notifications, interrupts, driver_errors, resets);
            let dev = match d {
                DeviceMetrics::Input(m) => {
                    counters!(m, events_injected, events_delivered, events_refused)
                }
                DeviceMetrics::Block(m) => {
                    counters!(m, reads, writes, flushes, bytes_read, bytes_written, io_errors)
                }
                DeviceMetrics::Console(m) => {
                    counters!(m, bytes_to_guest, bytes_from_guest, bytes_dropped)
                }
            };
            if let (Value::Object(a), Value::Object(b)) = (&mut v, dev) {
                a.extend(b);
            }
            out.insert(name.clone(), v);
        }
        let vcpus: Vec<Value> = self
            .vcpus
            .iter()
            .map(|m| counters!(m, exits, io_exits, mmio_exits, int3_injected))
            .collect();
        out.insert("vcpus".into(), Value::Array(vcpus));
        Value::Object(out)
    }
}
