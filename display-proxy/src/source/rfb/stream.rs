//! The byte stream under an RFB connection (unix or TCP socket) and big-endian reading.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::source::SourceError;

/// A connected socket to a VNC server.
///
/// Reads wait with `poll` for data to read, then take it without blocking. A read blocked in
/// the socket itself would also be woken each time the server takes what this side wrote (a
/// socket has one wait queue for both directions): with input and update requests going out,
/// that is several wasted thread wake-ups per update.
#[derive(Debug)]
pub struct Stream {
    sock: Sock,
    read_timeout: Option<Duration>,
    /// Blocking reads fail after this, however the bytes trickle in.
    deadline: Option<std::time::Instant>,
}

#[derive(Debug)]
enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl From<UnixStream> for Stream {
    fn from(s: UnixStream) -> Self {
        Self { sock: Sock::Unix(s), read_timeout: None, deadline: None }
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Self { sock: Sock::Tcp(s), read_timeout: None, deadline: None }
    }
}

impl Stream {
    pub fn connect_unix(path: &Path) -> io::Result<Self> {
        Ok(Self::from(UnixStream::connect(path)?))
    }

    pub fn connect_tcp(address: &str, timeout: Duration) -> io::Result<Self> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        for addr in address.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return Ok(Self::from(s));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub fn try_clone(&self) -> io::Result<Self> {
        let sock = match &self.sock {
            Sock::Unix(s) => Sock::Unix(s.try_clone()?),
            Sock::Tcp(s) => Sock::Tcp(s.try_clone()?),
        };
        Ok(Self { sock, read_timeout: self.read_timeout, deadline: self.deadline })
    }

    /// Sets when blocking reads give up altogether (`None`: never).
    pub fn set_deadline(&mut self, at: Option<std::time::Instant>) {
        self.deadline = at;
    }

    /// How long a read of this handle waits for data (`None`: for ever).
    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.read_timeout = t;
    }

    fn fd(&self) -> RawFd {
        match &self.sock {
            Sock::Unix(s) => s.as_raw_fd(),
            Sock::Tcp(s) => s.as_raw_fd(),
        }
    }

    /// Writes what the socket takes now, without blocking (and without changing the
    /// socket's blocking mode, which its other handles share).
    pub fn send_nonblocking(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: the fd is an open socket owned by `self` for the whole call; the pointer and
        // length describe the initialised bytes of `buf`, which the kernel only reads.
        let n = unsafe {
            libc::send(
                self.fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Appends what the socket has now (at most `max` bytes) to `buf`, without blocking
    /// (`Ok(0)`: the peer closed the connection).
    pub fn read_nonblocking(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        buf.reserve(max);
        let spare = buf.spare_capacity_mut();
        let room = spare.len().min(max);
        // SAFETY: the fd is an open socket owned by `self`; the pointer and length describe
        // spare capacity of `buf` that nothing else uses during the call, which the kernel
        // only writes.
        let n =
            unsafe { libc::recv(self.fd(), spare.as_mut_ptr().cast(), room, libc::MSG_DONTWAIT) };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        // SAFETY: `recv` initialised the first `n` (at most `room`) bytes of the spare
        // capacity, which directly follow the vector's current length.
        unsafe { buf.set_len(buf.len() + n) };
        Ok(n)
    }

    /// Another handle on the same socket, to wait on from the async runtime.
    pub fn dup_fd(&self) -> io::Result<std::os::fd::OwnedFd> {
        match &self.sock {
            Sock::Unix(s) => s.as_fd().try_clone_to_owned(),
            Sock::Tcp(s) => s.as_fd().try_clone_to_owned(),
        }
    }

    /// Waits until there is something to read (or the timeout passes: `Ok(false)`).
    pub fn wait_readable(&self) -> io::Result<bool> {
        let left = self.deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Ok(false);
        }
        let wait = match (self.read_timeout, left) {
            (Some(t), Some(l)) => Some(t.min(l)),
            (t, l) => t.or(l),
        };
        let timeout = wait.map_or(-1, |d| i32::try_from(d.as_millis()).unwrap_or(i32::MAX).max(1));
        let mut pfd = libc::pollfd { fd: self.fd(), events: libc::POLLIN, revents: 0 };
        loop {
            // SAFETY: `pfd` is one valid pollfd that lives across the call, as the count says.
            let n = unsafe { libc::poll(&raw mut pfd, 1, timeout) };
            if n >= 0 {
                return Ok(n > 0);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    pub fn shutdown(&self) {
        // Errors mean it is already closed.
        let _ = match &self.sock {
            Sock::Unix(s) => s.shutdown(Shutdown::Both),
            Sock::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: the fd is an open socket owned by `self`; the pointer and length
            // describe `buf`, which the kernel writes at most `buf.len()` bytes into.
            let n = unsafe {
                libc::recv(self.fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
            };
            if let Ok(n) = usize::try_from(n) {
                return Ok(n);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => {
                    if !self.wait_readable()? {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the VNC server sent nothing in time",
                        ));
                    }
                }
                io::ErrorKind::Interrupted => {}
                _ => return Err(e),
            }
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.sock {
            Sock::Unix(s) => s.write(buf),
            Sock::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sock {
            Sock::Unix(s) => s.flush(),
            Sock::Tcp(s) => s.flush(),
        }
    }
}

/// Big-endian reads from a buffered stream; end of stream is an error.
#[derive(Debug)]
pub struct Reader<R> {
    inner: BufReader<R>,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner: BufReader::with_capacity(8 * 1024, inner) }
    }

    /// The stream, and the bytes read from it but not consumed yet.
    pub fn into_parts(self) -> (R, Vec<u8>) {
        let rest = self.inner.buffer().to_vec();
        (self.inner.into_inner(), rest)
    }

    pub fn exact(&mut self, buf: &mut [u8]) -> Result<(), SourceError> {
        self.inner.read_exact(buf).map_err(eof_is_closed)
    }

    pub fn u8(&mut self) -> Result<u8, SourceError> {
        let mut b = [0; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }

    pub fn u16(&mut self) -> Result<u16, SourceError> {
        let mut b = [0; 2];
        self.exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }

    pub fn u32(&mut self) -> Result<u32, SourceError> {
        let mut b = [0; 4];
        self.exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    /// Reads `n` bytes into a new vector (the caller has bounded `n`).
    pub fn vec(&mut self, n: usize) -> Result<Vec<u8>, SourceError> {
        let mut v = vec![0; n];
        self.exact(&mut v)?;
        Ok(v)
    }
}

fn closed() -> SourceError {
    SourceError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the VNC server closed the connection",
    ))
}

fn eof_is_closed(e: io::Error) -> SourceError {
    if e.kind() == io::ErrorKind::UnexpectedEof { closed() } else { SourceError::Io(e) }
}
