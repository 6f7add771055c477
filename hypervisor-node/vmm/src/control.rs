//! The control socket: JSON lines over a unix stream socket, on a thread of its own. The node
//! asks for status and metrics, pauses, resumes and stops the VM here.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::VmmMessage;
use crate::kvm_kind::KvmKind;

/// Longest request line.
const MAX_REQUEST: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    Status,
    Metrics,
    Pause,
    Resume,
    /// Presses the ACPI power button: a guest that handles it powers off by itself.
    PowerButton,
    /// Writes a snapshot of the VM into its `snapshot_dir` (`crate::snapshot`): the vCPUs
    /// pause for it and run again after, if they were running.
    Snapshot,
    Stop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlResponse {
    Status {
        vm_id: String,
        state: VmState,
        kvm: KvmKind,
        uptime_ms: u64,
    },
    Metrics {
        metrics: serde_json::Value,
    },
    /// A snapshot was written: guest memory bytes copied, and how long the VM was paused.
    Snapshot {
        memory_bytes: u64,
        ms: u64,
    },
    Ok,
    Error {
        message: String,
    },
}

impl ControlRequest {
    /// How long the VMM may take to answer: a snapshot writes the guest's memory to disk.
    pub fn answer_timeout(&self) -> Duration {
        match self {
            Self::Snapshot => Duration::from_secs(120),
            _ => Duration::from_secs(10),
        }
    }

    /// Parses one request line. serde does not enforce `deny_unknown_fields` on unit variants
    /// of an internally tagged enum, so extra keys are refused here.
    pub fn parse(line: &str) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let keys = v.as_object().map(|o| o.len()).ok_or("a request is a JSON object")?;
        if keys != 1 {
            return Err("a request has only the \"op\" field".into());
        }
        serde_json::from_value(v).map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    Paused,
}

/// The control thread and the event that ends it.
#[derive(Debug)]
pub struct ControlThread {
    exit: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl ControlThread {
    pub fn start(path: &Path, to_main: Sender<VmmMessage>) -> std::io::Result<Self> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        let exit = EventFd::new(libc::EFD_NONBLOCK)?;
        let exit_clone = exit.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve(&listener, &exit_clone, &to_main))?;
        Ok(Self { exit, thread: Some(thread) })
    }

    pub fn stop(mut self) {
        let _ = self.exit.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: &UnixListener, exit: &EventFd, to_main: &Sender<VmmMessage>) {
    let setup = || -> std::io::Result<Epoll> {
        let epoll = Epoll::new()?;
        epoll.ctl(ControlOperation::Add, listener.as_raw_fd(), EpollEvent::new(EventSet::IN, 1))?;
        epoll.ctl(ControlOperation::Add, exit.as_raw_fd(), EpollEvent::new(EventSet::IN, 2))?;
        Ok(epoll)
    };
    let epoll = match setup() {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "control socket: epoll set-up failed");
            return;
        }
    };
    crate::seccomp::install_or_abort(crate::seccomp::ThreadKind::Control);
    let mut events = [EpollEvent::default(); 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(error = %e, "control socket: epoll failed");
                return;
            }
        };
        for ev in &events[..n] {
            if ev.data() == 2 {
                return;
            }
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = handle(stream, to_main) {
                        debug!(error = %e, "control connection ended");
                    }
                }
                Err(e) => warn!(error = %e, "control socket: accept failed"),
            }
        }
    }
}

/// Serves one connection: a request per line, an answer per line, until the peer closes.
fn handle(stream: UnixStream, to_main: &Sender<VmmMessage>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let n = (&mut reader).take(MAX_REQUEST).read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        let response = match ControlRequest::parse(line.trim()) {
            Ok(req) => {
                let (tx, rx) = channel();
                if to_main.send(VmmMessage::Control(req.clone(), tx)).is_err() {
                    ControlResponse::Error { message: "the VM is shutting down".into() }
                } else {
                    rx.recv_timeout(req.answer_timeout()).unwrap_or(ControlResponse::Error {
                        message: "no answer from the VMM".into(),
                    })
                }
            }
            Err(e) => ControlResponse::Error { message: format!("bad request: {e}") },
        };
        let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        out.push(b'\n');
        writer.write_all(&out)?;
        if n as u64 >= MAX_REQUEST && !line.ends_with('\n') {
            return Ok(()); // An over-long line: answered once, then the connection closes.
        }
    }
}

/// A client for the control socket (the node, tests).
pub fn request(path: &Path, req: &ControlRequest) -> std::io::Result<ControlResponse> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(req.answer_timeout() + Duration::from_secs(5)))?;
    let mut w = stream.try_clone()?;
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    // The answer is one bounded line: a VMM that goes wrong cannot make its client buffer
    // without limit.
    let mut reader = BufReader::new(stream).take(MAX_REQUEST);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    serde_json::from_str(answer.trim()).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        assert_eq!(serde_json::to_string(&ControlRequest::Stop).expect("json"), r#"{"op":"stop"}"#);
        assert_eq!(ControlRequest::parse(r#"{"op":"status"}"#), Ok(ControlRequest::Status));
        assert!(ControlRequest::parse(r#"{"op":"reboot"}"#).is_err());
        assert!(ControlRequest::parse(r#"{"op":"stop","x":1}"#).is_err());
        assert!(ControlRequest::parse(r#"["stop"]"#).is_err());
        let r = ControlResponse::Status {
            vm_id: "a".into(),
            state: VmState::Running,
            kvm: KvmKind::Pvm,
            uptime_ms: 5,
        };
        let s = serde_json::to_string(&r).expect("json");
        assert_eq!(
            s,
            r#"{"result":"status","vm_id":"a","state":"running","kvm":"pvm","uptime_ms":5}"#
        );
    }

    #[test]
    fn the_socket_answers_and_refuses_garbage() {
        let dir = std::env::temp_dir().join(format!("atrium-vmm-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("ctl.sock");
        let (tx, rx) = channel();
        let ctl = ControlThread::start(&path, tx).expect("start");
        let main = std::thread::spawn(move || {
            if let Ok(VmmMessage::Control(req, reply)) = rx.recv() {
                assert_eq!(req, ControlRequest::Stop);
                reply.send(ControlResponse::Ok).expect("reply");
            }
        });
        assert_eq!(request(&path, &ControlRequest::Stop).expect("answer"), ControlResponse::Ok);
        main.join().expect("main");
        let mut s = UnixStream::connect(&path).expect("connect");
        s.write_all(b"{\"op\":\"nope\"}\n").expect("write");
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).expect("read");
        assert!(answer.contains("bad request"), "{answer}");
        ctl.stop();
        std::fs::remove_dir_all(dir).ok();
    }
}
