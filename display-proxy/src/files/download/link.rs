//! A download over its link ([`super::links`]): offered, fetched by the browser within
//! [`FETCH_WITHIN`] (else sent over the WebSocket), and fed to the browser's request at the
//! pace its connection takes it.

use std::time::Duration;

use axum::body::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{Failed, Job, PROGRESS_EVERY, Source, TAKE_WITHIN};
use crate::files::links;
use atrium_protocol::display::ServerMessage;

/// How long a download's link waits to be fetched before the file goes over the WebSocket
/// instead (a gateway that does not relay this viewer cannot route the link).
const FETCH_WITHIN: Duration = Duration::from_secs(10);

impl Job {
    /// The browser closed the link's connection (its own download's Cancel).
    fn stopped(&self) -> Failed {
        Failed::new("cancelled", format!("{}: the browser stopped the download", self.name))
    }

    /// Sends the file over a link the browser fetches, when the viewer asked for one and it
    /// is fetched within [`FETCH_WITHIN`]; else over the WebSocket.
    pub(super) async fn deliver(
        &mut self,
        size: u64,
        source: Source,
        known: Option<[u8; 32]>,
    ) -> Result<[u8; 32], Failed> {
        if self.fetch {
            let vm = self.target.guest.vm.clone();
            let way = links::Way::Download { name: self.name.clone(), size };
            match self.target.links.offer(&vm, way) {
                Some((mut offer, feed)) => {
                    let m = ServerMessage::FileLink { id: self.id, size, token: offer.token };
                    let _ = self.say.send(m).await;
                    if self.wait_fetched(&mut offer).await? {
                        drop(offer);
                        return self.feed(size, source, known, feed).await;
                    }
                    tracing::info!(
                        vm,
                        "a download's link was not fetched in time: \
                        it goes over the WebSocket"
                    );
                }
                None => tracing::warn!(
                    "too many download links are open: this one goes over \
                    the WebSocket"
                ),
            }
        }
        self.send(size, source, known).await
    }

    /// Whether `offer` was fetched within [`FETCH_WITHIN`] (else it is withdrawn), unless the
    /// viewer cancels first.
    async fn wait_fetched(&mut self, offer: &mut links::Offer) -> Result<bool, Failed> {
        let deadline = tokio::time::sleep(FETCH_WITHIN);
        tokio::pin!(deadline);
        loop {
            if self.taken.borrow_and_update().cancelled {
                return Err(self.cancelled());
            }
            tokio::select! {
                () = offer.fetched() => return Ok(true),
                () = &mut deadline => return Ok(!offer.withdraw()),
                changed = self.taken.changed() => {
                    if changed.is_err() {
                        return Err(self.cancelled());
                    }
                }
            }
        }
    }

    /// Feeds `size` bytes of `source` to the browser's request of its link (`feed`), telling the
    /// viewer how far it got. Returns their hash (`known` when computed already). When it
    /// fails, the request ends early, so the browser's download fails too.
    async fn feed(
        &mut self,
        size: u64,
        mut source: Source,
        known: Option<[u8; 32]>,
        link: links::Feed,
    ) -> Result<[u8; 32], Failed> {
        let feed = link.tx.clone();
        let mut sha = known.is_none().then(Sha256::new);
        let (mut sent, mut told) = (0u64, 0u64);
        let fed = async {
            while let Some(chunk) = self.next(&mut source).await? {
                if sent + chunk.len() as u64 > size {
                    return Err(Failed::new(
                        "failed",
                        format!(
                            "{} was not downloaded: the desktop sent more than its size",
                            self.name
                        ),
                    ));
                }
                if let Some(s) = sha.as_mut() {
                    s.update(&chunk);
                }
                sent += chunk.len() as u64;
                self.push(&feed, chunk).await?;
                if sent - told >= PROGRESS_EVERY || sent == size {
                    told = sent;
                    let _ = self
                        .say
                        .send(ServerMessage::FileProgress { id: self.id, done: sent })
                        .await;
                }
            }
            if sent < size {
                return Err(Failed::new(
                    "failed",
                    format!(
                        "{} was not downloaded: the desktop stopped sending it after {sent} of \
                         {size} bytes",
                        self.name
                    ),
                ));
            }
            self.drained(&feed).await?;
            Ok(known.unwrap_or_else(|| sha.take().map(|s| s.finalize().into()).unwrap_or_default()))
        }
        .await;
        if let Err(f) = &fed {
            // Not a byte more goes, queued ones neither: the browser never has the whole file.
            link.abort(&f.message);
        }
        fed
    }

    /// Waits until the browser's request took the last pieces (the viewer is told the file is
    /// done only then), unless it went away first.
    async fn drained(&mut self, feed: &mpsc::Sender<links::Piece>) -> Result<(), Failed> {
        let give_up = tokio::time::Instant::now() + TAKE_WITHIN;
        while feed.capacity() < feed.max_capacity() {
            if feed.is_closed() || self.taken.borrow_and_update().cancelled {
                return Err(self.stopped());
            }
            if tokio::time::Instant::now() > give_up {
                return Err(self.idle());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Hands `chunk` to the browser's request, once it has room, unless the viewer cancels or
    /// the browser stopped the download (its connection went).
    async fn push(
        &mut self,
        feed: &mpsc::Sender<links::Piece>,
        chunk: Bytes,
    ) -> Result<(), Failed> {
        let permit = loop {
            if self.taken.borrow_and_update().cancelled {
                return Err(self.cancelled());
            }
            tokio::select! {
                permit = tokio::time::timeout(TAKE_WITHIN, feed.reserve()) => match permit {
                    Ok(Ok(p)) => break p,
                    Ok(Err(_)) => return Err(self.stopped()),
                    Err(_) => return Err(self.idle()),
                },
                changed = self.taken.changed() => {
                    if changed.is_err() {
                        return Err(self.cancelled());
                    }
                }
            }
        };
        permit.send(Ok(chunk));
        Ok(())
    }
}
