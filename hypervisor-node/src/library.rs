//! Images from the broker's library (docs/images.md, "Through the broker"): every heartbeat's
//! reply lists the disk images administrators uploaded ([`LibraryImage`]); this node fetches
//! each one it lacks, one at a time (`GET {broker}/api/v1/nodes/images/{name}/{version}`,
//! signed with its key), checks the bytes' SHA-256 against the reply's as they arrive, and
//! imports the file exactly as `atrium-node image import` would (the same checks: format,
//! `qemu-img`, partition table). A file whose hash differs is thrown away and never imported.
//! Where it is with each (fetching, or failed and why) goes to the broker in the heartbeat's
//! capacity ([`ImageFetch`]).
//!
//! A failure the same bytes would meet again (a hash that differs, an import refused) is not
//! tried again until the library offers another file under that name; one that may pass later
//! (the broker out of reach, a full disk) is tried again after [`RETRY_AFTER`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use atrium_protocol::node::{ImageFetch, LibraryImage};
use atrium_protocol::signed::{self, BROKER_AUDIENCE, NodeKey};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::image::import::{self, ImportOptions};
use crate::image::{Firmware, Image};
use crate::vm::VmManager;

/// How long a failure that may pass later waits before the image is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);
/// The longest a download may go without a byte arriving.
const READ_IDLE: Duration = Duration::from_secs(60);
/// Room left free on the images folder's file system beyond what an import needs.
const SPARE_BYTES: u64 = 1 << 30;

/// Where this node is with an image, as its images folder says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// Checked and listed, made from the library's file: pools may use it.
    Held,
    /// Its folder is there and being checked (a large image is hashed in the background).
    Checking,
    /// Its folder is there and the node refused it (a file changed or damaged, no manifest), or
    /// it holds another image under that name and version; and why.
    Refused(String),
    Absent,
}

/// Where this node is with one library image it does not hold.
#[derive(Debug, Clone)]
struct Fetch {
    /// The file it is about (a new upload under the same name is another file).
    sha256: String,
    /// `None` while fetching.
    failed: Option<Failed>,
}

#[derive(Debug, Clone)]
struct Failed {
    why: String,
    /// Whether trying again may help, and since when it failed.
    retry: bool,
    at: Instant,
}

#[derive(Debug, Default)]
struct State {
    wanted: Vec<LibraryImage>,
    fetches: HashMap<(String, String), Fetch>,
}

/// The library as this node last heard of it, and its fetches.
#[derive(Debug, Default)]
pub struct Library {
    state: Mutex<State>,
    wake: tokio::sync::Notify,
}

impl Library {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the broker's latest heartbeat reply lists. An entry that fails its checks is
    /// logged and left out.
    pub fn want(&self, images: &[LibraryImage]) {
        let mut wanted = Vec::with_capacity(images.len());
        for i in images.iter().take(atrium_protocol::node::MAX_LIBRARY_IMAGES) {
            match i.validate() {
                Ok(()) => wanted.push(i.clone()),
                Err(e) => tracing::warn!(name = %i.name.chars().take(64).collect::<String>(),
                    "the broker's library lists an image this node cannot take: {e}"),
            }
        }
        let mut st = self.lock();
        st.fetches.retain(|(n, v), f| {
            wanted.iter().any(|w| w.name == *n && w.version == *v && w.sha256 == f.sha256)
        });
        st.wanted = wanted;
        drop(st);
        self.wake.notify_one();
    }

    /// The images being fetched or that failed, for the heartbeat.
    pub fn statuses(&self) -> Vec<ImageFetch> {
        let st = self.lock();
        let mut out: Vec<ImageFetch> = st
            .fetches
            .iter()
            .map(|((name, version), f)| ImageFetch {
                name: name.clone(),
                version: version.clone(),
                state: if f.failed.is_some() { "failed" } else { "fetching" }.to_owned(),
                error: f.failed.as_ref().map(|x| x.why.clone()),
            })
            .collect();
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        out
    }

    /// The next image to fetch: wanted, absent from this node (`holding`), and not failed for
    /// good. An image folder the node refused is a failure (tried again once it is gone); one
    /// being checked shows as fetching. Called by the one worker, between its fetches.
    fn next(&self, holding: impl Fn(&LibraryImage) -> Holding) -> Option<LibraryImage> {
        let mut st = self.lock();
        let State { wanted, fetches } = &mut *st;
        let mut chosen = None;
        for w in wanted.iter() {
            let key = (w.name.clone(), w.version.clone());
            match holding(w) {
                Holding::Held => {
                    fetches.remove(&key);
                    continue;
                }
                // Imported and being checked: still on its way, as the administrators see it.
                Holding::Checking => {
                    fetches.insert(key, Fetch { sha256: w.sha256.clone(), failed: None });
                    continue;
                }
                Holding::Refused(why) => {
                    let why = format!("the node refuses its copy: {why}");
                    fetches.insert(
                        key,
                        Fetch { sha256: w.sha256.clone(), failed: Some(failed(why, true)) },
                    );
                    continue;
                }
                Holding::Absent => {}
            }
            let eligible = match fetches.get(&key) {
                Some(Fetch { failed: Some(f), sha256 }) => {
                    *sha256 != w.sha256 || (f.retry && f.at.elapsed() >= RETRY_AFTER)
                }
                // The one worker asks between fetches: nothing is being fetched now (a folder that
                // was being checked is gone).
                Some(Fetch { failed: None, .. }) | None => true,
            };
            if eligible && chosen.is_none() {
                chosen = Some(w.clone());
            }
        }
        let next = chosen?;
        fetches.insert(
            (next.name.clone(), next.version.clone()),
            Fetch { sha256: next.sha256.clone(), failed: None },
        );
        Some(next)
    }

    /// Whether the library still offers this file of `image` (it may be removed meanwhile).
    fn offers(&self, image: &LibraryImage) -> bool {
        self.lock().wanted.iter().any(|w| w == image)
    }

    fn finish(&self, image: &LibraryImage, result: Result<(), Failed>) {
        let mut st = self.lock();
        let key = (image.name.clone(), image.version.clone());
        match result {
            Ok(()) => {
                st.fetches.remove(&key);
            }
            Err(f) => {
                st.fetches.insert(key, Fetch { sha256: image.sha256.clone(), failed: Some(f) });
            }
        }
    }
}

/// How this node reaches the broker's library.
#[derive(Debug)]
pub struct Fetcher {
    client: reqwest::Client,
    /// The broker's base URL, without a trailing `/`.
    base: String,
    key: Arc<NodeKey>,
}

impl Fetcher {
    /// A client with no limit on a whole download, only on a stall ([`READ_IDLE`]).
    pub fn new(base: &str, ca_file: Option<&Path>, key: Arc<NodeKey>) -> Result<Self, String> {
        let client = atrium_door::client::http_client(ca_file)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(READ_IDLE)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { client, base: base.trim_end_matches('/').to_owned(), key })
    }
}

/// Where this node is with `image`, from its catalog (`images`: what it lists now).
fn holding(
    catalog: &crate::image::ImageCatalog,
    images: &[Arc<Image>],
    image: &LibraryImage,
) -> Holding {
    let dir = catalog.root().join(&image.name).join(&image.version);
    let listed = images
        .iter()
        .find(|i| i.manifest.name == image.name && i.manifest.version == image.version);
    if let Some(i) = listed {
        return match i.manifest.imported.as_ref().map(|r| r.source_sha256.as_str()) {
            Some(h) if h == image.sha256 => Holding::Held,
            other => Holding::Refused(format!(
                "it holds another image as {}@{} (made from {}), not the library's",
                image.name,
                image.version,
                other.map_or_else(
                    || "Debian packages".to_owned(),
                    |h| format!("a file of SHA-256 {h}")
                )
            )),
        };
    }
    if let Some(why) = catalog.refusal(&dir) {
        Holding::Refused(why)
    } else if catalog.is_loading(&dir) || dir.join("manifest.json").is_file() {
        // Being checked, or checked since the list was read (listed at the next look).
        Holding::Checking
    } else if dir.exists() {
        Holding::Refused(format!("{} exists and holds no image (no manifest.json)", dir.display()))
    } else {
        Holding::Absent
    }
}

/// Fetches and imports what the library offers, until the task is dropped. Downloads a
/// previous run left (a crash, a restart) are removed first: this task is their only writer.
pub async fn run(library: Arc<Library>, node: Arc<VmManager>, fetcher: Fetcher) {
    let downloads = node.images().root().join(".library");
    for entry in std::fs::read_dir(&downloads).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().ends_with(".part") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    loop {
        let catalog = node.images();
        let images = catalog.list();
        let Some(image) = library.next(|w| holding(catalog, &images, w)) else {
            library.wake.notified().await;
            continue;
        };
        let reference = format!("{}@{}", image.name, image.version);
        tracing::info!(image = %reference, size = image.size_bytes, "fetching an image of the broker's library");
        let result = fetch_and_import(&fetcher, &node, &library, &image).await;
        match &result {
            Ok(()) => tracing::info!(image = %reference, "image of the broker's library imported"),
            Err(f) => {
                tracing::warn!(image = %reference, retry = f.retry, "an image of the broker's library was not imported: {}", f.why)
            }
        }
        library.finish(&image, result);
    }
}

fn failed(why: impl Into<String>, retry: bool) -> Failed {
    Failed { why: why.into(), retry, at: Instant::now() }
}

/// Removes a download when dropped.
struct Download(PathBuf);

impl Drop for Download {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn fetch_and_import(
    fetcher: &Fetcher,
    node: &VmManager,
    library: &Library,
    image: &LibraryImage,
) -> Result<(), Failed> {
    let images_dir = node.images().root().to_owned();
    let out = images_dir.join(&image.name).join(&image.version);
    let work = images_dir.join(&image.name).join(format!(".{}.importing", image.version));
    if work.exists() {
        return Err(failed(
            format!(
                "{} exists: an import of this version runs, or one was cut off (remove it then)",
                work.display()
            ),
            true,
        ));
    }
    if out.exists() {
        // Imported by hand meanwhile, or the folder appeared between two looks: the catalog
        // says at the next one whether it is held, being checked or refused.
        return Err(failed(format!("{} exists already", out.display()), true));
    }
    let downloads = images_dir.join(".library");
    tokio::fs::create_dir_all(&downloads)
        .await
        .map_err(|e| failed(format!("making {}: {e}", downloads.display()), true))?;
    // The download, and its conversion beside it (about its size again; a compressed qcow2
    // may grow more, which the conversion then reports).
    let needed = image.size_bytes.saturating_mul(2).saturating_add(SPARE_BYTES);
    if let Some(free) = atrium_protocol::volume::free_bytes(&downloads)
        && free < needed
    {
        return Err(failed(
            format!(
                "{} has {} MiB free; this image needs {} MiB",
                images_dir.display(),
                free >> 20,
                needed >> 20
            ),
            true,
        ));
    }
    let file = Download(downloads.join(format!("{}@{}.part", image.name, image.version)));
    download(fetcher, node.node_id(), image, &file.0).await?;
    if !library.offers(image) {
        return Err(failed("removed from the library while it was fetched", true));
    }
    let opts = ImportOptions {
        source: file.0.clone(),
        name: image.name.clone(),
        version: image.version.clone(),
        firmware: if image.firmware == "bios" { Firmware::Bios } else { Firmware::Uefi },
        format: image
            .format
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| failed(e, false))?,
        secure_boot: image.secure_boot,
        tpm: image.tpm,
        agent: image.agent,
        min_memory_mib: image.min_memory_mib,
        out,
        qemu_img: node.config().qemu.img_binary.clone(),
    };
    let imported = tokio::task::spawn_blocking(move || import::import(&opts))
        .await
        .map_err(|e| failed(format!("the import stopped: {e}"), true))?;
    // The file is no bootable disk: the same file fails again. A full disk or a tool that
    // failed may pass later.
    let imported = imported.map_err(|e| match e {
        import::ImportError::Refused(why) => failed(format!("import refused: {why}"), false),
        e => failed(format!("the import failed: {e}"), true),
    })?;
    // Checked once more: the import hashed the file it read.
    match imported.manifest.imported.as_ref().map(|i| i.source_sha256.as_str()) {
        Some(h) if h == image.sha256 => {}
        other => {
            let _ = std::fs::remove_dir_all(&imported.dir);
            return Err(failed(
                format!("the imported file hashes to {other:?}, not {}", image.sha256),
                false,
            ));
        }
    }
    drop(file);
    Ok(())
}

/// Downloads `image` to `path`, checking its size and SHA-256 on the way.
async fn download(
    fetcher: &Fetcher,
    node_id: &str,
    image: &LibraryImage,
    path: &Path,
) -> Result<(), Failed> {
    let path_and_query = format!("/api/v1/nodes/images/{}/{}", image.name, image.version);
    let req = signed::Request { method: "GET", path_and_query: &path_and_query, body: b"" };
    let token = fetcher
        .key
        .sign(node_id, BROKER_AUDIENCE, &req, signed::now_secs())
        .map_err(|e| failed(format!("signing for the broker: {e}"), true))?;
    let mut resp = fetcher
        .client
        .get(format!("{}{path_and_query}", fetcher.base))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| failed(format!("the broker is out of reach: {e}"), true))?;
    let status = resp.status();
    if !status.is_success() {
        // Gone from the library since (404) or refused: tried again when the list says so.
        return Err(failed(format!("the broker answered {status}"), true));
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| failed(format!("writing {}: {e}", path.display()), true))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let chunk = resp
            .chunk()
            .await
            .map_err(|e| failed(format!("the download broke off after {size} bytes: {e}"), true))?;
        let Some(chunk) = chunk else { break };
        size += chunk.len() as u64;
        if size > image.size_bytes {
            return Err(failed(
                format!("the broker sent more than the image's {} bytes", image.size_bytes),
                false,
            ));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| failed(format!("writing {}: {e}", path.display()), true))?;
    }
    file.sync_all().await.map_err(|e| failed(format!("writing {}: {e}", path.display()), true))?;
    if size != image.size_bytes {
        return Err(failed(
            format!("the download ended after {size} of {} bytes", image.size_bytes),
            true,
        ));
    }
    let got = crate::image::debs::hex(&hasher.finalize());
    if got != image.sha256 {
        return Err(failed(
            format!(
                "the file's SHA-256 is {got}, not the library's {}: it changed on the broker or on \
                 its way; it is not imported",
                image.sha256
            ),
            false,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;

    fn image(name: &str, sha256: &str, size_bytes: u64) -> LibraryImage {
        LibraryImage {
            name: name.into(),
            version: "1".into(),
            sha256: sha256.into(),
            size_bytes,
            format: None,
            firmware: "uefi".into(),
            secure_boot: false,
            tpm: false,
            agent: true,
            min_memory_mib: 256,
        }
    }

    /// What is fetched next: wanted and absent; a failure the same file would meet again is
    /// not tried again until the library offers another file; one that may pass later waits
    /// [`RETRY_AFTER`]; an image the library dropped is forgotten; a folder being checked is
    /// left alone, one the node refused is a failure, one it holds is done. An entry that fails
    /// its checks is never taken.
    #[test]
    fn the_library_fetches_each_file_until_it_fails_for_good() {
        let lib = Library::default();
        let (a, b) = (image("a", &"1".repeat(64), 10), image("b", &"2".repeat(64), 10));
        let mut bad = image("c", &"3".repeat(64), 10);
        bad.firmware = "coreboot".into();
        lib.want(&[a.clone(), b.clone(), bad]);
        let none = |_: &LibraryImage| Holding::Absent;
        let a_checking =
            |i: &LibraryImage| if i.name == "a" { Holding::Checking } else { Holding::Absent };
        // a's folder is being checked (it shows as fetching): b is fetched.
        assert_eq!(lib.next(a_checking).map(|i| i.name), Some("b".into()));
        let states: Vec<_> = lib.statuses().into_iter().map(|s| (s.name, s.state)).collect();
        assert_eq!(states, [("a".into(), "fetching".into()), ("b".into(), "fetching".into())]);
        lib.finish(&b, Err(failed("the broker is out of reach", true)));
        // a's folder is gone: a is fetched.
        assert_eq!(lib.next(none).map(|i| i.name), Some("a".into()));
        lib.finish(&a, Err(failed("not a disk", false)));
        assert!(lib.next(none).is_none(), "neither is tried again at once, the bad one never");
        let a_state = lib.statuses().into_iter().find(|s| s.name == "a").unwrap();
        assert_eq!(
            (a_state.state.as_str(), a_state.error.as_deref()),
            ("failed", Some("not a disk"))
        );
        // The retry comes after RETRY_AFTER.
        lib.lock()
            .fetches
            .get_mut(&("b".into(), "1".into()))
            .unwrap()
            .failed
            .as_mut()
            .unwrap()
            .at = Instant::now().checked_sub(RETRY_AFTER).unwrap();
        assert_eq!(lib.next(none).map(|i| i.name), Some("b".into()));
        lib.finish(&b, Ok(()));
        // Another file under a's name is tried; b, dropped from the library, is forgotten.
        let a2 = image("a", &"4".repeat(64), 10);
        lib.want(std::slice::from_ref(&a2));
        assert!(lib.statuses().iter().all(|s| s.name != "b"));
        assert_eq!(lib.next(none).map(|i| i.sha256), Some(a2.sha256.clone()));
        // Its folder refused (a file changed since): a failure that says so, no fetch.
        lib.finish(&a2, Ok(()));
        let refused = |_: &LibraryImage| Holding::Refused("sha256 of disk.qcow2 differs".into());
        assert!(lib.next(refused).is_none());
        let s = &lib.statuses()[0];
        assert_eq!(s.state, "failed");
        assert!(
            s.error.as_deref().unwrap_or_default().contains("refuses its copy: sha256"),
            "{s:?}"
        );
        // Held: done, nothing to say.
        assert!(lib.next(|_: &LibraryImage| Holding::Held).is_none());
        assert!(lib.statuses().is_empty());
    }

    /// A broker's image file: `body` to a request signed by `key`'s holder.
    async fn serve(body: Vec<u8>, length: Option<u64>, public: String) -> String {
        let app = axum::Router::new().route(
            "/api/v1/nodes/images/{name}/{version}",
            axum::routing::get(move |headers: HeaderMap| {
                let (body, public) = (body.clone(), public.clone());
                async move {
                    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                    let token = signed::bearer(auth).expect("a bearer token");
                    let key = signed::node_public_key(&public).expect("a key");
                    let req = signed::Request {
                        method: "GET",
                        path_and_query: "/api/v1/nodes/images/disk/1",
                        body: b"",
                    };
                    if signed::verify(token, &key, BROKER_AUDIENCE, &req, signed::now_secs(), 5)
                        .is_err()
                    {
                        return StatusCode::UNAUTHORIZED.into_response();
                    }
                    let len = length.unwrap_or(body.len() as u64);
                    ([(axum::http::header::CONTENT_LENGTH, len)], body).into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// The bytes are checked as they come: the library's hash and size or nothing, and a file
    /// whose hash differs is a failure for good (the same file would fail again).
    #[tokio::test]
    async fn a_download_is_kept_only_with_the_librarys_hash() {
        let key = Arc::new(NodeKey::ephemeral());
        let disk: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let sha = crate::image::debs::hex(&Sha256::digest(&disk));
        let dir = std::env::temp_dir().join(format!("atrium-library-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("disk.part");
        let good = image("disk", &sha, disk.len() as u64);

        let base = serve(disk.clone(), None, key.public().to_owned()).await;
        let fetcher = Fetcher::new(&base, None, Arc::clone(&key)).unwrap();
        download(&fetcher, "node-1", &good, &file).await.unwrap();
        assert!(std::fs::read(&file).unwrap() == disk);

        let other = image("disk", &"0".repeat(64), disk.len() as u64);
        let f = download(&fetcher, "node-1", &other, &file).await.unwrap_err();
        assert!(!f.retry && f.why.contains("SHA-256"), "{f:?}");
        let shorter = image("disk", &sha, disk.len() as u64 - 1);
        let f = download(&fetcher, "node-1", &shorter, &file).await.unwrap_err();
        assert!(!f.retry && f.why.contains("more than"), "{f:?}");

        // Another node's signature is refused; a body cut short fails (and may be tried again).
        let stranger = Fetcher::new(&base, None, Arc::new(NodeKey::ephemeral())).unwrap();
        let f = download(&stranger, "node-1", &good, &file).await.unwrap_err();
        assert!(f.retry && f.why.contains("401"), "{f:?}");
        let cut =
            serve(disk[..1000].to_vec(), Some(disk.len() as u64), key.public().to_owned()).await;
        let fetcher = Fetcher::new(&cut, None, Arc::clone(&key)).unwrap();
        let f = download(&fetcher, "node-1", &good, &file).await.unwrap_err();
        assert!(f.retry, "{f:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
