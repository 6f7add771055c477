//! The encode pool: a fixed set of threads with a bounded queue, so CPU-heavy work (change
//! planning, PNG and JPEG encoding) never runs on the async runtime and a burst of work waits
//! for a slot instead of growing a queue.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use thiserror::Error;
use tokio::sync::{Semaphore, oneshot};

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug, Error)]
#[error("the encode pool stopped")]
pub struct PoolStopped;

/// A bounded pool of worker threads.
#[derive(Debug, Clone)]
pub struct EncodePool {
    tx: SyncSender<Job>,
    slots: Arc<Semaphore>,
    threads: usize,
}

impl EncodePool {
    /// `threads` workers (0: one per CPU) and room for `queue` waiting jobs.
    pub fn new(threads: usize, queue: usize) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        } else {
            threads
        };
        let capacity = threads + queue.max(1);
        let (tx, rx) = sync_channel::<Job>(capacity);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("encode-{i}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let guard = rx.lock().expect("encode queue lock");
                            guard.recv()
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .expect("spawn an encode thread");
        }
        Self { tx, slots: Arc::new(Semaphore::new(capacity)), threads }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a worker once a slot is free, and waits for its result.
    pub async fn run<T, F>(&self, f: F) -> Result<T, PoolStopped>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let permit = Arc::clone(&self.slots).acquire_owned().await.map_err(|_| PoolStopped)?;
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let out = f();
            drop(permit);
            let _ = done.send(out);
        });
        // Never blocks: there is one queue place per slot.
        self.tx.try_send(job).map_err(|_| PoolStopped)?;
        result.await.map_err(|_| PoolStopped)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn runs_jobs_with_bounded_concurrency() {
        let pool = EncodePool::new(2, 2);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for i in 0..16u64 {
            let pool = pool.clone();
            let running = Arc::clone(&running);
            let peak = Arc::clone(&peak);
            handles.push(tokio::spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    running.fetch_sub(1, Ordering::SeqCst);
                    i * 2
                })
                .await
                .unwrap()
            }));
        }
        let mut sum = 0;
        for h in handles {
            sum += h.await.unwrap();
        }
        assert_eq!(sum, (0..16u64).map(|i| i * 2).sum::<u64>());
        assert!(peak.load(Ordering::SeqCst) <= 2, "at most one job per thread at a time");
    }
}
