//! Test doubles for the PCI model: an [`MsiRouter`] that records what it is asked to
//! apply.

use std::sync::{Arc, Mutex};

use crate::interrupt::{MsiChange, MsiMessage, MsiRouter};

/// One change the router applied (`Trigger` also stands for `MsiChange::Deliver`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Update(u16, MsiMessage, bool),
    Enable(Option<u16>),
    Trigger(u16),
    FunctionMask(bool),
}

/// Records calls; clones share the log so a test keeps one after boxing another.
#[derive(Clone, Default)]
pub struct RecordingRouter {
    calls: Arc<Mutex<Vec<Call>>>,
    /// Vectors the router says it holds an interrupt for.
    pub held: Arc<Mutex<Vec<u16>>>,
}

impl RecordingRouter {
    /// Calls since the last `take`.
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn push(&self, c: Call) -> std::io::Result<()> {
        self.calls.lock().unwrap().push(c);
        Ok(())
    }
}

impl MsiRouter for RecordingRouter {
    fn apply(&mut self, changes: &[MsiChange]) -> std::io::Result<()> {
        for c in changes {
            self.push(match *c {
                MsiChange::Enable(n) => Call::Enable(n),
                MsiChange::FunctionMask(m) => Call::FunctionMask(m),
                MsiChange::Vector {
                    vector,
                    msg,
                    masked,
                } => Call::Update(vector, msg, masked),
                MsiChange::Deliver(v) => Call::Trigger(v),
            })?;
        }
        Ok(())
    }

    fn trigger(&mut self, vector: u16) -> std::io::Result<()> {
        self.push(Call::Trigger(vector))
    }

    fn is_pending(&mut self, vector: u16) -> bool {
        self.held.lock().unwrap().contains(&vector)
    }
}

/// A message with the given address and data.
pub fn msg(address: u64, data: u32) -> MsiMessage {
    MsiMessage { address, data }
}

use super::config::{ConfigSize, PciConfigSpace, PciIds};
use super::root::SharedPciDevice;
use super::{BarInfo, ConfigWriteResult, PciDevice};

/// A bare type-0 endpoint identified by `device` (vendor 0x1af4), with one
/// 4 KiB memory BAR 0.
pub struct TestEndpoint {
    pub cfg: PciConfigSpace,
}

impl TestEndpoint {
    pub fn new(device: u16) -> Self {
        let ids = PciIds {
            vendor: 0x1af4,
            device,
            class: 0x01_0802,
            ..PciIds::default()
        };
        let mut cfg = PciConfigSpace::new_type0(ids, ConfigSize::Pcie);
        cfg.add_bar(
            0,
            super::BarKind::Mem32 {
                prefetchable: false,
            },
            0x1000,
        )
        .unwrap();
        Self { cfg }
    }

    pub fn shared(device: u16) -> SharedPciDevice {
        Arc::new(Mutex::new(Self::new(device)))
    }
}

impl PciDevice for TestEndpoint {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.cfg.read_reg(reg)
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigWriteResult {
        self.cfg.write(reg, offset, data)
    }

    fn bars(&self) -> Vec<BarInfo> {
        self.cfg.bars()
    }

    fn bar_read(&mut self, _index: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn bar_write(&mut self, _index: u8, _offset: u64, _data: &[u8]) {}
}
