//! The host side of the agent channel: a unix socket whose byte stream is the guest agent's
//! JSON lines (`atrium_protocol::agent`), bridged to the virtio-console port. One client at a
//! time (the node's agent client); a new connection replaces the old one. Reading from the
//! client pauses while the guest is not taking bytes.

use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};
use vmm_sys_util::epoll::Epoll;

use crate::conn::{Conn, ReadResult};
use crate::devices::bus::lock;
use crate::devices::virtio::MmioTransport;
use crate::devices::virtio::console::Console;

const MAX_OUT: usize = 1 << 20;

#[derive(Debug)]
pub struct AgentChannel {
    pub listener: UnixListener,
    client: Option<Conn>,
    console: Arc<Mutex<MmioTransport<Console>>>,
}

impl AgentChannel {
    pub fn new(listener: UnixListener, console: Arc<Mutex<MmioTransport<Console>>>) -> Self {
        Self { listener, client: None, console }
    }

    pub fn accept(&mut self, epoll: &Epoll, token: u64) {
        let stream = match self.listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "agent channel: accept failed");
                return;
            }
        };
        if let Some(old) = self.client.take() {
            info!("agent channel: a new client replaces the old one");
            old.close(epoll);
        }
        match Conn::new(stream, epoll, token, MAX_OUT) {
            Ok(c) => {
                self.client = Some(c);
                let mut t = lock(&self.console);
                t.device_mut().set_host_connected(true);
                t.process(None);
            }
            Err(e) => warn!(error = %e, "agent channel: cannot watch the client"),
        }
        self.pump(epoll);
    }

    fn drop_client(&mut self, epoll: &Epoll, why: &str) {
        if let Some(c) = self.client.take() {
            info!(reason = why, "agent channel: client dropped");
            c.close(epoll);
            let mut t = lock(&self.console);
            t.device_mut().set_host_connected(false);
            t.process(None);
        }
    }

    pub fn on_client(&mut self, epoll: &Epoll, readable: bool, writable: bool) {
        if writable
            && let Some(c) = self.client.as_mut()
            && c.flush(epoll).is_err()
        {
            self.drop_client(epoll, "write failed");
            return;
        }
        if readable {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let room = lock(&self.console).device().room();
                let Some(c) = self.client.as_mut() else { return };
                if room == 0 {
                    if c.set_reading(epoll, false).is_err() {
                        self.drop_client(epoll, "epoll failed");
                    }
                    break;
                }
                let want = room.min(buf.len());
                match c.read(&mut buf[..want]) {
                    ReadResult::Data(n) => {
                        let mut t = lock(&self.console);
                        t.device_mut().send_to_guest(&buf[..n]);
                        t.process(None);
                    }
                    ReadResult::WouldBlock => break,
                    ReadResult::Closed => {
                        self.drop_client(epoll, "closed");
                        return;
                    }
                }
            }
        }
        self.pump(epoll);
    }

    /// Moves what the guest wrote to the client and resumes reading when there is room.
    pub fn pump(&mut self, epoll: &Epoll) {
        let Some(c) = self.client.as_mut() else { return };
        let (out, room) = {
            let mut t = lock(&self.console);
            (t.device_mut().take_from_guest(), t.device().room())
        };
        let result = if out.is_empty() { Ok(()) } else { c.send(epoll, &out) };
        let result =
            result.and_then(|()| if room > 0 { c.set_reading(epoll, true) } else { Ok(()) });
        if let Err(e) = result {
            self.drop_client(epoll, &e.to_string());
        }
    }
}
