//! The control API for orchestrators: HTTP/1.1 + JSON over a Unix socket
//! (`api_socket` in the spec, or `strait run --api-socket PATH`), documented in
//! `vmm/api/openapi.yaml`, and its client, `strait ctl`.
//!
//! [`http`] parses requests (httparse) within hard limits, [`routes`] decides what a
//! request means without touching the VM, [`server`] is the event loop (rust-vmm
//! `event-manager`, one thread named `strait-api`), [`client`] is `strait ctl`. The VM
//! is reached only through [`VmControl`]: a snapshot to report and the actions the
//! routes accept.

pub mod client;
pub mod http;
pub mod routes;
pub mod server;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

pub use routes::{Action, VmView};

/// What the API needs of the VM.
pub trait VmControl: Send {
    /// The VM as it is now.
    fn view(&self) -> VmView;
    /// Carry out an accepted action; the error is the message for a 409.
    fn act(&self, action: Action) -> Result<(), String>;
}

/// Failures starting the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("api_socket: {} exists and is not a socket; remove it or name another path", path.display())]
    NotASocket { path: PathBuf },
    #[error("api_socket: cannot listen on {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the API event loop")]
    EventLoop(#[source] io::Error),
}

/// The running API: removes its socket file when dropped.
#[derive(Debug)]
pub struct ApiHandle {
    path: PathBuf,
}

impl Drop for ApiHandle {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listen on `path` (mode 0600; a stale socket there is replaced) and serve the API
/// from a thread of its own.
pub fn start(path: &Path, control: Box<dyn VmControl>) -> Result<ApiHandle, ApiError> {
    let listener = bind(path)?;
    let handle = ApiHandle {
        path: path.to_path_buf(),
    };
    let server = server::ApiServer::new(listener, control).map_err(ApiError::EventLoop)?;
    let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
        .map_err(|e| ApiError::EventLoop(io::Error::other(format!("{e:?}"))))?;
    manager.add_subscriber(Arc::new(Mutex::new(server)));
    std::thread::Builder::new()
        .name("strait-api".into())
        .spawn(move || {
            if let Err(e) = crate::sandbox::enter(crate::sandbox::ThreadKind::Api) {
                log::error!("api: {}", crate::error::Error::from(e).one_line());
                return;
            }
            serve(manager)
        })
        .map_err(ApiError::EventLoop)?;
    log::info!("control API on {}", path.display());
    Ok(handle)
}

/// The API thread's loop: an event loop failure is logged and the loop goes on.
fn serve(mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>) {
    loop {
        if let Err(e) = manager.run() {
            log::error!("api: event loop: {e:?}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Bind the socket with mode 0600 from the start (umask), replacing a stale socket.
fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(ApiError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let err = |source| ApiError::Bind {
        path: path.to_path_buf(),
        source,
    };
    // SAFETY: umask only swaps the process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    struct Fake(Arc<Mutex<Vec<Action>>>);

    impl VmControl for Fake {
        fn view(&self) -> VmView {
            VmView {
                state: routes::RunState::Running,
                vcpus: 1,
                memory_mib: 64,
                hugepages: "none".into(),
                devices: vec![],
                timeline: vec![],
                boots: 1,
                exits: vec![],
            }
        }
        fn act(&self, action: Action) -> Result<(), String> {
            self.0.lock().unwrap().push(action);
            Ok(())
        }
    }

    fn exchange(path: &Path, request: &[u8]) -> String {
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_many_clients_and_survives_garbage_and_silence() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = dir.as_path().join("api.sock");
        let acts = Arc::new(Mutex::new(Vec::new()));
        let _api = start(&path, Box::new(Fake(acts.clone()))).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Silent clients hold connections but block nobody.
        let silent: Vec<UnixStream> = (0..5)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        assert!(exchange(&path, b"GARBAGE\r\n\r\n").starts_with("HTTP/1.1 400"));
        let big = vec![b'A'; 70_000];
        let mut s = UnixStream::connect(&path).unwrap();
        let _ = s.write_all(&big);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 4"), "{out}");
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || exchange(&p, b"GET /ping HTTP/1.1\r\n\r\n"))
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap().starts_with("HTTP/1.1 200"));
        }
        let out = exchange(
            &path,
            b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 202"), "{out}");
        assert_eq!(*acts.lock().unwrap(), vec![Action::Pause]);
        drop(silent);
    }

    #[test]
    fn a_regular_file_at_the_socket_path_is_refused() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = dir.as_path().join("api.sock");
        std::fs::write(&path, b"keep me").unwrap();
        let e = start(&path, Box::new(Fake(Arc::default()))).unwrap_err();
        assert!(matches!(e, ApiError::NotASocket { .. }));
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }
}
