//! The open desktops: a desktop is opened for its first viewer and closed after its last.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use super::{Desktop, ViewerSlot};
use crate::metrics::Metrics;
use crate::pipeline::pool::EncodePool;
use crate::source::open::{OpenError, SourceOpener};
use crate::watermark::Font;

type Slot = Arc<tokio::sync::Mutex<Weak<Desktop>>>;

/// The open desktops, by VM id.
#[derive(Debug)]
pub struct Desktops {
    opener: Arc<dyn SourceOpener>,
    map: Mutex<HashMap<String, Slot>>,
    metrics: Arc<Metrics>,
    pool: EncodePool,
    max_viewers: usize,
    /// What watermarks are drawn with (`None`: none can be).
    font: Option<Arc<Font>>,
}

impl Desktops {
    pub fn new(
        opener: Arc<dyn SourceOpener>,
        metrics: Arc<Metrics>,
        pool: EncodePool,
        max_viewers: usize,
        font: Option<Arc<Font>>,
    ) -> Self {
        Self { opener, map: Mutex::new(HashMap::new()), metrics, pool, max_viewers, font }
    }

    /// Whether watermarks can be drawn here (the font was read).
    pub fn can_watermark(&self) -> bool {
        self.font.is_some()
    }

    /// Joins the desktop of `vm`, opening it for its first viewer.
    pub async fn join(&self, vm: &str) -> Result<ViewerSlot, OpenError> {
        let slot = {
            let mut map = self.map.lock().expect("desktops lock");
            map.retain(|_, s| s.try_lock().map_or(true, |w| w.strong_count() > 0));
            Arc::clone(map.entry(vm.to_owned()).or_default())
        };
        let mut weak = slot.lock().await;
        let desktop = match weak.upgrade().filter(|d| d.is_alive()) {
            Some(d) => d,
            None => {
                let opened = self.opener.open(vm).await?;
                let pool = self.pool.clone();
                let font = self.font.clone();
                let d = Desktop::start(vm, opened, Arc::clone(&self.metrics), pool, font).await?;
                *weak = Arc::downgrade(&d);
                d
            }
        };
        let n = desktop.viewers.fetch_add(1, Ordering::SeqCst);
        let slot = ViewerSlot { desktop };
        if n >= self.max_viewers {
            return Err(OpenError::TooManyViewers(n));
        }
        Ok(slot)
    }
}
