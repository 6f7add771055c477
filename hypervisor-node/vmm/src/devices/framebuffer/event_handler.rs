//! The display channel (`atrium_protocol::vmm_channel`): a unix socket per VM. On connect the
//! client gets `Hello` with the framebuffer memfd (`SCM_RIGHTS`); `GetDirty` is answered from
//! KVM's dirty log of the framebuffer slot; `Key` and `Pointer` are injected through
//! virtio-input. Up to [`MAX_CLIENTS`] clients at once, each with its own view of what changed;
//! when all slots are taken, a new connection replaces the oldest.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};

use atrium_protocol::vmm_channel::{FORMAT_XRGB8888, MAX_FRAME, VmmEvent, VmmRequest, frame_len};
use kvm_ioctls::VmFd;
use tracing::{info, warn};
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::conn::{Conn, ReadResult};
use crate::devices::bus::lock;
use crate::devices::framebuffer::{Framebuffer, PAGE_SIZE};
use crate::devices::virtio::MmioTransport;
use crate::devices::virtio::input::Input;

/// Bytes of answers a client may leave unread before it is dropped.
const MAX_OUT: usize = 4 << 20;
/// Clients at once (the display proxy, a screenshot, a reconnecting proxy).
pub const MAX_CLIENTS: usize = 4;

/// One connected client and the dirty pages it has not been told about yet.
#[derive(Debug)]
struct Client {
    conn: Conn,
    inbuf: Vec<u8>,
    dirty: Vec<u64>,
    serial: u64,
}

#[derive(Debug)]
pub struct DisplayChannel {
    pub listener: UnixListener,
    clients: Vec<Option<Client>>,
    accepted: u64,
    vm: Arc<VmFd>,
    fb: Arc<Framebuffer>,
    fb_slot: u32,
    keyboard: Arc<Mutex<MmioTransport<Input>>>,
    tablet: Arc<Mutex<MmioTransport<Input>>>,
}

impl DisplayChannel {
    pub fn new(
        listener: UnixListener,
        vm: Arc<VmFd>,
        fb: Arc<Framebuffer>,
        fb_slot: u32,
        keyboard: Arc<Mutex<MmioTransport<Input>>>,
        tablet: Arc<Mutex<MmioTransport<Input>>>,
    ) -> Self {
        let clients = (0..MAX_CLIENTS).map(|_| None).collect();
        Self { listener, clients, accepted: 0, vm, fb, fb_slot, keyboard, tablet }
    }

    fn hello(&self) -> VmmEvent {
        VmmEvent::Hello {
            width: self.fb.width,
            height: self.fb.height,
            stride: self.fb.stride,
            format: FORMAT_XRGB8888,
            fb_size: self.fb.size,
            page_size: u32::try_from(PAGE_SIZE).expect("4096"),
        }
    }

    /// Accepts a client into a free slot (or the oldest client's) and sends it `Hello` with
    /// the framebuffer. `token_base + slot` is its event-loop token.
    pub fn accept(&mut self, epoll: &Epoll, token_base: u64) {
        let stream = match self.listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "display channel: accept failed");
                return;
            }
        };
        let slot = match self.clients.iter().position(Option::is_none) {
            Some(s) => s,
            None => {
                let oldest = self
                    .clients
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, c)| c.as_ref().map_or(0, |c| c.serial))
                    .map_or(0, |(i, _)| i);
                self.drop_client(epoll, oldest, "replaced by a new client");
                oldest
            }
        };
        let hello = self.hello().encode();
        if let Err(e) = stream.send_with_fd(&hello[..], self.fb.memfd.as_raw_fd()) {
            warn!(error = %e, "display channel: sending Hello failed");
            return;
        }
        match Conn::new(stream, epoll, token_base + slot as u64, MAX_OUT) {
            Ok(conn) => {
                self.accepted += 1;
                let words = usize::try_from(self.fb.pages().div_ceil(64)).expect("few words");
                self.clients[slot] = Some(Client {
                    conn,
                    inbuf: Vec::new(),
                    dirty: vec![0; words],
                    serial: self.accepted,
                });
            }
            Err(e) => warn!(error = %e, "display channel: cannot watch the client"),
        }
    }

    fn drop_client(&mut self, epoll: &Epoll, slot: usize, why: &str) {
        if let Some(c) = self.clients.get_mut(slot).and_then(Option::take) {
            info!(reason = why, "display channel: client dropped");
            c.conn.close(epoll);
        }
    }

    pub fn on_client(&mut self, epoll: &Epoll, slot: usize, readable: bool, writable: bool) {
        if writable
            && let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut)
            && c.conn.flush(epoll).is_err()
        {
            self.drop_client(epoll, slot, "write failed");
            return;
        }
        if !readable {
            return;
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else { return };
            match c.conn.read(&mut buf) {
                ReadResult::Data(n) => c.inbuf.extend_from_slice(&buf[..n]),
                ReadResult::WouldBlock => break,
                ReadResult::Closed => {
                    self.drop_client(epoll, slot, "closed");
                    return;
                }
            }
            if let Err(why) = self.parse(epoll, slot) {
                self.drop_client(epoll, slot, &why);
                return;
            }
        }
    }

    /// Handles every complete frame in a client's input buffer.
    fn parse(&mut self, epoll: &Epoll, slot: usize) -> Result<(), String> {
        loop {
            let c = self.clients.get_mut(slot).and_then(Option::as_mut).ok_or("no client")?;
            let Some(prefix) = c.inbuf.get(..4) else { return Ok(()) };
            let n = frame_len(prefix.try_into().expect("4 bytes")).map_err(|e| e.to_string())?;
            debug_assert!(n <= MAX_FRAME);
            if c.inbuf.len() < 4 + n {
                return Ok(());
            }
            let req = VmmRequest::decode(&c.inbuf[4..4 + n]).map_err(|e| e.to_string())?;
            c.inbuf.drain(..4 + n);
            if let Some(event) = self.handle(slot, req) {
                let c = self.clients.get_mut(slot).and_then(Option::as_mut).ok_or("no client")?;
                c.conn.send(epoll, &event.encode()).map_err(|e| e.to_string())?;
            }
        }
    }

    /// Reads (and so clears) KVM's dirty log, adds it to every client's pending pages, and
    /// hands `slot` its own.
    fn take_dirty(&mut self, slot: usize) -> Vec<u64> {
        let size = usize::try_from(self.fb.size).expect("framebuffer fits in memory");
        let words = match self.vm.get_dirty_log(self.fb_slot, size) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "KVM_GET_DIRTY_LOG failed; reporting every page");
                vec![u64::MAX; size.div_ceil(4096 * 64)]
            }
        };
        for c in self.clients.iter_mut().flatten() {
            for (acc, w) in c.dirty.iter_mut().zip(&words) {
                *acc |= *w;
            }
        }
        self.clients
            .get_mut(slot)
            .and_then(Option::as_mut)
            .map(|c| std::mem::replace(&mut c.dirty, vec![0; words.len()]))
            .unwrap_or(words)
    }

    fn handle(&mut self, slot: usize, req: VmmRequest) -> Option<VmmEvent> {
        let refused = |reason: String| Some(VmmEvent::InputRefused { reason });
        match req {
            VmmRequest::GetDirty => {
                let words = self.take_dirty(slot);
                let pages = u32::try_from(self.fb.pages()).expect("a few thousand pages");
                Some(VmmEvent::Dirty { pages, bitmap: self.fb.bitmap_bytes(&words) })
            }
            VmmRequest::Key { code, down } => {
                let mut t = lock(&self.keyboard);
                if !t.is_active() {
                    return refused("the guest is not reading the keyboard".into());
                }
                match t.device_mut().key(code, down) {
                    Ok(()) => {
                        t.process(None);
                        None
                    }
                    Err(e) => refused(e.to_string()),
                }
            }
            VmmRequest::Pointer { x, y, buttons, wheel } => {
                let mut t = lock(&self.tablet);
                if !t.is_active() {
                    return refused("the guest is not reading the tablet".into());
                }
                match t.device_mut().pointer(x, y, buttons, wheel) {
                    Ok(()) => {
                        t.process(None);
                        None
                    }
                    Err(e) => refused(e.to_string()),
                }
            }
        }
    }
}
