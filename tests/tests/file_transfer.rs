//! Files into and out of a real desktop (group `qemu`): a viewer of the console desktop under
//! QEMU sends files through the display proxy, which hashes them and has a real clamd scan
//! them on their way; the node streams them to the real guest agent, which keeps them hidden
//! until the verdict. A clean file lands in `~/Transfer`, the user's, with the hash it was sent
//! with; the EICAR test file, a cancelled upload, one cut off by a dropped connection, and
//! files policy refuses leave nothing behind. Downloads go back the same way: the viewer lists `~/Transfer` (regular files only,
//! no links), gets a file whole with its hash, within its window; a flagged file sends not a
//! byte. The clipboard's size limits are policy's too: text over them does not cross, either
//! way, and the viewer is told.

use std::time::Duration;

use anyhow::Context;
use atrium_display_testkit::issuer::{JwksServer, TicketIssuer};
use atrium_protocol::display::{ClientMessage, FILE_WINDOW, MAX_FILE_CHUNK};
use atrium_protocol::filetype::Kind;
use atrium_protocol::ticket::{Capabilities, DisplayClaims};
use atrium_tests::clamd::{Clamd, EICAR_SIGNATURE, eicar};
use atrium_tests::display::{DisplayProxy, DisplayViewer, Download, count_color};
use atrium_tests::node::{NodeProcess, console_image};
use atrium_tests::{Group, skip};
use serde_json::json;
use sha2::{Digest, Sha256};

const GREY: [u8; 3] = [0xaa, 0xaa, 0xaa];
const WITHIN: Duration = Duration::from_secs(120);

/// Pseudo-random bytes (not compressible, not all alike).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs `command` in the console and waits for what it copies (its output, through the
/// console's clipboard file) to satisfy `want`.
async fn run_in_guest(
    viewer: &mut DisplayViewer,
    command: &str,
    want: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    viewer.clipboard = None;
    viewer.type_text(&format!("{command} | tee clipboard.txt\n")).await?;
    viewer
        .wait_until(command, Duration::from_secs(90), |v| v.clipboard.as_deref().is_some_and(&want))
        .await?;
    Ok(viewer.clipboard.clone().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_cross_only_whole_scanned_and_allowed() -> anyhow::Result<()> {
    if skip(Group::Qemu, "files_cross_only_whole_scanned_and_allowed") {
        return Ok(());
    }
    let clamd = Clamd::start()?;
    let image = console_image()?;
    let node = NodeProcess::start(&image, "").await?;
    let spec = json!({ "image": "console", "vcpus": 1, "memory_mib": 256, "display": "1024x768" });
    let id = node.ready_vm(&spec, Duration::from_secs(240)).await?;

    let issuer = TicketIssuer::generate("k1");
    let jwks = JwksServer::start(TicketIssuer::jwks(&[&issuer])).await?;
    let extra = format!("clamd_socket = \"{}\"\n", clamd.socket.display());
    let proxy = DisplayProxy::start(&jwks.url(), &node.local_socket(), &extra).await?;
    let rights = Capabilities { file_upload: true, clipboard_copy_out: true, ..Default::default() };
    assert!(rights.scan_files, "uploads are scanned unless policy says otherwise");
    let mut viewer =
        DisplayViewer::connect(&proxy.ws_url(&id, &issuer.ticket(&id, rights))).await?;
    viewer
        .wait_until("console text", Duration::from_secs(60), |v| count_color(&v.rgb, GREY) > 2_000)
        .await?;
    let context =
        |what: &str| format!("{what}\nproxy log:\n{}\nnode log:\n{}", proxy.log(), node.log());

    // A clean file of several windows arrives whole, with the hash it was sent with.
    let report = noise(9 << 20 | 12_345, 7);
    let sent: [u8; 32] = Sha256::digest(&report).into();
    let (path, sha) = viewer
        .upload(1, "report.bin", &report, None, WITHIN)
        .await?
        .map_err(|m| anyhow::anyhow!("{m}"))
        .with_context(|| context("the clean upload"))?;
    assert_eq!(path, "/home/user/Transfer/report.bin");
    assert_eq!(sha, sent, "the proxy's hash is the file's");
    assert_eq!(viewer.uploads[&1].done, report.len() as u64, "progress reached the whole file");
    let line = format!("{}  Transfer/report.bin", hex(&sent));
    run_in_guest(&mut viewer, "sha256sum Transfer/report.bin", |c| c.trim_end() == line).await?;

    // The EICAR test file: refused, saying what the scanner found.
    let refused = viewer.upload(2, "notes.txt", &eicar(), None, WITHIN).await?;
    let message = refused.expect_err("a flagged file is refused");
    assert!(message.contains(EICAR_SIGNATURE), "{message}");
    assert!(message.contains("not put in your desktop"), "{message}");

    // Cancelled halfway.
    let big = noise(6 << 20, 9);
    let cancelled = viewer.upload(3, "big.iso", &big, Some(1 << 20), WITHIN).await?;
    assert!(cancelled.expect_err("cancelled").contains("cancelled"));

    // Cut halfway: the connection drops in the middle of a file, with no cancel. It fails
    // cleanly: nothing of it stays in the desktop (the listing below).
    let url = proxy.ws_url(&id, &issuer.ticket(&id, rights));
    let mut cut = DisplayViewer::connect(&url).await?;
    let size = big.len() as u64;
    cut.send(ClientMessage::FileOpen { id: 1, size, name: "cut.iso".into() }).await?;
    for chunk in big[..2 << 20].chunks(MAX_FILE_CHUNK) {
        cut.send(ClientMessage::FileData { id: 1, data: chunk.to_vec() }).await?;
    }
    cut.wait_until("part of the cut file taken", WITHIN, |v| {
        v.uploads.get(&1).is_some_and(|u| u.done >= 1 << 20)
    })
    .await?;
    drop(cut);

    // A name that is taken gets a free variant; a name with a folder in it is refused.
    let again = viewer.upload(4, "report.bin", b"second", None, WITHIN).await?;
    assert_eq!(again.map_err(|m| anyhow::anyhow!("{m}"))?.0, "/home/user/Transfer/report (2).bin");
    let sneaky = viewer.upload(5, "../.profile", b"evil", None, WITHIN).await?;
    assert!(sneaky.expect_err("a path is refused").contains("folder"));

    // Nothing else is in the folder (no hidden part files either), and the file is the user's.
    let want = "report (2).bin report.bin -rw-r--r-- 1 user user ";
    let listing =
        run_in_guest(&mut viewer, "echo $(ls -A Transfer) $(ls -l Transfer/report.bin)", |c| {
            c.starts_with("report") || c.contains(".atrium-part") || c.contains(".iso")
        })
        .await?;
    assert!(listing.starts_with(want), "{listing:?}\n{}", context("the transfer folder"));
    drop(viewer);

    downloads(&proxy, &issuer, &id, &report).await.with_context(|| context("downloads"))?;
    kinds_and_totals(&proxy, &issuer, &id).await.with_context(|| context("kinds and totals"))?;
    upload_links(&proxy, &issuer, &id).await.with_context(|| context("uploads over links"))?;

    // Policy: a file over the viewer's limit, and a viewer not allowed uploads at all.
    let small = Capabilities { file_upload: true, upload_max_bytes: 1 << 20, ..Default::default() };
    let mut limited =
        DisplayViewer::connect(&proxy.ws_url(&id, &issuer.ticket(&id, small))).await?;
    let over = limited.upload(1, "big.iso", &big, None, WITHIN).await?;
    let m = over.expect_err("over the limit");
    assert!(m.contains("at most 1 MiB"), "{m}");
    drop(limited);
    let mut none =
        DisplayViewer::connect(&proxy.ws_url(&id, &issuer.ticket(&id, Capabilities::default())))
            .await?;
    let m = none.upload(1, "a.txt", b"a", None, WITHIN).await?.expect_err("not allowed");
    assert!(m.contains("not allowed"), "{m}");
    drop(none);

    // Clipboard limits: a paste over the viewer's limit does not reach the desktop, nor does a
    // copy over it reach the viewer; each is refused with its size and the limit.
    let clip = Capabilities {
        clipboard_copy_out: true,
        clipboard_paste_in: true,
        clipboard_out_max_bytes: 40,
        clipboard_in_max_bytes: 16,
        clipboard_in_images: true,
        ..Default::default()
    };
    let mut c = DisplayViewer::connect(&proxy.ws_url(&id, &issuer.ticket(&id, clip))).await?;
    c.send(ClientMessage::Clipboard { text: "x".repeat(100) }).await?;
    c.wait_until("the paste refused", Duration::from_secs(30), |v| !v.clipboard_refused.is_empty())
        .await?;
    assert_eq!(c.clipboard_refused[0], (false, 100, 16));
    c.type_text(&format!("echo {} | tee clipboard.txt\n", "y".repeat(60))).await?;
    c.wait_until("the copy refused", Duration::from_secs(90), |v| v.clipboard_refused.len() > 1)
        .await?;
    assert_eq!(c.clipboard_refused[1], (true, 61, 40));
    assert_eq!(c.clipboard, None, "the refused text never reached the viewer");
    // An image over the limit is refused the same way; one that is not a PNG file is not
    // answered at all (nor does it reach the desktop).
    let png = real_png(2, 2);
    // Not PNG files: another format, and a PNG file with something after its end.
    c.send(ClientMessage::ClipboardImage { png: b"GIF89a, not a PNG file".to_vec() }).await?;
    let smuggled = [png.clone(), b"MZ, a program after the image".to_vec()].concat();
    c.send(ClientMessage::ClipboardImage { png: smuggled }).await?;
    c.send(ClientMessage::ClipboardImage { png: png.clone() }).await?;
    c.wait_until("the image refused", Duration::from_secs(30), |v| v.clipboard_refused.len() > 2)
        .await?;
    assert_eq!(c.clipboard_refused[2..], [(false, u32::try_from(png.len())?, 16)]);
    // Within the limits, both ways.
    c.send(ClientMessage::Clipboard { text: "short".into() }).await?;
    c.clipboard = None;
    // (Read before the pipeline starts: tee empties the file as it opens it.)
    c.type_text("X=$(cat clipboard.txt); echo $X ok | tee clipboard.txt\n").await?;
    c.wait_until("a short copy", Duration::from_secs(90), |v| v.clipboard.is_some()).await?;
    assert_eq!(c.clipboard.as_deref(), Some("short ok\n"), "the short paste landed, the copy came");
    drop(c);

    // A proxy whose policy wants scanning and that has no scanner refuses, saying so.
    let unscanned = DisplayProxy::start(&jwks.url(), &node.local_socket(), "").await?;
    let mut v = DisplayViewer::connect(&unscanned.ws_url(&id, &issuer.ticket(&id, rights))).await?;
    let m = v.upload(1, "a.txt", b"a", None, WITHIN).await?.expect_err("no scanner");
    assert!(m.contains("no scanner"), "{m}");
    let get = Capabilities { file_download: true, ..Default::default() };
    let mut v = DisplayViewer::connect(&unscanned.ws_url(&id, &issuer.ticket(&id, get))).await?;
    let m = v.download(1, "report.bin", None, WITHIN).await?.expect_err("no scanner");
    assert!(m.contains("no scanner"), "{m}");
    drop(clamd);
    Ok(())
}

/// Uploads over links, as the web client sends them: the file as the body of a `PUT` to the
/// proxy, scanned and saved as over the connection; a body of the wrong size fails; a link
/// nobody uses is withdrawn and the bytes come over the connection; CORS for allowed pages.
async fn upload_links(proxy: &DisplayProxy, issuer: &TicketIssuer, id: &str) -> anyhow::Result<()> {
    let rights = Capabilities { file_upload: true, clipboard_copy_out: true, ..Default::default() };
    let mut v = DisplayViewer::connect(&proxy.ws_url(id, &issuer.ticket(id, rights))).await?;
    let http = reqwest::Client::new();
    let data = noise(3 << 20 | 77, 21);
    let token = v
        .put_link(1, "linked.bin", data.len() as u64, WITHIN)
        .await?
        .map_err(anyhow::Error::msg)?;
    let url = proxy.link_url(id, &token);
    // Its CORS preflight, for a page of an allowed origin only.
    let pre = |origin: &str| {
        http.request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .send()
    };
    let ok = pre("http://127.0.0.1").await?;
    assert_eq!(ok.status(), 204);
    assert_eq!(ok.headers()["access-control-allow-origin"], "http://127.0.0.1");
    assert_eq!(ok.headers()["access-control-allow-methods"], "PUT");
    assert_eq!(pre("https://evil.example").await?.status(), 403);
    assert_eq!(
        http.get(&url).send().await?.status(),
        404,
        "an upload's link gives nothing to a GET"
    );
    let put = http.put(&url).header("origin", "http://127.0.0.1").body(data.clone()).send().await?;
    assert_eq!(put.status(), 204);
    assert_eq!(put.headers()["access-control-allow-origin"], "http://127.0.0.1");
    let (path, sha) = v.upload_end(1, WITHIN).await?.map_err(anyhow::Error::msg)?;
    assert_eq!(path, "/home/user/Transfer/linked.bin");
    assert_eq!(sha, <[u8; 32]>::from(Sha256::digest(&data)), "the proxy hashed what the PUT sent");
    assert_eq!(v.uploads[&1].done, data.len() as u64, "the viewer was told the progress");
    assert_eq!(http.put(&url).body("x").send().await?.status(), 404, "a link is used once");

    // A body shorter than announced: the upload fails, and nothing is left of it.
    let token = v.put_link(2, "short.bin", 100, WITHIN).await?.map_err(anyhow::Error::msg)?;
    let put = http.put(proxy.link_url(id, &token)).body(vec![1u8; 50]).send().await?;
    assert_eq!(put.status(), 400);
    let m = v.upload_end(2, WITHIN).await?.expect_err("short");
    assert!(m.contains("sent 50 of 100 bytes"), "{m}");

    // A link nobody uses is withdrawn; the viewer then sends the bytes itself.
    let token = v.put_link(3, "fallback.txt", 8, WITHIN).await?.map_err(anyhow::Error::msg)?;
    v.wait_until("the link withdrawn", WITHIN, |v| v.uploads[&3].unlinked).await?;
    assert_eq!(http.put(proxy.link_url(id, &token)).body("too late").send().await?.status(), 404);
    let (path, _) = v
        .send_upload(3, "fallback.txt", b"fallback", None, WITHIN)
        .await?
        .map_err(anyhow::Error::msg)?;
    assert_eq!(path, "/home/user/Transfer/fallback.txt");
    let shown = run_in_guest(&mut v, "(cat Transfer/fallback.txt; echo; ls -A Transfer)", |c| {
        c.starts_with("fallback\n")
    })
    .await?;
    assert!(shown.contains("linked.bin") && !shown.contains("short"), "{shown}");
    Ok(())
}

/// Downloads over links, as the web client asks for them: fetched by HTTP from the proxy, once;
/// stopped when the browser's connection goes; over the viewer's connection when not fetched.
async fn links(
    proxy: &DisplayProxy,
    id: &str,
    v: &mut DisplayViewer,
    report: &[u8],
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let (size, token) = v.offer_link(4, "report.bin", WITHIN).await?.map_err(anyhow::Error::msg)?;
    assert_eq!(size, report.len() as u64);
    let url = proxy.link_url(id, &token);
    assert_eq!(
        http.get(proxy.link_url("another-vm", &token)).send().await?.status(),
        404,
        "a link is for its desktop only"
    );
    assert_eq!(http.head(&url).send().await?.status(), 405, "a HEAD does not take the link");
    let resp = http.get(&url).send().await?;
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-disposition"], "attachment; filename*=UTF-8''report.bin");
    assert_eq!(h["content-length"], report.len().to_string().as_str());
    assert_eq!(h["cache-control"], "no-store");
    assert!(h.get("etag").is_none() && h.get("last-modified").is_none(), "never resumed");
    let body = resp.bytes().await?;
    assert!(body == report, "the link gave the file ({} bytes)", body.len());
    let sha = v.take_download(4, "report.bin", None, WITHIN).await?.map_err(anyhow::Error::msg)?;
    assert_eq!(sha, <[u8; 32]>::from(Sha256::digest(report)), "the viewer is told the hash");
    let d = &v.downloads[&4];
    assert!(d.data.is_empty() && d.size.is_none(), "no byte came over the viewer's connection");
    assert_eq!(d.checked, report.len() as u64, "the viewer is told how far it got");
    assert_eq!(http.get(&url).send().await?.status(), 404, "a link is served once");

    // The browser stops the download (its connection closes): the proxy stops too.
    let (_, token) = v.offer_link(5, "report.bin", WITHIN).await?.map_err(anyhow::Error::msg)?;
    let mut resp = http.get(proxy.link_url(id, &token)).send().await?;
    assert!(!resp.chunk().await?.context("the first bytes")?.is_empty());
    drop(resp);
    let m = v.take_download(5, "report.bin", None, WITHIN).await?.expect_err("stopped");
    assert!(m.contains("the browser stopped the download"), "{m}");

    // A link nobody fetches is withdrawn, and the file comes over the connection instead.
    let (_, token) =
        v.offer_link(6, "report (2).bin", WITHIN).await?.map_err(anyhow::Error::msg)?;
    let sha = v.take_download(6, "report (2).bin", None, WITHIN).await?;
    assert_eq!(sha.map_err(anyhow::Error::msg)?, <[u8; 32]>::from(Sha256::digest(b"second")));
    assert_eq!(v.downloads[&6].data, b"second");
    assert_eq!(http.get(proxy.link_url(id, &token)).send().await?.status(), 404, "withdrawn");
    Ok(())
}

/// Downloads from the desktop, whose `~/Transfer` holds what the uploads left: `report.bin`
/// (`report`) and `report (2).bin`.
async fn downloads(
    proxy: &DisplayProxy,
    issuer: &TicketIssuer,
    id: &str,
    report: &[u8],
) -> anyhow::Result<()> {
    // The EICAR file reaches the desktop through a viewer whose policy does not scan uploads,
    // and a link and a pipe are made beside it: neither is offered.
    let rights = Capabilities {
        file_upload: true,
        scan_files: false,
        file_download: true,
        clipboard_copy_out: true,
        ..Default::default()
    };
    assert!(rights.scan_downloads, "downloads are scanned unless policy says otherwise");
    let mut v = DisplayViewer::connect(&proxy.ws_url(id, &issuer.ticket(id, rights))).await?;
    let planted = v.upload(1, "eicar.txt", &eicar(), None, WITHIN).await?;
    planted.map_err(|m| anyhow::anyhow!("{m}")).context("an unscanned upload")?;
    run_in_guest(&mut v, "ln -s /etc/passwd Transfer/link; mkfifo Transfer/fifo; echo made", |c| {
        c.starts_with("made")
    })
    .await?;

    let (message, files) = v.list_files(WITHIN).await?;
    assert_eq!(message, "");
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["eicar.txt", "report (2).bin", "report.bin"], "newest first, files only");
    assert_eq!(files[2].size, report.len() as u64);
    assert!(files[0].modified >= files[2].modified && files[2].modified > 1_600_000_000);

    // A clean file comes whole, with its hash, never more than the window ahead of the viewer.
    let sha = v
        .download(1 << 31, "report.bin", None, WITHIN)
        .await?
        .map_err(|m| anyhow::anyhow!("{m}"))?;
    let got = &v.downloads[&(1 << 31)];
    assert!(
        got.data == report,
        "the file came as it is ({} of {} bytes)",
        got.data.len(),
        report.len()
    );
    assert_eq!(sha, <[u8; 32]>::from(Sha256::digest(report)));
    assert!(got.checked > 0 && got.checked <= report.len() as u64, "the scan's progress was told");
    assert!(got.most_ahead <= FILE_WINDOW, "{} bytes ahead of the viewer", got.most_ahead);

    // The flagged file: refused, and not a byte of it came.
    let m = v.download((1 << 31) + 1, "eicar.txt", None, WITHIN).await?.expect_err("flagged");
    assert!(m.contains(EICAR_SIGNATURE) && m.contains("not downloaded"), "{m}");
    let flagged = &v.downloads[&((1 << 31) + 1)];
    assert!(flagged.size.is_none() && flagged.data.is_empty(), "nothing of it was sent");

    // What is not a regular file of the folder is not given, whatever its name.
    for (n, name) in ["link", "fifo", "../.profile", "nothing.txt"].into_iter().enumerate() {
        let n = (1 << 31) + 10 + u32::try_from(n)?;
        let m = v.download(n, name, None, WITHIN).await?.expect_err("not a file to give");
        assert!(!m.is_empty(), "{name}");
    }
    drop(v);

    // Unscanned (policy's @scan("off")): streamed as it is read, and a cancel stops it.
    let unscanned =
        Capabilities { file_download: true, scan_downloads: false, ..Default::default() };
    let mut v = DisplayViewer::connect(&proxy.ws_url(id, &issuer.ticket(id, unscanned))).await?;
    let m = v.download(1, "report.bin", Some(1 << 20), WITHIN).await?.expect_err("cancelled");
    assert!(m.contains("cancelled"), "{m}");
    // Cut halfway: the viewer goes away in the middle of a download. The agent stops sending
    // it, and the file downloads whole again over a new connection.
    let mut cut = DisplayViewer::connect(&proxy.ws_url(id, &issuer.ticket(id, unscanned))).await?;
    cut.downloads.insert(1, Download::default());
    cut.send(ClientMessage::FileGet { id: 1, name: "report.bin".into() }).await?;
    cut.wait_until("part of the download", WITHIN, |v| !v.downloads[&1].data.is_empty()).await?;
    assert!(cut.downloads[&1].data.len() < report.len(), "cut before its end");
    drop(cut);
    let again = v.download(3, "report.bin", None, WITHIN).await?;
    assert_eq!(
        again.map_err(|m| anyhow::anyhow!("{m}"))?,
        <[u8; 32]>::from(Sha256::digest(report))
    );
    assert!(v.downloads[&3].data == report, "the file came whole after a cut");
    let whole = v.download(2, "report (2).bin", None, WITHIN).await?;
    assert_eq!(
        whole.map_err(|m| anyhow::anyhow!("{m}"))?,
        <[u8; 32]>::from(Sha256::digest(b"second"))
    );
    assert_eq!(v.downloads[&2].data, b"second");
    links(proxy, id, &mut v, report).await?;
    drop(v);

    // Policy: over the size limit, and no downloads at all.
    let small =
        Capabilities { file_download: true, download_max_bytes: 1 << 20, ..Default::default() };
    let mut v = DisplayViewer::connect(&proxy.ws_url(id, &issuer.ticket(id, small))).await?;
    let m = v.download(1, "report.bin", None, WITHIN).await?.expect_err("over the limit");
    assert!(m.contains("at most 1 MiB"), "{m}");
    drop(v);
    let none = Capabilities::default();
    let mut v = DisplayViewer::connect(&proxy.ws_url(id, &issuer.ticket(id, none))).await?;
    let (message, files) = v.list_files(WITHIN).await?;
    assert!(message.contains("not allowed") && files.is_empty(), "{message}");
    let m = v.download(1, "report.bin", None, WITHIN).await?.expect_err("not allowed");
    assert!(m.contains("not allowed"), "{m}");
    Ok(())
}

/// Policy's kinds of file (by content) and session totals (across the session's viewers).
async fn kinds_and_totals(
    proxy: &DisplayProxy,
    issuer: &TicketIssuer,
    id: &str,
) -> anyhow::Result<()> {
    let url = |sid: &str, caps: Capabilities| {
        let claims = DisplayClaims { sid: sid.into(), ..TicketIssuer::claims(id, caps, 30) };
        proxy.ws_url(id, &issuer.sign(&claims))
    };
    let kinds = Capabilities {
        file_upload: true,
        file_download: true,
        upload_types: Kind::Pdf.bit() | Kind::Image.bit(),
        download_types: Kind::Text.bit(),
        ..Default::default()
    };
    let mut v = DisplayViewer::connect(&url("session-2", kinds)).await?;
    // A program named as a PDF is refused by what it is.
    let mut program = b"MZ\x90\0\x03\0\0\0\x04\0\0\0\xff\xff\0\0".to_vec();
    program.extend(noise(100_000, 3));
    let m = v.upload(1, "invoice.pdf", &program, None, WITHIN).await?.expect_err("a program");
    assert!(
        m.contains("is a program or script; only PDF documents and images may be uploaded"),
        "{m}"
    );
    let pdf = b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n";
    let saved = v.upload(2, "scan.pdf", pdf, None, WITHIN).await?;
    assert_eq!(saved.map_err(|m| anyhow::anyhow!("{m}"))?.0, "/home/user/Transfer/scan.pdf");
    // Out: only text; the noise of report.bin is not, the word in report (2).bin is.
    let m = v.download(1 << 31, "report.bin", None, WITHIN).await?.expect_err("not text");
    assert!(m.contains("only text files may be downloaded"), "{m}");
    let text = v.download((1 << 31) + 1, "report (2).bin", None, WITHIN).await?;
    text.map_err(|m| anyhow::anyhow!("{m}"))?;
    drop(v);

    // 1 MiB in per session, however many viewers it has: what was refused or failed does not
    // count, another session has its own.
    let total =
        Capabilities { file_upload: true, upload_session_max_bytes: 1 << 20, ..Default::default() };
    let part = noise(600 << 10, 5);
    let mut v = DisplayViewer::connect(&url("session-3", total)).await?;
    v.upload(1, "part1.bin", &part, None, WITHIN).await?.map_err(|m| anyhow::anyhow!("{m}"))?;
    drop(v);
    let mut again = DisplayViewer::connect(&url("session-3", total)).await?;
    let m = again.upload(1, "part2.bin", &part, None, WITHIN).await?.expect_err("over the total");
    assert!(m.contains("may upload 1 MiB in all, 1 MiB of which are used"), "{m}");
    let small = &part[..300 << 10];
    again.upload(2, "part3.bin", small, None, WITHIN).await?.map_err(|m| anyhow::anyhow!("{m}"))?;
    let mut other = DisplayViewer::connect(&url("session-4", total)).await?;
    other.upload(1, "part4.bin", &part, None, WITHIN).await?.map_err(|m| anyhow::anyhow!("{m}"))?;
    Ok(())
}

/// A real PNG file of `width` x `height` black pixels.
fn real_png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let pixels = vec![0; usize::try_from(width * height * 4).expect("small")];
    enc.write_header().expect("header").write_image_data(&pixels).expect("pixels");
    out
}
