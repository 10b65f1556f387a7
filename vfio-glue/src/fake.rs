//! Fakes of the hardware traits for tests here and in the VMM: a VFIO device
//! whose regions are byte arrays, and a DMA mapper; both append what they are
//! asked to one shared [`CallLog`], so tests assert on call order across them.
//! [`NullRouter`] is an MSI router that accepts everything, [`NoIrqs`] an interrupt
//! provider that gives none (fuzz targets, tests that do not look at interrupts).

use resources::lock;
use std::collections::BTreeMap;
use std::io;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::container::{DmaMapper, IovaRange};
use crate::device::{IrqIndex, IrqInfo, IrqRequest, RegionInfo, VfioDeviceOps, CONFIG_REGION};
use crate::hot_reset::HotResetTarget;
use crate::mapping::HostMapping;

/// An MSI router that accepts every call and does nothing.
#[derive(Debug, Default)]
pub struct NullRouter;

impl devices::interrupt::MsiRouter for NullRouter {
    fn apply(&mut self, _: &[devices::interrupt::MsiChange]) -> io::Result<()> {
        Ok(())
    }
    fn trigger(&mut self, _: u16) -> io::Result<()> {
        Ok(())
    }
}

/// An interrupt provider that refuses MSI, MSI-X and INTx: a function taken with it
/// has no interrupts (tests that do not look at them).
#[derive(Debug, Default)]
pub struct NoIrqs;

impl crate::irq::IrqProvider for NoIrqs {
    fn msi(
        &mut self,
        _: crate::irq::MsiKind,
        _: u16,
        _: crate::irq::Holder,
    ) -> io::Result<crate::irq::MsiVectors> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn intx(&mut self, _: u8) -> io::Result<crate::irq::IntxFds> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// A call a fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    IrqTrigger {
        index: IrqIndex,
        start: u32,
        fds: Vec<RawFd>,
    },
    IrqDisable {
        index: IrqIndex,
    },
    IrqResample {
        index: IrqIndex,
        fd: RawFd,
    },
    RegionWrite {
        index: u32,
        offset: u64,
        data: Vec<u8>,
    },
    Mmap {
        index: u32,
        offset: u64,
        size: u64,
    },
    Reset,
    HotReset {
        groups: Vec<u32>,
    },
    DeviceClosed,
    DmaMap {
        iova: u64,
        size: u64,
    },
    DmaUnmap {
        iova: u64,
        size: u64,
    },
    ContainerClosed,
}

/// Calls shared by the fakes of one test.
#[derive(Debug, Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<Call>>>);

impl CallLog {
    fn lock(&self) -> MutexGuard<'_, Vec<Call>> {
        lock(&self.0)
    }

    pub fn push(&self, c: Call) {
        self.lock().push(c);
    }

    /// Everything logged so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().clone()
    }

    /// Take everything logged so far, leaving the log empty.
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.lock())
    }

    /// Calls other than config-space writes and mmaps (the usual noise).
    pub fn irq_calls(&self) -> Vec<Call> {
        let calls = self.lock();
        let irq = |c: &&Call| {
            matches!(
                c,
                Call::IrqTrigger { .. } | Call::IrqDisable { .. } | Call::IrqResample { .. }
            )
        };
        calls.iter().filter(irq).cloned().collect()
    }
}

struct Region {
    info: RegionInfo,
    data: Mutex<Vec<u8>>,
}

/// A VFIO device made of byte arrays.
pub struct FakeDevice {
    log: CallLog,
    regions: BTreeMap<u32, Region>,
    irqs: BTreeMap<u32, IrqInfo>,
    reset_supported: bool,
    /// While set, a reset leaves config space reading all ones (a card stuck in reset).
    dies_on_reset: Arc<AtomicBool>,
    /// Fail SET_IRQS with this errno.
    pub fail_set_irqs: Option<i32>,
    /// What GET_PCI_HOT_RESET_INFO lists (None: ENODEV, no bus or slot reset).
    hot_reset_targets: Option<Vec<HotResetTarget>>,
    /// The groups this process holds.
    held_groups: Vec<u32>,
    /// Closing waits here for the other devices' closes.
    close_meeting: Option<Arc<Meeting>>,
}

/// Where `n` device closes wait for each other: each waits (at most 5 s) until all `n`
/// are closing at the same time. Closes that run one after the other never all meet,
/// so a test can tell overlapping releases from sequential ones without timing them.
#[derive(Debug)]
pub struct Meeting {
    n: usize,
    arrived: Mutex<usize>,
    all: Condvar,
    /// Closes that saw all `n` arrive.
    pub met: std::sync::atomic::AtomicUsize,
}

impl Meeting {
    /// A meeting of `n` closes.
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(Meeting {
            n,
            arrived: Mutex::new(0),
            all: Condvar::new(),
            met: Default::default(),
        })
    }

    fn arrive(&self) {
        let mut arrived = lock(&self.arrived);
        *arrived += 1;
        self.all.notify_all();
        let (arrived, _) = self
            .all
            .wait_timeout_while(arrived, Duration::from_secs(5), |a| *a < self.n)
            .unwrap_or_else(|e| e.into_inner());
        if *arrived >= self.n {
            self.met.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl FakeDevice {
    /// A device with a 4 KiB (PCIe) config space holding `config`.
    pub fn new(log: CallLog, config: &[u8]) -> Self {
        let mut bytes = vec![0u8; 4096];
        let n = config.len().min(4096);
        bytes[..n].copy_from_slice(&config[..n]);
        let mut dev = FakeDevice {
            log,
            regions: BTreeMap::new(),
            irqs: BTreeMap::new(),
            reset_supported: true,
            dies_on_reset: Arc::default(),
            fail_set_irqs: None,
            hot_reset_targets: None,
            held_groups: Vec::new(),
            close_meeting: None,
        };
        let info = RegionInfo {
            size: 4096,
            readable: true,
            writable: true,
            ..Default::default()
        };
        dev.regions.insert(
            CONFIG_REGION,
            Region {
                info,
                data: Mutex::new(bytes),
            },
        );
        dev
    }

    /// Its close waits at `meeting` for the other devices'.
    pub fn closing_at(mut self, meeting: Arc<Meeting>) -> Self {
        self.close_meeting = Some(meeting);
        self
    }

    /// Add region `index` described by `info`, filled with zeros.
    pub fn with_region(mut self, index: u32, info: RegionInfo) -> Self {
        let data = vec![0u8; info.size as usize];
        self.regions.insert(
            index,
            Region {
                info,
                data: Mutex::new(data),
            },
        );
        self
    }

    pub fn with_irq(mut self, index: IrqIndex, info: IrqInfo) -> Self {
        self.irqs.insert(index as u32, info);
        self
    }

    /// A switch: once set, every reset leaves the card stuck (config space all ones).
    pub fn stuck_after_reset(&self) -> Arc<AtomicBool> {
        self.dies_on_reset.clone()
    }

    pub fn without_reset(mut self) -> Self {
        self.reset_supported = false;
        self
    }

    /// A hot reset of this device would reset `targets`; the process holds `held`.
    pub fn with_hot_reset(mut self, targets: Vec<HotResetTarget>, held: Vec<u32>) -> Self {
        self.hot_reset_targets = Some(targets);
        self.held_groups = held;
        self
    }

    /// A reset leaves config space reading all ones while the flag is set.
    fn after_reset(&self) -> io::Result<()> {
        if self.dies_on_reset.load(Ordering::SeqCst) {
            self.with_data(CONFIG_REGION, |d| d.fill(0xff))?;
        }
        Ok(())
    }

    fn with_data<T>(&self, index: u32, f: impl FnOnce(&mut Vec<u8>) -> T) -> io::Result<T> {
        let r = self.regions.get(&index).ok_or(io::ErrorKind::NotFound)?;
        let mut d = lock(&r.data);
        Ok(f(&mut d))
    }

    /// Read region bytes directly (what the "hardware" holds).
    pub fn peek(&self, index: u32, offset: usize, len: usize) -> Vec<u8> {
        self.with_data(index, |d| d[offset..offset + len].to_vec())
            .unwrap_or_default()
    }
}

fn range(offset: u64, len: usize, size: usize) -> io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(offset).map_err(io::Error::other)?;
    match start.checked_add(len) {
        Some(end) if end <= size => Ok(start..end),
        _ => Err(io::ErrorKind::InvalidInput.into()),
    }
}

impl VfioDeviceOps for FakeDevice {
    fn reset_supported(&self) -> bool {
        self.reset_supported
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.regions.get(&index).map(|r| r.info.clone())
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        self.with_data(index, |d| {
            let r = range(offset, data.len(), d.len())?;
            data.copy_from_slice(&d[r]);
            Ok(())
        })?
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        self.log.push(Call::RegionWrite {
            index,
            offset,
            data: data.to_vec(),
        });
        self.with_data(index, |d| {
            let r = range(offset, data.len(), d.len())?;
            d[r].copy_from_slice(data);
            Ok(())
        })?
    }

    fn mmap(&self, index: u32, offset: u64, size: u64) -> io::Result<HostMapping> {
        self.log.push(Call::Mmap {
            index,
            offset,
            size,
        });
        HostMapping::anonymous(usize::try_from(size).map_err(io::Error::other)?)
    }

    fn irq_info(&self, index: IrqIndex) -> Option<IrqInfo> {
        self.irqs.get(&(index as u32)).copied()
    }

    fn set_irqs(&self, req: IrqRequest<'_>) -> io::Result<()> {
        if let Some(errno) = self.fail_set_irqs {
            return Err(io::Error::from_raw_os_error(errno));
        }
        self.log.push(match req {
            IrqRequest::Trigger { index, start, fds } => Call::IrqTrigger {
                index,
                start,
                fds: fds.to_vec(),
            },
            IrqRequest::Disable { index } => Call::IrqDisable { index },
            IrqRequest::Resample { index, fd } => Call::IrqResample { index, fd },
        });
        Ok(())
    }

    fn reset(&self) -> io::Result<()> {
        self.log.push(Call::Reset);
        self.after_reset()
    }

    fn hot_reset_info(&self) -> io::Result<Vec<HotResetTarget>> {
        self.hot_reset_targets
            .clone()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))
    }

    fn held_groups(&self) -> Vec<u32> {
        self.held_groups.clone()
    }

    fn hot_reset(&self, groups: &[u32]) -> io::Result<()> {
        self.log.push(Call::HotReset {
            groups: groups.to_vec(),
        });
        self.after_reset()
    }
}

impl Drop for FakeDevice {
    fn drop(&mut self) {
        if let Some(m) = &self.close_meeting {
            m.arrive();
        }
        self.log.push(Call::DeviceClosed);
    }
}

/// A DMA mapper that records calls and accepts IOVAs inside `ranges`.
pub struct FakeDmaMapper {
    log: CallLog,
    ranges: Vec<IovaRange>,
    /// Fail the map at this IOVA with this errno.
    pub fail_at: Option<(u64, i32)>,
}

impl FakeDmaMapper {
    pub fn new(log: CallLog, ranges: Vec<IovaRange>) -> Self {
        FakeDmaMapper {
            log,
            ranges,
            fail_at: None,
        }
    }
}

impl DmaMapper for FakeDmaMapper {
    unsafe fn map(&self, iova: u64, size: u64, _host_addr: u64) -> io::Result<()> {
        if let Some((at, errno)) = self.fail_at {
            if at == iova {
                return Err(io::Error::from_raw_os_error(errno));
            }
        }
        self.log.push(Call::DmaMap { iova, size });
        Ok(())
    }

    fn unmap(&self, iova: u64, size: u64) -> io::Result<()> {
        self.log.push(Call::DmaUnmap { iova, size });
        Ok(())
    }

    fn iova_ranges(&self) -> io::Result<Vec<IovaRange>> {
        Ok(self.ranges.clone())
    }
}

impl Drop for FakeDmaMapper {
    fn drop(&mut self) {
        self.log.push(Call::ContainerClosed);
    }
}
