//! `strait ctl SOCKET COMMAND`: one request to a running Strait's control API, the JSON
//! answer on stdout. Exit 0 on a 2xx answer, 1 on any other, 3 when the socket does
//! not answer.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use clap::ValueEnum;

/// What `strait ctl` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CtlCommand {
    /// GET /ping.
    Ping,
    /// GET /vm: state, vCPUs, RAM, devices (host and guest addresses, BARs), timeline.
    Info,
    /// GET /vm/counters: exit counters.
    Counters,
    /// PUT /vm/pause: stop the vCPUs.
    Pause,
    /// PUT /vm/resume: start them again.
    Resume,
    /// PUT /vm/shutdown: power button, then stop after lifecycle.shutdown_timeout_s.
    Shutdown,
    /// PUT /vm/reboot: reset the VM (follows lifecycle.on_reboot).
    Reboot,
    /// PUT /vm/power-button: press the ACPI power button.
    PowerButton,
}

impl CtlCommand {
    /// Method and path of the request.
    pub fn request(self) -> (&'static str, &'static str) {
        match self {
            CtlCommand::Ping => ("GET", "/ping"),
            CtlCommand::Info => ("GET", "/vm"),
            CtlCommand::Counters => ("GET", "/vm/counters"),
            CtlCommand::Pause => ("PUT", "/vm/pause"),
            CtlCommand::Resume => ("PUT", "/vm/resume"),
            CtlCommand::Shutdown => ("PUT", "/vm/shutdown"),
            CtlCommand::Reboot => ("PUT", "/vm/reboot"),
            CtlCommand::PowerButton => ("PUT", "/vm/power-button"),
        }
    }
}

/// The answer: status code and body.
#[derive(Debug)]
pub struct CtlAnswer {
    pub status: u16,
    pub body: String,
}

/// Send `cmd` to the API at `socket`; `body` is the JSON body of a PUT (may be empty).
pub fn send(socket: &Path, cmd: CtlCommand, body: &str) -> io::Result<CtlAnswer> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let (method, path) = cmd.request();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: strait\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_answer(&raw)
}

/// Status and body of a response read to its end.
pub fn parse_answer(raw: &[u8]) -> io::Result<CtlAnswer> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(bad("not an HTTP response")),
    };
    Ok(CtlAnswer {
        status: resp.code.ok_or_else(|| bad("no status"))?,
        body: String::from_utf8_lossy(&raw[n..]).trim_end().to_string(),
    })
}

/// The body pretty-printed when it is JSON.
pub fn pretty(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_split_into_status_and_body() {
        let a = parse_answer(b"HTTP/1.1 409 Conflict\r\nContent-Length: 3\r\n\r\n{}\n").unwrap();
        assert_eq!((a.status, a.body.as_str()), (409, "{}"));
        assert!(parse_answer(b"garbage").is_err());
    }

    #[test]
    fn every_command_has_an_endpoint() {
        for c in CtlCommand::value_variants() {
            let (m, p) = c.request();
            assert!(matches!(m, "GET" | "PUT") && p.starts_with('/'));
        }
    }
}
