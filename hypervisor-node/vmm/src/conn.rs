//! A non-blocking unix stream connection with a bounded output queue, for the event loop.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

#[derive(Debug)]
pub struct Conn {
    pub stream: UnixStream,
    out: Vec<u8>,
    token: u64,
    reading: bool,
    writing: bool,
    max_out: usize,
}

/// What a read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadResult {
    Data(usize),
    WouldBlock,
    Closed,
}

impl Conn {
    /// Registers `stream` (made non-blocking) for reading under `token`.
    pub fn new(
        stream: UnixStream,
        epoll: &Epoll,
        token: u64,
        max_out: usize,
    ) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        epoll.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token),
        )?;
        Ok(Self { stream, out: Vec::new(), token, reading: true, writing: false, max_out })
    }

    pub fn close(self, epoll: &Epoll) {
        let _ = epoll.ctl(ControlOperation::Delete, self.stream.as_raw_fd(), EpollEvent::default());
    }

    fn rearm(&mut self, epoll: &Epoll, reading: bool, writing: bool) -> std::io::Result<()> {
        if (reading, writing) == (self.reading, self.writing) {
            return Ok(());
        }
        let mut set = EventSet::empty();
        if reading {
            set |= EventSet::IN;
        }
        if writing {
            set |= EventSet::OUT;
        }
        epoll.ctl(
            ControlOperation::Modify,
            self.stream.as_raw_fd(),
            EpollEvent::new(set, self.token),
        )?;
        self.reading = reading;
        self.writing = writing;
        Ok(())
    }

    /// Stops or resumes reading (back-pressure).
    pub fn set_reading(&mut self, epoll: &Epoll, on: bool) -> std::io::Result<()> {
        let w = self.writing;
        self.rearm(epoll, on, w)
    }

    pub fn read(&mut self, buf: &mut [u8]) -> ReadResult {
        match self.stream.read(buf) {
            Ok(0) => ReadResult::Closed,
            Ok(n) => ReadResult::Data(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                ReadResult::WouldBlock
            }
            Err(_) => ReadResult::Closed,
        }
    }

    /// Queues bytes and writes what the socket takes. `Err` when the peer is gone or too slow
    /// (more than `max_out` bytes waiting).
    pub fn send(&mut self, epoll: &Epoll, data: &[u8]) -> std::io::Result<()> {
        if self.out.len() + data.len() > self.max_out {
            return Err(std::io::Error::other("peer is not reading"));
        }
        self.out.extend_from_slice(data);
        self.flush(epoll)
    }

    pub fn flush(&mut self, epoll: &Epoll) -> std::io::Result<()> {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let r = self.reading;
        self.rearm(epoll, r, !self.out.is_empty())
    }
}
