//! The virus scanner: ClamAV's daemon (`clamd`) over its unix socket, fed with `INSTREAM` as
//! the file passes (its chunks, each after its length as a big-endian u32, then a zero
//! length), answering `stream: OK` or `stream: <signature> FOUND`.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// How long clamd has to answer once the whole file was sent (it scans while it receives, so
/// the answer usually comes at once).
const ANSWER_WITHIN: Duration = Duration::from_secs(120);
/// Longest answer read.
const MAX_ANSWER: usize = 4096;
/// Largest chunk sent to clamd at once.
const CHUNK: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum ScanError {
    #[error("the virus scanner cannot be reached at {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("the virus scanner failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the virus scanner did not answer within {0} s")]
    Timeout(u64),
    /// clamd's own error (a file over its `StreamMaxLength`, ...).
    #[error("the virus scanner could not scan the file: {0}")]
    Refused(String),
}

/// What the scanner said of a whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    /// The name of what it found (`Eicar-Test-Signature`).
    Found(String),
}

/// Where clamd listens.
#[derive(Debug, Clone)]
pub struct Scanner {
    socket: PathBuf,
}

/// One file being scanned.
#[derive(Debug)]
pub struct Scan {
    stream: UnixStream,
}

impl Scanner {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    /// Starts scanning a file.
    pub async fn start(&self) -> Result<Scan, ScanError> {
        let connect = UnixStream::connect(&self.socket);
        let mut stream = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| ScanError::Timeout(10))?
            .map_err(|source| ScanError::Connect {
                path: self.socket.display().to_string(),
                source,
            })?;
        stream.write_all(b"zINSTREAM\0").await?;
        Ok(Scan { stream })
    }
}

/// Reads clamd's answer (up to its NUL) and makes it a verdict.
async fn answer(stream: &mut UnixStream) -> Result<Verdict, ScanError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.contains(&0) || buf.len() > MAX_ANSWER {
            break;
        }
    }
    let end = buf.iter().position(|&b| b == 0 || b == b'\n').unwrap_or(buf.len());
    parse(&String::from_utf8_lossy(&buf[..end.min(MAX_ANSWER)]))
}

/// `stream: OK`, `stream: <name> FOUND`, or an error.
fn parse(text: &str) -> Result<Verdict, ScanError> {
    let text = text.trim();
    let body = text.strip_prefix("stream: ").unwrap_or(text);
    if body == "OK" {
        return Ok(Verdict::Clean);
    }
    if let Some(name) = body.strip_suffix(" FOUND") {
        return Ok(Verdict::Found(atrium_protocol::text::printable(name, 200)));
    }
    if text.is_empty() {
        return Err(ScanError::Refused("it closed the connection without a verdict".into()));
    }
    Err(ScanError::Refused(atrium_protocol::text::printable(body, 200)))
}

impl Scan {
    /// Passes the next bytes of the file to the scanner.
    pub async fn feed(&mut self, data: &[u8]) -> Result<(), ScanError> {
        for part in data.chunks(CHUNK) {
            let len = u32::try_from(part.len()).expect("chunks are 1 MiB");
            let sent = async {
                self.stream.write_all(&len.to_be_bytes()).await?;
                self.stream.write_all(part).await
            }
            .await;
            if let Err(e) = sent {
                // clamd closes a stream it refuses (over its size limit), saying why first.
                let why = tokio::time::timeout(Duration::from_secs(2), answer(&mut self.stream));
                return Err(match why.await {
                    Ok(Err(refused @ ScanError::Refused(_))) => refused,
                    _ => ScanError::Io(e),
                });
            }
        }
        Ok(())
    }

    /// The whole file was passed: the scanner's verdict.
    pub async fn finish(mut self) -> Result<Verdict, ScanError> {
        self.stream.write_all(&0u32.to_be_bytes()).await?;
        tokio::time::timeout(ANSWER_WITHIN, answer(&mut self.stream))
            .await
            .map_err(|_| ScanError::Timeout(ANSWER_WITHIN.as_secs()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert_eq!(parse("stream: OK").unwrap(), Verdict::Clean);
        assert_eq!(
            parse("stream: Eicar-Test-Signature FOUND").unwrap(),
            Verdict::Found("Eicar-Test-Signature".into())
        );
        let e = parse("INSTREAM size limit exceeded. ERROR").unwrap_err().to_string();
        assert!(e.contains("size limit exceeded"), "{e}");
        assert!(parse("").is_err());
        let forged = parse("stream: x\nINFO forged FOUND").unwrap();
        assert_eq!(forged, Verdict::Found("x\u{fffd}INFO forged".into()));
    }

    /// A stand-in for clamd on a socket: reads the stream, answers as told.
    async fn fake_clamd(answer: &'static [u8]) -> (PathBuf, tokio::task::JoinHandle<Vec<u8>>) {
        let path = std::env::temp_dir().join(format!("clamd-{}.sock", uuid_like()));
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Command, then chunks, until the zero length.
            loop {
                let n = s.read(&mut buf).await.expect("read");
                got.extend_from_slice(&buf[..n]);
                if n == 0 || got.ends_with(&[0, 0, 0, 0]) {
                    break;
                }
            }
            s.write_all(answer).await.expect("answer");
            got
        });
        (path, task)
    }

    fn uuid_like() -> String {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        format!("{}-{}", std::process::id(), t.as_nanos())
    }

    #[tokio::test]
    async fn a_file_is_streamed_in_chunks_and_the_verdict_read() {
        let (path, clamd) = fake_clamd(b"stream: Eicar-Test-Signature FOUND\0").await;
        let mut scan = Scanner::new(path.clone()).start().await.expect("start");
        scan.feed(b"hello ").await.expect("feed");
        scan.feed(b"world").await.expect("feed");
        assert_eq!(scan.finish().await.unwrap(), Verdict::Found("Eicar-Test-Signature".into()));
        let got = clamd.await.expect("clamd");
        let mut want = b"zINSTREAM\0".to_vec();
        want.extend_from_slice(&[0, 0, 0, 6]);
        want.extend_from_slice(b"hello ");
        want.extend_from_slice(&[0, 0, 0, 5]);
        want.extend_from_slice(b"world");
        want.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(got, want);
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn no_scanner_is_a_clear_error() {
        let e = Scanner::new("/nonexistent/clamd.ctl".into()).start().await.unwrap_err();
        assert!(e.to_string().contains("cannot be reached at /nonexistent/clamd.ctl"), "{e}");
    }
}
