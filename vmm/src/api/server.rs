//! The control API's event loop: one thread (`strait-api`) running a rust-vmm
//! `EventManager` over the listening socket, every open connection and a 1 s timer.
//!
//! Connections are non-blocking and served one request each. A client that sends more
//! than the limits allow gets a 4xx; one that stays silent or slow past
//! [`CONNECTION_DEADLINE`] is answered 408 and dropped; past [`MAX_CONNECTIONS`] new
//! ones are closed at once. Nothing a client does reaches the VM except the actions the
//! routes accept.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use resources::limited_debug;
use resources::LogLimiter;
use vmm_sys_util::timerfd::TimerFd;

use super::http::{self, Parsed, Response, Status};
use super::routes;
use super::VmControl;

/// Connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its whole request and read the answer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// Bytes read per readiness event.
const READ_CHUNK: usize = 4096;

static CLIENT_ODDITY: LogLimiter = LogLimiter::new();

struct Connection {
    stream: UnixStream,
    received: Vec<u8>,
    /// Response bytes not yet written; `Some` once the request was answered.
    outgoing: Option<Vec<u8>>,
    deadline: Instant,
}

/// The event-manager subscriber serving the API.
pub struct ApiServer {
    listener: UnixListener,
    timer: TimerFd,
    connections: HashMap<RawFd, Connection>,
    control: Box<dyn VmControl>,
}

impl ApiServer {
    pub fn new(listener: UnixListener, control: Box<dyn VmControl>) -> io::Result<ApiServer> {
        listener.set_nonblocking(true)?;
        let mut timer = TimerFd::new().map_err(io::Error::from)?;
        let second = Duration::from_secs(1);
        timer.reset(second, Some(second)).map_err(io::Error::from)?;
        Ok(ApiServer {
            listener,
            timer,
            connections: HashMap::new(),
            control,
        })
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    limited_debug!(CLIENT_ODDITY, "api: accept: {e}");
                    return;
                }
            };
            if self.connections.len() >= MAX_CONNECTIONS {
                limited_debug!(
                    CLIENT_ODDITY,
                    "api: {MAX_CONNECTIONS} connections open; one refused"
                );
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if ops.add(Events::new(&stream, EventSet::IN)).is_err() {
                continue;
            }
            self.connections.insert(
                fd,
                Connection {
                    stream,
                    received: Vec::new(),
                    outgoing: None,
                    deadline: Instant::now() + CONNECTION_DEADLINE,
                },
            );
        }
    }

    /// Read what a client sent; answer once it is a whole request (or a refused one).
    fn readable(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some(conn) = self.connections.get_mut(&fd) else {
            return;
        };
        if conn.outgoing.is_some() {
            // Answered: whatever else arrives is ignored until the answer is out.
            let mut sink = [0u8; READ_CHUNK];
            if matches!(conn.stream.read(&mut sink), Ok(0) | Err(_)) {
                self.close(fd, ops);
            }
            return;
        }
        let mut chunk = [0u8; READ_CHUNK];
        let n = match conn.stream.read(&mut chunk) {
            Ok(0) => return self.close(fd, ops),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => return self.close(fd, ops),
        };
        conn.received.extend_from_slice(&chunk[..n]);
        let response = match http::parse(&conn.received) {
            Parsed::Partial => return,
            Parsed::Reject(status) => Response::error(status, "malformed or oversized request"),
            Parsed::Complete(req) => self.serve(&req),
        };
        self.respond(fd, response, ops);
    }

    /// Route `req` and carry out the action it asks for.
    fn serve(&self, req: &http::Request) -> Response {
        let (response, action) = routes::handle(req, &self.control.view());
        let Some(action) = action else {
            return response;
        };
        log::info!("api: {} {}", req.method, req.path);
        match self.control.act(action) {
            Ok(()) => response,
            Err(msg) => Response::error(Status::Conflict, msg),
        }
    }

    fn respond(&mut self, fd: RawFd, response: Response, ops: &mut EventOps) {
        let Some(conn) = self.connections.get_mut(&fd) else {
            return;
        };
        conn.received = Vec::new();
        conn.outgoing = Some(response.to_bytes());
        let _ = ops.modify(Events::new(&conn.stream, EventSet::IN | EventSet::OUT));
        self.writable(fd, ops);
    }

    /// Write what is left of the answer; close once it is all out.
    fn writable(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some(conn) = self.connections.get_mut(&fd) else {
            return;
        };
        let Some(out) = conn.outgoing.as_mut() else {
            return;
        };
        while !out.is_empty() {
            match conn.stream.write(out) {
                Ok(0) => break,
                Ok(n) => {
                    out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.close(fd, ops);
    }

    fn close(&mut self, fd: RawFd, ops: &mut EventOps) {
        if let Some(conn) = self.connections.remove(&fd) {
            let _ = ops.remove(Events::empty(&conn.stream));
        }
    }

    /// Answer connections past their deadline with 408 (best effort) and drop them.
    fn expire(&mut self, ops: &mut EventOps) {
        let _ = self.timer.wait();
        let now = Instant::now();
        let late: Vec<RawFd> = self
            .connections
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            if let Some(conn) = self.connections.get_mut(&fd) {
                if conn.outgoing.is_none() {
                    let bytes =
                        Response::error(Status::RequestTimeout, "request too slow").to_bytes();
                    let _ = conn.stream.write(&bytes);
                }
            }
            self.close(fd, ops);
        }
    }
}

impl MutEventSubscriber for ApiServer {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let set = events.event_set();
        if fd == self.listener.as_raw_fd() {
            return self.accept(ops);
        }
        if fd == self.timer.as_raw_fd() {
            return self.expire(ops);
        }
        if set.intersects(EventSet::ERROR | EventSet::HANG_UP) && !set.contains(EventSet::IN) {
            return self.close(fd, ops);
        }
        if set.contains(EventSet::OUT) {
            self.writable(fd, ops);
        }
        if set.contains(EventSet::IN) {
            self.readable(fd, ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            log::error!("api: cannot watch the listening socket: {e:?}");
        }
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::error!("api: cannot watch the connection timer: {e:?}");
        }
    }
}
