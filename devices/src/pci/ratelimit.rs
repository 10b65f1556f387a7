//! Bounded error logging for interrupt routing driven by guest accesses.

use resources::LogLimiter;

/// Log a failed [`crate::interrupt::MsiRouter`] call from a guest-driven path.
/// The router is the VMM's (KVM routing, irqfds): its failure is a host
/// problem the guest cannot fix, so it is logged at error level, but through a
/// limiter since the guest can repeat the access in a loop.
pub(super) fn router_result(what: &str, vector: u16, res: std::io::Result<()>) {
    static LIMIT: LogLimiter = LogLimiter::new();
    if let Err(e) = res {
        if LIMIT.allow() {
            log::error!(
                "MSI router {what} of vector {vector} failed (failure #{}): {e}",
                LIMIT.count()
            );
        }
    }
}
