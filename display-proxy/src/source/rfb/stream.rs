//! The byte stream under an RFB connection (unix or TCP socket) and big-endian reading.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::source::SourceError;

/// A connected socket to a VNC server.
#[derive(Debug)]
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    pub fn connect_unix(path: &Path) -> io::Result<Self> {
        Ok(Self::Unix(UnixStream::connect(path)?))
    }

    pub fn connect_tcp(address: &str, timeout: Duration) -> io::Result<Self> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        for addr in address.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return Ok(Self::Tcp(s));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Self::Unix(s) => Self::Unix(s.try_clone()?),
            Self::Tcp(s) => Self::Tcp(s.try_clone()?),
        })
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.set_read_timeout(t),
            Self::Tcp(s) => s.set_read_timeout(t),
        }
    }

    pub fn shutdown(&self) {
        // Errors mean it is already closed.
        let _ = match self {
            Self::Unix(s) => s.shutdown(Shutdown::Both),
            Self::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.flush(),
            Self::Tcp(s) => s.flush(),
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
        Self { inner: BufReader::with_capacity(256 * 1024, inner) }
    }

    pub fn get_ref(&self) -> &R {
        self.inner.get_ref()
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

    pub fn i32(&mut self) -> Result<i32, SourceError> {
        let mut b = [0; 4];
        self.exact(&mut b)?;
        Ok(i32::from_be_bytes(b))
    }

    /// Reads and drops `n` bytes.
    pub fn skip(&mut self, mut n: usize) -> Result<(), SourceError> {
        while n > 0 {
            let buf = self.inner.fill_buf().map_err(eof_is_closed)?;
            if buf.is_empty() {
                return Err(closed());
            }
            let k = buf.len().min(n);
            self.inner.consume(k);
            n -= k;
        }
        Ok(())
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
