//! COM1: a 16550A UART (vm-superio's model) on the port I/O bus, 8 registers.
//!
//! Register semantics follow the 16550A data sheet as vm-superio implements them. The
//! interrupt line is an `EventFd` that the VMM registers with KVM as an irqfd on the
//! UART's GSI (4 for COM1), so raising it needs no vCPU exit and no KVM call here.

use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::fill_ones;
use crate::bus::BusDevice;
use resources::limited_debug;
use resources::LogLimiter;

/// Number of I/O ports a 16550 decodes.
pub const SERIAL_PORT_LEN: u64 = 8;

static ODD_ACCESS: LogLimiter = LogLimiter::new();
static OUTPUT_ERROR: LogLimiter = LogLimiter::new();

/// Edge interrupt through an `EventFd` (one write = one pulse on the irqfd's GSI).
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(fd: EventFd) -> Self {
        EventFdTrigger(fd)
    }

    /// The underlying fd, to register as an irqfd.
    pub fn event_fd(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// A 16550A UART whose transmitter writes to `W`.
pub struct SerialPort<W: Write + Send> {
    uart: Serial<EventFdTrigger, NoEvents, W>,
}

impl<W: Write + Send> std::fmt::Debug for SerialPort<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialPort").finish_non_exhaustive()
    }
}

impl<W: Write + Send> SerialPort<W> {
    /// A UART raising `irq` and writing guest output to `out`.
    pub fn new(irq: EventFdTrigger, out: W) -> Self {
        SerialPort {
            uart: Serial::new(irq, out),
        }
    }

    /// Queue host input for the guest. Returns how many bytes fit in the receive FIFO
    /// (0 when it is full: the caller retries later).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(e) => {
                limited_debug!(OUTPUT_ERROR, "serial: input interrupt failed: {e}");
                0
            }
        }
    }

    /// Back to the power-on register values (16550A data sheet, "reset" column):
    /// interrupts off, 8N1, OUT2 set, scratch 0, receive FIFO emptied. Host input
    /// typed before the reset is dropped with it.
    pub fn reset(&mut self) {
        const IER: u8 = 1;
        const LCR: u8 = 3;
        const MCR: u8 = 4;
        const LSR: u8 = 5;
        const SCR: u8 = 7;
        const LSR_DATA_READY: u8 = 1;
        for (reg, value) in [(LCR, 0x03), (IER, 0), (MCR, 0x08), (SCR, 0)] {
            if let Err(e) = self.uart.write(reg, value) {
                limited_debug!(OUTPUT_ERROR, "serial: reset: {e}");
            }
        }
        // Bounded: the receive FIFO holds 64 bytes.
        for _ in 0..128 {
            if self.uart.read(LSR) & LSR_DATA_READY == 0 {
                break;
            }
            self.uart.read(0);
        }
    }

    /// The output sink (tests read what the guest printed).
    pub fn writer(&self) -> &W {
        self.uart.writer()
    }

    /// The interrupt trigger, whose fd the VMM registers as an irqfd.
    pub fn trigger(&self) -> &EventFdTrigger {
        self.uart.interrupt_evt()
    }
}

impl<W: Write + Send> BusDevice for SerialPort<W> {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset >= SERIAL_PORT_LEN {
            limited_debug!(
                ODD_ACCESS,
                "serial: {}-byte read at offset {offset}",
                data.len()
            );
            fill_ones(data);
            return;
        }
        data[0] = self.uart.read(offset as u8);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= SERIAL_PORT_LEN {
            limited_debug!(
                ODD_ACCESS,
                "serial: {}-byte write at offset {offset}",
                data.len()
            );
            return;
        }
        // A console that cannot be written (closed pipe, full disk) loses output; the
        // guest must go on, as with a real unplugged cable.
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            limited_debug!(OUTPUT_ERROR, "serial: output lost: {e:?}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const LCR: u64 = 3;

    fn port() -> SerialPort<Vec<u8>> {
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        SerialPort::new(EventFdTrigger::new(fd), Vec::new())
    }

    fn write(p: &mut SerialPort<Vec<u8>>, off: u64, v: u8) {
        p.write(0x3f8, off, &[v]);
    }

    fn read(p: &mut SerialPort<Vec<u8>>, off: u64) -> u8 {
        let mut d = [0u8];
        p.read(0x3f8, off, &mut d);
        d[0]
    }

    #[test]
    fn reset_turns_interrupts_off_and_empties_the_receive_fifo() {
        let mut p = port();
        write(&mut p, IER, 0x0f);
        assert_eq!(p.enqueue_input(b"abc"), 3);
        assert_eq!(read(&mut p, LSR) & 1, 1);
        p.reset();
        assert_eq!(read(&mut p, IER), 0);
        assert_eq!(read(&mut p, LSR) & 1, 0);
        assert_eq!(read(&mut p, LCR), 0x03);
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let mut p = port();
        for b in b"hi\n" {
            write(&mut p, THR, *b);
        }
        assert_eq!(p.writer().as_slice(), b"hi\n");
    }

    #[test]
    fn transmitter_reads_as_empty() {
        let mut p = port();
        // LSR bits 5 (THRE) and 6 (TEMT): the Linux 8250 driver waits on these.
        assert_eq!(read(&mut p, LSR) & 0x60, 0x60);
    }

    #[test]
    fn enabling_thr_interrupt_raises_the_line() {
        let mut p = port();
        write(&mut p, IER, 0x02);
        assert_eq!(p.trigger().event_fd().read().unwrap(), 1);
    }

    #[test]
    fn input_sets_data_ready_and_is_read_back() {
        let mut p = port();
        assert_eq!(p.enqueue_input(b"x"), 1);
        assert_eq!(read(&mut p, LSR) & 0x01, 0x01);
        assert_eq!(read(&mut p, THR), b'x');
        assert_eq!(read(&mut p, LSR) & 0x01, 0);
    }

    #[test]
    fn divisor_latch_does_not_emit_output() {
        let mut p = port();
        write(&mut p, LCR, 0x80);
        write(&mut p, THR, 0x01);
        assert!(p.writer().is_empty());
    }

    #[test]
    fn wide_access_reads_ones_and_drops_writes() {
        let mut p = port();
        let mut d = [0u8; 2];
        p.read(0x3f8, THR, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        p.write(0x3f8, THR, b"ab");
        assert!(p.writer().is_empty());
    }
}
