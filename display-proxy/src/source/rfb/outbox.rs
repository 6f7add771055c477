//! The write side of an RFB connection, shared by the capture thread (update requests) and by
//! whoever forwards input (the viewers' tasks on the async runtime).
//!
//! A message is written straight to the socket without blocking when nothing is queued before
//! it: a keystroke goes out from the task that received it, with no thread hand-off. Only what
//! the socket does not take at once (the server stopped reading) is queued, in order, for a
//! writer thread that waits on the socket; input is refused while that queue is full, so a
//! stalled server never grows memory or blocks the runtime.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::stream::Stream;

/// Bytes of input that may wait for a server that does not read.
const MAX_QUEUED: usize = 64 * 1024;

/// Room beyond [`MAX_QUEUED`] for update requests: a request still queues behind input that
/// filled the queue, but a server that never reads and keeps sending updates it was not asked
/// for (each answered with a request) cannot grow the queue without end.
const REQUEST_ROOM: usize = 4 * 1024;

/// Why a message was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxError {
    /// The queue is full (the server is not reading).
    Full,
    /// The connection is closed.
    Closed,
}

#[derive(Debug)]
struct State {
    /// For the non-blocking writes made under the lock.
    stream: Stream,
    queue: VecDeque<Vec<u8>>,
    queued: usize,
    /// The writer thread is writing a message it took from the queue.
    writing: bool,
    closed: bool,
}

/// The write side of an RFB connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    wake: Condvar,
}

impl Outbox {
    /// Takes two handles of the connected socket: one for writes without blocking, one for the
    /// writer thread it starts.
    pub fn start(stream: Stream, for_thread: Stream) -> io::Result<Arc<Self>> {
        let outbox = Arc::new(Self {
            state: Mutex::new(State {
                stream,
                queue: VecDeque::new(),
                queued: 0,
                writing: false,
                closed: false,
            }),
            wake: Condvar::new(),
        });
        let o = Arc::clone(&outbox);
        std::thread::Builder::new()
            .name("rfb-writer".into())
            .spawn(move || o.writer_loop(for_thread))?;
        Ok(outbox)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("RFB outbox lock")
    }

    /// Sends one whole message; `input` may be refused when the queue is full (an update
    /// request never is: there is at most one outstanding).
    pub fn send(&self, msg: &[u8], input: bool) -> Result<(), OutboxError> {
        let mut st = self.lock();
        if st.closed {
            return Err(OutboxError::Closed);
        }
        let mut rest = msg;
        if st.queue.is_empty() && !st.writing {
            match st.stream.send_nonblocking(msg) {
                Ok(n) if n == msg.len() => return Ok(()),
                // Part of it went: the rest must follow before anything else.
                Ok(n) => rest = &msg[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "the VNC socket refused a write");
                    st.closed = true;
                    self.wake.notify_one();
                    return Err(OutboxError::Closed);
                }
            }
        }
        let cap = if input { MAX_QUEUED } else { MAX_QUEUED + REQUEST_ROOM };
        // A message partly written must be finished, whatever the queue holds.
        if rest.len() == msg.len() && st.queued + msg.len() > cap {
            return Err(OutboxError::Full);
        }
        st.queued += rest.len();
        st.queue.push_back(rest.to_vec());
        self.wake.notify_one();
        Ok(())
    }

    /// Closes the outbox: the writer thread ends and nothing more is sent.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    fn writer_loop(&self, mut stream: Stream) {
        loop {
            let msg = {
                let mut st = self.lock();
                loop {
                    if st.closed {
                        return;
                    }
                    if let Some(m) = st.queue.pop_front() {
                        st.queued -= m.len();
                        st.writing = true;
                        break m;
                    }
                    st.writing = false;
                    st = self.wake.wait(st).expect("RFB outbox lock");
                }
            };
            if let Err(e) = stream.write_all(&msg) {
                tracing::debug!(error = %e, "the VNC socket refused a write");
                self.close();
                return;
            }
            let mut st = self.lock();
            if st.queue.is_empty() {
                st.writing = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn outbox() -> (Arc<Outbox>, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let a2 = a.try_clone().unwrap();
        (Outbox::start(Stream::from(a), Stream::from(a2)).unwrap(), b)
    }

    #[test]
    fn messages_arrive_whole_and_in_order_when_the_reader_is_slow() {
        let (out, mut peer) = outbox();
        // Far more than a socket buffer: most of it is queued for the writer thread.
        let mut expected = Vec::new();
        for i in 0..4000u32 {
            let msg: Vec<u8> = (0..100u32).map(|k| u8::try_from((i + k) % 251).unwrap()).collect();
            if out.send(&msg, false).is_ok() {
                expected.extend_from_slice(&msg);
            }
        }
        let mut got = vec![0; expected.len()];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, expected);
    }

    #[test]
    fn input_is_refused_while_a_stalled_server_has_a_full_queue_and_requests_are_not() {
        let (out, peer) = outbox();
        let msg = [7u8; 1000];
        let mut refused = 0;
        for _ in 0..2000 {
            if out.send(&msg, true) == Err(OutboxError::Full) {
                refused += 1;
            }
        }
        assert!(refused > 0, "a server that never reads makes input wait, then refuses it");
        assert!(out.lock().queued <= MAX_QUEUED);
        assert_eq!(out.send(&[3; 10], false), Ok(()), "an update request still queues");
        let mut requests = 0;
        while out.send(&[3; 10], false).is_ok() {
            requests += 1;
            assert!(requests <= (MAX_QUEUED + REQUEST_ROOM) / 10, "requests queue without end");
        }
        assert!(out.lock().queued <= MAX_QUEUED + REQUEST_ROOM);
        drop(peer);
        out.close();
        assert_eq!(out.send(&msg, true), Err(OutboxError::Closed));
    }
}
