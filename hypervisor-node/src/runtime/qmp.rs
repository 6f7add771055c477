//! A small QMP (QEMU Machine Protocol) client over a unix socket: JSON objects, one per line.
//! Commands go one at a time; asynchronous events in between are skipped (the node learns of a
//! VM's end from its process, not from events).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;

use super::RuntimeError;

/// Longest QMP line accepted (a `query-*` answer is a few KiB).
const MAX_LINE: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

#[derive(Debug)]
pub struct Qmp {
    conn: Mutex<Conn>,
}

fn err(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::Control(msg.into())
}

impl Conn {
    async fn read_value(&mut self) -> Result<Value, RuntimeError> {
        let mut line = String::new();
        let n = AsyncReadExt::take(&mut self.reader, u64::try_from(MAX_LINE).expect("fits"))
            .read_line(&mut line)
            .await
            .map_err(|e| err(format!("reading QMP: {e}")))?;
        if n == 0 {
            return Err(err("QMP connection closed (QEMU exited?)"));
        }
        if !line.ends_with('\n') {
            return Err(err("QMP line too long"));
        }
        serde_json::from_str(&line).map_err(|e| err(format!("bad QMP message: {e}")))
    }
}

impl Qmp {
    /// Connects and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<Self, RuntimeError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(RuntimeError::io(format!("connecting to QMP at {}", path.display())))?;
        let (r, w) = stream.into_split();
        let mut conn = Conn { reader: BufReader::new(r), writer: w, next_id: 1 };
        let greeting = tokio::time::timeout(TIMEOUT, conn.read_value())
            .await
            .map_err(|_| err("no QMP greeting"))??;
        if greeting.get("QMP").is_none() {
            return Err(err(format!("unexpected QMP greeting: {greeting}")));
        }
        let qmp = Self { conn: Mutex::new(conn) };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, RuntimeError> {
        let mut conn = self.conn.lock().await;
        let id = conn.next_id;
        conn.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg).expect("JSON values serialize");
        line.push(b'\n');
        let fut = async {
            conn.writer.write_all(&line).await.map_err(|e| err(format!("writing QMP: {e}")))?;
            loop {
                let v = conn.read_value().await?;
                if v.get("event").is_some() {
                    continue;
                }
                if v.get("id").and_then(Value::as_u64) != Some(id) {
                    continue;
                }
                if let Some(r) = v.get("return") {
                    return Ok(r.clone());
                }
                let desc = v
                    .pointer("/error/desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .to_owned();
                return Err(err(format!("{command}: {desc}")));
            }
        };
        tokio::time::timeout(TIMEOUT, fut)
            .await
            .map_err(|_| err(format!("{command}: no answer")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake QMP server: greets, then answers each command with the scripted lines.
    async fn serve(listener: UnixListener, answers: Vec<&'static str>) {
        let (stream, _) = listener.accept().await.expect("accept");
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").await.expect("greet");
        for a in answers {
            let mut line = String::new();
            r.read_line(&mut line).await.expect("read command");
            w.write_all(a.as_bytes()).await.expect("answer");
        }
    }

    #[tokio::test]
    async fn runs_commands_skipping_events() {
        let dir = std::env::temp_dir().join(format!("atrium-qmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = tokio::spawn(serve(
            listener,
            vec![
                "{\"return\": {}, \"id\": 1}\n",
                "{\"event\": \"RESUME\"}\n{\"return\": {\"status\": \"running\"}, \"id\": 2}\n",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}, \"id\": 3}\n",
            ],
        ));
        let qmp = Qmp::connect(&path).await.expect("connect");
        let status = qmp.execute("query-status", None).await.expect("status");
        assert_eq!(status["status"], "running");
        let e = qmp.execute("screendump", Some(json!({"filename": "/x"}))).await.unwrap_err();
        assert!(e.to_string().contains("screendump: nope"), "{e}");
        server.await.expect("server");
        // The server is gone: commands fail instead of hanging.
        assert!(qmp.execute("query-status", None).await.is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
