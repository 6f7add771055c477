//! Files the browser moves itself, over one-time links `/files/{vm}/{token}` (a random 128-bit
//! token), so the page holds none of their bytes (over the WebSocket every chunk is a buffer of
//! the page's until its garbage is collected: about 200 MiB in Chromium for a 1 GiB download).
//!
//! - A download asked for with [`atrium_protocol::display::ClientMessage::FileFetch`]: the web
//!   client opens the link in a hidden frame (`GET`), and the browser's own download takes the
//!   bytes straight to disk. The download's task feeds them ([`Offer::feed`]).
//! - An upload started with [`atrium_protocol::display::ClientMessage::FilePut`]: the web
//!   client sends the file as the body of a `PUT` to the link, which the browser streams from
//!   the disk; the route passes it into the upload's task as the viewer's chunks would.
//!
//! The route takes a link with [`Links::fetch`], once. A link not fetched within a few seconds
//! is withdrawn (the file then moves over the WebSocket), and so is one whose task ended.
//!
//!   let (mut offer, feed) = links.offer(vm, Way::Download { name, size })?;  // say FileLink
//!   offer.fetched().await;  feed.send(Ok(bytes)).await...
//!   let f = links.fetch(vm, token_hex, upload)?;     // the route (GET: false, PUT: true)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use tokio::sync::{mpsc, oneshot};

/// Links waiting to be fetched in the whole proxy, at most (each viewer has at most
/// [`super::MAX_DOWNLOADS_PER_VIEWER`] downloads).
/// What a request for a link that is not there (or no longer) is told, wherever it asks: the
/// proxy or a gateway in front of it.
pub const NO_SUCH_LINK: &str =
    "no such file link: a link is used once, within seconds of being offered";

pub const MAX_OPEN_LINKS: usize = 1024;
/// Pieces (each at most [`atrium_protocol::display::MAX_FILE_CHUNK`]) queued for the browser's
/// connection beyond what it took: the connection's own flow control holds the rest back.
const QUEUED: usize = 4;

/// Bytes of the file, or why it ended early (the browser's download then fails).
pub type Piece = Result<Bytes, std::io::Error>;

/// Which way a link's file moves.
#[derive(Debug)]
pub enum Way {
    /// From the desktop: `GET` gives file `name`, `size` bytes.
    Download { name: String, size: u64 },
    /// Into the desktop: `PUT` passes `size` bytes on to `into` (the upload's task).
    Upload { size: u64, into: mpsc::Sender<super::upload::Piece> },
}

/// The links offered and not fetched yet.
#[derive(Debug, Default)]
pub struct Links {
    open: Mutex<HashMap<[u8; 16], Link>>,
}

#[derive(Debug)]
struct Link {
    vm: String,
    way: Fetched,
    fetched: oneshot::Sender<()>,
}

/// A link just fetched.
#[derive(Debug)]
pub enum Fetched {
    /// File `name`, `size` bytes, as the download's task feeds them into `body`; once `aborted`
    /// is set, nothing more of it may go (not even what is queued).
    Download { name: String, size: u64, body: mpsc::Receiver<Piece>, aborted: Arc<AtomicBool> },
    /// An upload of `size` bytes whose chunks go to `into`.
    Upload { size: u64, into: mpsc::Sender<super::upload::Piece> },
}

/// Where a download's task feeds its link's response.
#[derive(Debug, Clone)]
pub struct Feed {
    pub tx: mpsc::Sender<Piece>,
    aborted: Arc<AtomicBool>,
}

impl Feed {
    /// Ends the response short of its length at once, whatever is queued: the browser's
    /// download fails, and never has the whole file.
    pub fn abort(&self, why: &str) {
        self.aborted.store(true, Ordering::SeqCst);
        // Wakes a response waiting for the next piece (one that is not reads the flag first).
        let _ = self.tx.try_send(Err(std::io::Error::other(why.to_owned())));
    }
}

/// One link offered, held by its file's task. Dropping it withdraws the link.
#[derive(Debug)]
pub struct Offer {
    pub token: [u8; 16],
    links: Arc<Links>,
    fetched: oneshot::Receiver<()>,
}

impl Links {
    /// Offers a file of desktop `vm` moving `way` at a new link; none when too many are open.
    /// A download's bytes go to the feed returned.
    pub fn offer(self: &Arc<Self>, vm: &str, way: Way) -> Option<(Offer, Feed)> {
        let mut token = [0u8; 16];
        atrium_protocol::signed::random_fill(&mut token);
        let (tx, body) = mpsc::channel(QUEUED);
        let aborted = Arc::new(AtomicBool::new(false));
        let feed = Feed { tx, aborted: Arc::clone(&aborted) };
        let (fetched_tx, fetched) = oneshot::channel();
        let way = match way {
            Way::Download { name, size } => Fetched::Download { name, size, body, aborted },
            Way::Upload { size, into } => Fetched::Upload { size, into },
        };
        let link = Link { vm: vm.to_owned(), way, fetched: fetched_tx };
        let mut open = self.open.lock().expect("links lock");
        if open.len() >= MAX_OPEN_LINKS {
            return None;
        }
        open.insert(token, link);
        Some((Offer { token, links: Arc::clone(self), fetched }, feed))
    }

    /// Takes link `token` (lower-case hex, as sent) of desktop `vm`, an upload's when `upload`
    /// else a download's: it is served once. None when there is no such link.
    pub fn fetch(&self, vm: &str, token: &str, upload: bool) -> Option<Fetched> {
        let token = parse_token(token)?;
        let mut open = self.open.lock().expect("links lock");
        let link = open.get(&token)?;
        if link.vm != vm || matches!(link.way, Fetched::Upload { .. }) != upload {
            return None;
        }
        let link = open.remove(&token)?;
        let _ = link.fetched.send(());
        Some(link.way)
    }

    fn withdraw(&self, token: &[u8; 16]) -> bool {
        self.open.lock().expect("links lock").remove(token).is_some()
    }

    /// Links open now.
    pub fn open(&self) -> usize {
        self.open.lock().expect("links lock").len()
    }
}

impl Offer {
    /// Resolves once the link is fetched (and never when it is not: race it with a timer, then
    /// [`Offer::withdraw`]).
    pub async fn fetched(&mut self) {
        if (&mut self.fetched).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Withdraws the link; false when it was fetched meanwhile (the bytes must go there then).
    pub fn withdraw(&mut self) -> bool {
        self.links.withdraw(&self.token)
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        self.links.withdraw(&self.token);
    }
}

/// A token as 32 lower-case hex digits, or none.
fn parse_token(hex: &str) -> Option<[u8; 16]> {
    let b = hex.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 16];
    for (i, pair) in b.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// `token` as the link names it: 32 lower-case hex digits.
pub fn token_hex(token: &[u8; 16]) -> String {
    use std::fmt::Write as _;
    token.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_link_is_served_once_and_only_for_its_desktop() {
        let links = Arc::new(Links::default());
        let way = Way::Download { name: "bericht.pdf".into(), size: 3 };
        let (mut offer, feed) = links.offer("vm-1", way).unwrap();
        let hex = token_hex(&offer.token);
        assert_eq!(hex.len(), 32);
        assert!(links.fetch("vm-2", &hex, false).is_none(), "another desktop's path");
        assert!(links.fetch("vm-1", &hex.to_uppercase(), false).is_none(), "lower-case only");
        assert!(links.fetch("vm-1", &hex[..31], false).is_none());
        assert!(links.fetch("vm-1", &hex, true).is_none(), "a download's link takes no upload");
        let Some(Fetched::Download { name, size, mut body, .. }) = links.fetch("vm-1", &hex, false)
        else {
            panic!("not fetched")
        };
        assert_eq!((name.as_str(), size), ("bericht.pdf", 3));
        assert!(links.fetch("vm-1", &hex, false).is_none(), "served once");
        offer.fetched().await;
        assert!(!offer.withdraw(), "fetched: not withdrawn");
        feed.tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
        assert_eq!(body.recv().await.unwrap().unwrap(), Bytes::from_static(b"abc"));
        drop(body);
        assert!(feed.tx.send(Ok(Bytes::new())).await.is_err(), "the browser went away");
    }

    #[tokio::test]
    async fn a_withdrawn_or_dropped_offer_cannot_be_fetched() {
        let links = Arc::new(Links::default());
        let (into, _chunks) = mpsc::channel(1);
        let (mut offer, _) = links.offer("vm-1", Way::Upload { size: 1, into }).unwrap();
        let hex = token_hex(&offer.token);
        assert!(offer.withdraw());
        assert!(links.fetch("vm-1", &hex, true).is_none());
        let (offer, _) = links.offer("vm-1", Way::Download { name: "b".into(), size: 1 }).unwrap();
        let hex = token_hex(&offer.token);
        assert_eq!(links.open(), 1);
        drop(offer);
        assert_eq!(links.open(), 0);
        assert!(links.fetch("vm-1", &hex, false).is_none());
    }

    #[test]
    fn tokens_differ_and_the_proxy_holds_a_bounded_number() {
        let links = Arc::new(Links::default());
        let way = || Way::Download { name: "f".into(), size: 1 };
        let offers: Vec<_> =
            (0..MAX_OPEN_LINKS).map(|_| links.offer("vm", way()).unwrap()).collect();
        let distinct: std::collections::HashSet<_> = offers.iter().map(|o| o.0.token).collect();
        assert_eq!(distinct.len(), MAX_OPEN_LINKS);
        assert!(links.offer("vm", way()).is_none(), "full");
    }
}
