//! Bounded error logging for interrupt routing driven by guest accesses.

use resources::LogLimiter;

use crate::interrupt::{MsiChange, MsiRouter};

/// Hand what a guest access changed to `router` (nothing if nothing changed). The
/// router is the VMM's (KVM routing, irqfds): its failure is a host problem the guest
/// cannot fix, so it is logged at error level, but through a limiter since the guest
/// can repeat the access in a loop.
pub(crate) fn apply_changes(router: &mut dyn MsiRouter, changes: &[MsiChange]) {
    if changes.is_empty() {
        return;
    }
    log_router_error("apply", router.apply(changes));
}

/// Log a failed [`MsiRouter`] call from a guest-driven path, rate-limited.
pub(crate) fn log_router_error(what: &str, res: std::io::Result<()>) {
    static LIMIT: LogLimiter = LogLimiter::new();
    if let Err(e) = res {
        if LIMIT.allow() {
            log::error!("MSI router {what} failed (failure #{}): {e}", LIMIT.count());
        }
    }
}
