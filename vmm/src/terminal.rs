//! Raw mode for the terminal Strait's console runs on (`serial: "stdio"` with stdin a
//! terminal): the guest's shell gets every key (Ctrl-C included) as typed, unechoed,
//! the way a serial line delivers it (termios(3), `cfmakeraw`). Output processing is
//! kept, so Strait's own log lines still start at column 0.
//!
//! The terminal's settings are saved once and put back on every way out: the guard's
//! drop (normal return, errors, a graceful stop by SIGINT/SIGTERM/SIGHUP), a panic (a
//! hook), and the signal thread when a signal stops the VM at once ([`restore`]).

use std::io;
use std::sync::{Mutex, Once};

/// The settings to put back; `Some` while the terminal is raw.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);
static PANIC_HOOK: Once = Once::new();

/// The terminal is raw while this lives.
#[derive(Debug)]
pub struct RawMode(());

impl RawMode {
    /// Put stdin's terminal in raw mode; `None` when stdin is not a terminal.
    pub fn enter() -> io::Result<Option<RawMode>> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return Ok(None);
        }
        // SAFETY: termios is plain data; tcgetattr fills it before it is read.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `original` is a valid termios we own.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut original) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let raw = raw_from(&original);
        let mut saved = SAVED.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: `raw` is a valid termios derived from the terminal's own.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        saved.get_or_insert(original);
        drop(saved);
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        Ok(Some(RawMode(())))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// The raw settings for a terminal set to `original`: `cfmakeraw`, output processing
/// as it was.
fn raw_from(original: &libc::termios) -> libc::termios {
    let mut raw = *original;
    // SAFETY: `raw` is a valid termios; cfmakeraw only changes its flags.
    unsafe { libc::cfmakeraw(&mut raw) };
    raw.c_oflag = original.c_oflag;
    raw
}

/// Put the saved settings back, if the terminal is raw. Safe to call from any thread,
/// any number of times; never blocks on a lock held elsewhere (a panic hook may run
/// while another thread holds it).
pub fn restore() {
    let Ok(mut saved) = SAVED.try_lock() else {
        return;
    };
    if let Some(t) = saved.take() {
        // SAFETY: `t` is the terminal's own earlier settings.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_settings_turn_off_echo_lines_and_signals_but_keep_output_processing() {
        // SAFETY: plain data.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        t.c_lflag = libc::ECHO | libc::ICANON | libc::ISIG;
        t.c_iflag = libc::ICRNL;
        t.c_oflag = libc::OPOST | libc::ONLCR;
        let raw = raw_from(&t);
        assert_eq!(raw.c_lflag & (libc::ECHO | libc::ICANON | libc::ISIG), 0);
        assert_eq!(raw.c_iflag & libc::ICRNL, 0);
        assert_eq!(raw.c_oflag, libc::OPOST | libc::ONLCR);
    }

    #[test]
    fn restore_without_raw_mode_does_nothing() {
        restore();
        assert!(SAVED.lock().unwrap().is_none());
    }

    #[test]
    fn not_a_terminal_is_left_alone() {
        // Under `cargo test` stdin is not a terminal in CI; when it is, skip.
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } == 1 {
            return;
        }
        assert!(RawMode::enter().unwrap().is_none());
    }
}
