//! TCP echo servers and long-lived connections in lab pods, for tests that need a connection
//! to stay open across events (an agent restart, a policy change): the lab's own servers close
//! TCP connections at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use palisade_tests::lab::netns::in_netns;

/// A TCP echo server inside a pod's namespace, serving until dropped.
pub struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    pub fn start(netns: &str, port: u16) -> Result<Echo> {
        let listener = in_netns(netns, move || TcpListener::bind(("::", port)))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || {
                            if c.set_nonblocking(false).is_err()
                                || c.set_read_timeout(Some(Duration::from_millis(100)))
                                    .is_err()
                            {
                                return;
                            }
                            let mut buf = [0u8; 256];
                            while !s.load(Ordering::Relaxed) {
                                match c.read(&mut buf) {
                                    Ok(0) => return,
                                    Ok(n) => {
                                        if c.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e)
                                        if e.kind() == std::io::ErrorKind::WouldBlock
                                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // Nothing to accept: wait for the listener to become readable.
                        let mut fds = [libc::pollfd {
                            fd: std::os::fd::AsRawFd::as_raw_fd(&listener),
                            events: libc::POLLIN,
                            revents: 0,
                        }];
                        // SAFETY: one valid pollfd for the duration of the call.
                        unsafe { libc::poll(fds.as_mut_ptr(), 1, 50) };
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Echo {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            eprintln!("echo server thread panicked");
        }
    }
}

/// A TCP connection opened from inside a pod's namespace.
pub struct Conn {
    stream: TcpStream,
    seq: u8,
}

impl Conn {
    /// Connects, or fails after `timeout` (a dropped SYN never completes).
    pub fn open(netns: &str, to: SocketAddr, timeout: Duration) -> Result<Conn> {
        let stream = in_netns(netns, move || TcpStream::connect_timeout(&to, timeout))?
            .with_context(|| format!("connect from {netns} to {to}"))?;
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(Conn { stream, seq: 0 })
    }

    /// One byte out and back. False when the echo does not come back in time.
    pub fn roundtrip(&mut self) -> bool {
        self.seq = self.seq.wrapping_add(1);
        if self.stream.write_all(&[self.seq]).is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            match self.stream.read(&mut b) {
                Ok(1) if b[0] == self.seq => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
        false
    }
}

/// A new connection opens within 700 ms (a dropped SYN does not).
pub fn can_connect(netns: &str, to: SocketAddr) -> bool {
    Conn::open(netns, to, Duration::from_millis(700)).is_ok()
}
