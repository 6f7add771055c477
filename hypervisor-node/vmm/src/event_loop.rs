//! The device event loop: one thread, one epoll. It serves virtio queue notifications
//! (ioeventfds), the display channel and the agent channel, until the exit event fires.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tracing::warn;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::lock;
use crate::devices::framebuffer::event_handler::{DisplayChannel, MAX_CLIENTS};
use crate::devices::virtio::console::event_handler::AgentChannel;
use crate::devices::virtio::{MmioTransport, VirtioDevice};

const EXIT: u64 = 1;
const DISPLAY_LISTEN: u64 = 2;
const AGENT_LISTEN: u64 = 4;
const AGENT_CLIENT: u64 = 5;
const DISPLAY_CLIENT_BASE: u64 = 10;
const VIRTIO_BASE: u64 = 100;

/// A virtio device as the event loop sees it: something to run when its queue is notified.
pub trait Notify: Send {
    fn notify(&mut self);
}

impl<D: VirtioDevice> Notify for MmioTransport<D> {
    fn notify(&mut self) {
        self.process(Some(0));
    }
}

pub struct EventLoop {
    epoll: Epoll,
    exit: EventFd,
    virtio: Vec<(EventFd, Arc<Mutex<dyn Notify>>)>,
    display: Option<DisplayChannel>,
    agent: Option<AgentChannel>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop").field("virtio", &self.virtio.len()).finish_non_exhaustive()
    }
}

/// The running loop: signal `exit` and join.
#[derive(Debug)]
pub struct EventLoopHandle {
    exit: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl EventLoopHandle {
    pub fn stop(mut self) {
        let _ = self.exit.write(1);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            warn!("event loop thread panicked");
        }
    }
}

impl EventLoop {
    pub fn new() -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        let exit = EventFd::new(libc::EFD_NONBLOCK)?;
        epoll.ctl(ControlOperation::Add, exit.as_raw_fd(), EpollEvent::new(EventSet::IN, EXIT))?;
        Ok(Self { epoll, exit, virtio: Vec::new(), display: None, agent: None })
    }

    pub fn add_virtio(
        &mut self,
        ioevent: EventFd,
        device: Arc<Mutex<dyn Notify>>,
    ) -> std::io::Result<()> {
        let token = VIRTIO_BASE + self.virtio.len() as u64;
        self.epoll.ctl(
            ControlOperation::Add,
            ioevent.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token),
        )?;
        self.virtio.push((ioevent, device));
        Ok(())
    }

    pub fn set_display(&mut self, display: DisplayChannel) -> std::io::Result<()> {
        display.listener.set_nonblocking(true)?;
        let fd = display.listener.as_raw_fd();
        self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, DISPLAY_LISTEN))?;
        self.display = Some(display);
        Ok(())
    }

    pub fn set_agent(&mut self, agent: AgentChannel) -> std::io::Result<()> {
        agent.listener.set_nonblocking(true)?;
        let fd = agent.listener.as_raw_fd();
        self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, AGENT_LISTEN))?;
        self.agent = Some(agent);
        Ok(())
    }

    pub fn start(self) -> std::io::Result<EventLoopHandle> {
        let exit = self.exit.try_clone()?;
        let thread =
            std::thread::Builder::new().name("devices".into()).spawn(move || self.run())?;
        Ok(EventLoopHandle { exit, thread: Some(thread) })
    }

    fn run(mut self) {
        crate::seccomp::install_or_abort(crate::seccomp::ThreadKind::Devices);
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(error = %e, "event loop: epoll failed");
                    return;
                }
            };
            for ev in &events[..n] {
                let set = ev.event_set();
                let readable = set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR);
                let writable = set.contains(EventSet::OUT);
                match ev.data() {
                    EXIT => return,
                    DISPLAY_LISTEN => {
                        if let Some(d) = self.display.as_mut() {
                            d.accept(&self.epoll, DISPLAY_CLIENT_BASE);
                        }
                    }
                    t if (DISPLAY_CLIENT_BASE..DISPLAY_CLIENT_BASE + MAX_CLIENTS as u64)
                        .contains(&t) =>
                    {
                        if let Some(d) = self.display.as_mut() {
                            let slot = usize::try_from(t - DISPLAY_CLIENT_BASE).expect("small");
                            d.on_client(&self.epoll, slot, readable, writable);
                        }
                    }
                    AGENT_LISTEN => {
                        if let Some(a) = self.agent.as_mut() {
                            a.accept(&self.epoll, AGENT_CLIENT);
                        }
                    }
                    AGENT_CLIENT => {
                        if let Some(a) = self.agent.as_mut() {
                            a.on_client(&self.epoll, readable, writable);
                        }
                    }
                    token => {
                        let i = usize::try_from(token - VIRTIO_BASE).unwrap_or(usize::MAX);
                        if let Some((evt, dev)) = self.virtio.get(i) {
                            let _ = evt.read();
                            lock(dev).notify();
                            if let Some(a) = self.agent.as_mut() {
                                a.pump(&self.epoll);
                            }
                        }
                    }
                }
            }
        }
    }
}
