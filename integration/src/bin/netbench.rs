//! `netbench`: the benchmark's network load, one TCP stream each way between L2 and
//! L1 over virtio-net. `netbench serve --port P` runs in L1 (the peer the agent
//! starts before a net launch and kills after it); `netbench client --server ADDR:P
//! --secs N` runs in L2 and drives both transfers, one connection each:
//!
//! - `up` (L2 -> L1): the client sends `NETBENCH up 0\n`, then the stream for N
//!   seconds, and half-closes; the peer reads to the end, checking every byte, and
//!   answers `bytes=B bad=M\n`. The client requires B to equal what it sent and M
//!   to be 0.
//! - `down` (L1 -> L2): the client sends `NETBENCH down N\n`; the peer sends the
//!   stream for N seconds and half-closes; the client reads to the end, checking
//!   every byte, and answers `bytes=B bad=M\n`, which the peer compares with what it
//!   sent (its line goes to the agent).
//!
//! The stream's byte at offset `o` is `pattern[o % PERIOD]` (a fixed pseudo-random
//! block of a length no power of two, so segment and buffer boundaries drift across
//! it): a receiver checks content, order, loss and duplication with one compare
//! per byte, and the sender writes from a precomputed buffer.
//!
//! Output, one line each, parsed by the testbed's benchmark: the client prints
//! `NETBENCH-BEGIN dir=up secs=2`, then
//! `NETBENCH-RESULT dir=up bytes=N bad=0 secs=2.003 mbps=X` (or `NETBENCH-ERROR <why>`);
//! the peer prints `NETBENCH-PEER dir=up bytes=N bad=0` and
//! `NETBENCH-PEER dir=down sent=N bytes=N bad=0`. std only, so it links statically.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The stream's period in bytes: 257 KiB, no power of two.
const PERIOD: usize = 257 * 1024;
/// Bytes per write and per read (at most [`PERIOD`]).
const CHUNK: usize = 128 * 1024;
/// How long either side waits for the other before giving up.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Which way the data goes, seen from L2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// L2 -> L1.
    Up,
    /// L1 -> L2.
    Down,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Up => "up",
            Dir::Down => "down",
        }
    }
}

/// The first line of a connection: the direction and, for `down`, how long the
/// peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    dir: Dir,
    secs: u64,
}

impl Header {
    fn line(self) -> String {
        format!("NETBENCH {} {}\n", self.dir.name(), self.secs)
    }

    fn parse(line: &str) -> Result<Header, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let dir = match words.as_slice() {
            ["NETBENCH", "up", _] => Dir::Up,
            ["NETBENCH", "down", _] => Dir::Down,
            _ => return Err(format!("bad header `{}`", line.trim())),
        };
        let secs = words[2]
            .parse()
            .map_err(|_| format!("bad duration in `{}`", line.trim()))?;
        Ok(Header { dir, secs })
    }
}

/// What a receiver tells the sender at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Report {
    bytes: u64,
    bad: u64,
}

impl Report {
    fn line(self) -> String {
        format!("bytes={} bad={}\n", self.bytes, self.bad)
    }

    fn parse(line: &str) -> Result<Report, String> {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no {name} in the receiver's report `{}`", line.trim()))
        };
        Ok(Report {
            bytes: field("bytes")?,
            bad: field("bad")?,
        })
    }
}

/// The pattern twice over, so that any `CHUNK` from any offset is one slice.
fn pattern() -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let one: Vec<u8> = (0..PERIOD)
        .map(|_| {
            // xorshift64: cheap and seedless, only needs to look unlike a copy error.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    [one.as_slice(), one.as_slice()].concat()
}

/// The stream's bytes from `offset` on, `len` of them (at most [`PERIOD`]).
fn expected(pattern: &[u8], offset: u64, len: usize) -> &[u8] {
    let start = (offset % PERIOD as u64) as usize;
    &pattern[start..start + len]
}

/// Checks what arrives against the stream: bytes counted, mismatches counted.
struct Checker<'a> {
    pattern: &'a [u8],
    report: Report,
}

impl<'a> Checker<'a> {
    fn new(pattern: &'a [u8]) -> Self {
        Checker {
            pattern,
            report: Report { bytes: 0, bad: 0 },
        }
    }

    fn take(&mut self, data: &[u8]) {
        for piece in data.chunks(PERIOD) {
            let want = expected(self.pattern, self.report.bytes, piece.len());
            if piece != want {
                let bad = piece.iter().zip(want).filter(|(a, b)| a != b).count();
                self.report.bad += bad as u64;
            }
            self.report.bytes += piece.len() as u64;
        }
    }

    /// Reads `from` to its end.
    fn drain(&mut self, from: &mut impl Read) -> io::Result<Report> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.read(&mut buf) {
                Ok(0) => return Ok(self.report),
                Ok(n) => self.take(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes the stream to `to` until `run_for` has passed; returns the bytes written.
fn send_for(to: &mut impl Write, pattern: &[u8], run_for: Duration) -> io::Result<u64> {
    let until = Instant::now() + run_for;
    let mut sent = 0u64;
    while Instant::now() < until {
        match to.write(expected(pattern, sent, CHUNK)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// The receiving side of a transfer: checks the stream to its end, then tells
/// the sender what arrived.
fn receive(from: &mut impl Read, to: &mut impl Write, pattern: &[u8]) -> Result<Report, String> {
    let report = Checker::new(pattern)
        .drain(from)
        .map_err(|e| format!("receiving: {e}"))?;
    to.write_all(report.line().as_bytes())
        .map_err(|e| format!("answering: {e}"))?;
    Ok(report)
}

/// The sending side: the stream for `secs`, then a half-close; returns the bytes sent.
fn send(stream: &mut TcpStream, pattern: &[u8], secs: u64) -> Result<u64, String> {
    let sent = send_for(stream, pattern, Duration::from_secs(secs))
        .map_err(|e| format!("sending: {e}"))?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("half-close: {e}"))?;
    Ok(sent)
}

/// Both ways give up after [`IO_TIMEOUT`] without progress.
fn with_timeouts(stream: TcpStream) -> Result<TcpStream, String> {
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("socket: {e}"))?;
    Ok(stream)
}

/// One line from `reader` (the header or a report).
fn read_line(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err("the other side closed before its line".into()),
        Ok(_) => Ok(line),
        Err(e) => Err(format!("reading a line: {e}")),
    }
}

/// The peer's side of one connection; returns its `NETBENCH-PEER` line.
fn serve_one(stream: TcpStream, pattern: &[u8]) -> Result<String, String> {
    let stream = with_timeouts(stream)?;
    let mut writer = stream.try_clone().map_err(|e| format!("socket: {e}"))?;
    // The header is read byte by byte so that no stream byte is buffered away.
    let mut reader = BufReader::with_capacity(1, stream);
    let header = Header::parse(&read_line(&mut reader)?)?;
    match header.dir {
        Dir::Up => {
            let report = receive(&mut reader, &mut writer, pattern)?;
            Ok(format!(
                "NETBENCH-PEER dir=up bytes={} bad={}",
                report.bytes, report.bad
            ))
        }
        Dir::Down => {
            let sent = send(&mut writer, pattern, header.secs)?;
            let report = Report::parse(&read_line(&mut reader)?)?;
            Ok(format!(
                "NETBENCH-PEER dir=down sent={sent} bytes={} bad={}",
                report.bytes, report.bad
            ))
        }
    }
}

/// The peer: one connection at a time, until killed.
fn serve(port: u16, out: &mut impl Write) -> Result<(), String> {
    let listener =
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("binding port {port}: {e}"))?;
    let _ = writeln!(out, "NETBENCH-PEER listening port={port}");
    let _ = out.flush();
    let pattern = pattern();
    for stream in listener.incoming() {
        let line = stream
            .map_err(|e| format!("accepting: {e}"))
            .and_then(|s| serve_one(s, &pattern))
            .unwrap_or_else(|e| format!("NETBENCH-PEER error {e}"));
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    Ok(())
}

/// One transfer from the client's side; returns the receiver's report.
fn transfer(server: &str, header: Header, pattern: &[u8]) -> Result<Report, String> {
    let stream = TcpStream::connect(server).map_err(|e| format!("connecting {server}: {e}"))?;
    let mut stream = with_timeouts(stream)?;
    stream
        .write_all(header.line().as_bytes())
        .map_err(|e| format!("sending the header: {e}"))?;
    match header.dir {
        Dir::Up => {
            let sent = send(&mut stream, pattern, header.secs)?;
            let report = Report::parse(&read_line(&mut BufReader::new(&stream))?)?;
            if report.bytes != sent {
                return Err(format!("sent {sent} bytes, L1 received {}", report.bytes));
            }
            Ok(report)
        }
        Dir::Down => {
            let mut writer = stream.try_clone().map_err(|e| format!("socket: {e}"))?;
            receive(&mut stream, &mut writer, pattern)
        }
    }
}

/// Both transfers, up then down, each announced and reported on `out`.
fn client(server: &str, secs: u64, out: &mut impl Write) -> Result<(), String> {
    let pattern = pattern();
    for dir in [Dir::Up, Dir::Down] {
        let name = dir.name();
        let _ = writeln!(out, "NETBENCH-BEGIN dir={name} secs={secs}");
        let _ = out.flush();
        let start = Instant::now();
        // The header's duration tells the peer how long to send (down); for up
        // the client keeps the time itself.
        let header = Header { dir, secs };
        let report = transfer(server, header, &pattern).map_err(|e| format!("{name}: {e}"))?;
        let took = start.elapsed().as_secs_f64();
        let _ = writeln!(
            out,
            "NETBENCH-RESULT dir={name} bytes={} bad={} secs={took:.3} mbps={:.2}",
            report.bytes,
            report.bad,
            report.bytes as f64 / took / 1e6
        );
        let _ = out.flush();
        if report.bad > 0 || report.bytes == 0 {
            return Err(format!(
                "{name}: {} of {} bytes differ from the stream",
                report.bad, report.bytes
            ));
        }
    }
    Ok(())
}

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Serve { port: u16 },
    Client { server: String, secs: u64 },
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let (mut port, mut server, mut secs) = (None, None, 4u64);
    let mut it = args.iter();
    let role = it.next().ok_or("usage: netbench serve|client ...")?;
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--port" => port = Some(value()?.parse().map_err(|_| "bad --port".to_string())?),
            "--server" => server = Some(value()?.to_string()),
            "--secs" => secs = value()?.parse().map_err(|_| "bad --secs".to_string())?,
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    match role.as_str() {
        "serve" => Ok(Command::Serve {
            port: port.ok_or("serve needs --port")?,
        }),
        "client" if secs == 0 => Err("--secs must be at least 1".into()),
        "client" => Ok(Command::Client {
            server: server.ok_or("client needs --server ADDR:PORT")?,
            secs,
        }),
        other => Err(format!("unknown role {other} (serve, client)")),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut out = io::stdout();
    let result = parse_args(&argv).and_then(|command| match command {
        Command::Serve { port } => serve(port, &mut out),
        Command::Client { server, secs } => client(&server, secs, &mut out),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            let _ = writeln!(out, "NETBENCH-ERROR {why}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments_are_parsed() {
        assert_eq!(
            parse_args(&strings(&["serve", "--port", "5201"])),
            Ok(Command::Serve { port: 5201 })
        );
        assert_eq!(
            parse_args(&strings(&[
                "client",
                "--server",
                "10.0.2.1:5201",
                "--secs",
                "3"
            ])),
            Ok(Command::Client {
                server: "10.0.2.1:5201".into(),
                secs: 3
            })
        );
        assert!(parse_args(&strings(&["client", "--secs", "3"])).is_err());
        assert!(parse_args(&strings(&["serve"])).is_err());
    }

    #[test]
    fn header_and_report_round_trip() {
        let h = Header {
            dir: Dir::Down,
            secs: 4,
        };
        assert_eq!(h.line(), "NETBENCH down 4\n");
        assert_eq!(Header::parse(&h.line()), Ok(h));
        assert!(Header::parse("GET / HTTP/1.0\n").is_err());
        let r = Report { bytes: 7, bad: 1 };
        assert_eq!(Report::parse(&r.line()), Ok(r));
        assert!(Report::parse("bytes=7\n").is_err());
    }

    #[test]
    fn the_checker_accepts_the_stream_cut_anywhere() {
        let p = pattern();
        let stream: Vec<u8> = (0..3 * PERIOD as u64 + 11)
            .map(|o| p[(o % PERIOD as u64) as usize])
            .collect();
        let mut c = Checker::new(&p);
        for piece in stream.chunks(CHUNK - 3) {
            c.take(piece);
        }
        assert_eq!(
            c.report,
            Report {
                bytes: stream.len() as u64,
                bad: 0
            }
        );
    }

    #[test]
    fn the_checker_counts_corrupted_lost_and_repeated_bytes() {
        let p = pattern();
        let mut corrupted = expected(&p, 0, 1000).to_vec();
        corrupted[500] ^= 0xff;
        let mut c = Checker::new(&p);
        c.take(&corrupted);
        assert_eq!(
            c.report,
            Report {
                bytes: 1000,
                bad: 1
            }
        );
        // A lost segment shifts everything after it.
        let mut c = Checker::new(&p);
        c.take(expected(&p, 0, 100));
        c.take(expected(&p, 200, 100));
        assert!(c.report.bad > 50, "{:?}", c.report);
        // A repeated segment too.
        let mut c = Checker::new(&p);
        c.take(expected(&p, 0, 100));
        c.take(expected(&p, 0, 100));
        assert!(c.report.bad > 50, "{:?}", c.report);
    }

    #[test]
    fn both_directions_over_loopback_agree_and_verify() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
        let addr = listener.local_addr().expect("its address").to_string();
        let peer = std::thread::spawn(move || {
            let p = pattern();
            (0..2)
                .map(|_| {
                    let (s, _) = listener.accept().map_err(|e| e.to_string())?;
                    serve_one(s, &p)
                })
                .collect::<Vec<_>>()
        });
        let mut out = Vec::new();
        let result = client(&addr, 1, &mut out);
        let text = String::from_utf8_lossy(&out).to_string();
        assert_eq!(result, Ok(()), "{text}");
        let peer_lines: Vec<String> = peer
            .join()
            .unwrap_or_default()
            .into_iter()
            .map(|l| l.unwrap_or_else(|e| e))
            .collect();
        assert!(text.starts_with("NETBENCH-BEGIN dir=up secs=1\n"), "{text}");
        let up: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("RESULT dir=up"))
            .collect();
        let bytes = up[0]
            .split_whitespace()
            .find_map(|w| w.strip_prefix("bytes="))
            .unwrap_or("none");
        assert_eq!(
            peer_lines[0],
            format!("NETBENCH-PEER dir=up bytes={bytes} bad=0")
        );
        assert!(peer_lines[1].starts_with("NETBENCH-PEER dir=down sent="));
        let words: Vec<&str> = peer_lines[1].split_whitespace().collect();
        assert_eq!(
            words[2].strip_prefix("sent="),
            words[3].strip_prefix("bytes=")
        );
        assert!(text.contains("NETBENCH-RESULT dir=down"), "{text}");
    }
}
