//! L1's memory as the benchmark's agent keeps it: the hugepage pools sized for
//! each launch just before it starts, hugetlbfs for QEMU's 1 GiB pages, Strait's
//! kernel cache on L1's own tmpfs, and the plain populate that measures how fast
//! this machine zeroes hugepages.
//!
//! The pools follow the plan rather than being reserved once: L1 cannot hold the
//! launch series' largest guest on 1 GiB pages and on 2 MiB pages at once. 1 GiB
//! pages come only from L1's command line, so the plan runs those launches first
//! and the agent frees the pages once no later launch needs them; the 2 MiB pool
//! grows when a launch needs more (the kernel compacts memory for it) and gives
//! pages back when a guest on 4 KiB pages would not fit beside it. A launch whose
//! pages L1 cannot provide is recorded as not run, with the count it got.

use std::ffi::{CStr, CString};
use std::fs;
use std::path::Path;
use std::time::Instant;

use crate::bench::plan::{Launch, LaunchKey};
use crate::bench::probe;
use crate::scenario::HugePages;
use crate::vmm::hugetlbfs_mount;

/// L1's pool of a page size.
fn pool(pages: HugePages) -> Option<String> {
    let kib = u64::from(pages.page_mib()?) * 1024;
    Some(format!("/sys/kernel/mm/hugepages/hugepages-{kib}kB"))
}

fn read_count(pages: HugePages, file: &str) -> u32 {
    pool(pages)
        .and_then(|p| fs::read_to_string(format!("{p}/{file}")).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn write_pool(pages: HugePages, count: u32) {
    if let Some(p) = pool(pages) {
        let path = format!("{p}/nr_hugepages");
        if let Err(e) = fs::write(&path, count.to_string()) {
            log::warn!("cannot write {count} to {path}: {e}");
        }
    }
}

/// The pages a launch needs from a pool: its RAM and, on 2 MiB pages, the VMM's slack.
pub fn pages_needed(key: &LaunchKey) -> Option<(HugePages, u32)> {
    match key.hugepages {
        HugePages::Size2M => Some((
            HugePages::Size2M,
            crate::bench::plan::bench_hugepages(key.memory_mib),
        )),
        HugePages::Size1G => Some((HugePages::Size1G, key.memory_mib.div_ceil(1024))),
        HugePages::None => None,
    }
}

/// Room a guest on 4 KiB pages needs besides its RAM (the VMM, L1's page cache).
const SMALL_PAGE_SLACK_MIB: u64 = 512;

/// Sizes L1's pools for `key`, the first of the launches `rest` still to run.
/// Err: L1 cannot provide the launch's pages.
pub fn size_pools(key: &LaunchKey, rest: &[Launch]) -> Result<(), String> {
    let gigantic = HugePages::Size1G;
    if !rest.iter().any(|l| l.key.hugepages == gigantic) && read_count(gigantic, "nr_hugepages") > 0
    {
        log::info!("no 1 GiB launch left: L1's 1 GiB pages go back");
        write_pool(gigantic, 0);
    }
    match pages_needed(key) {
        Some((pages, need)) if pages == HugePages::Size2M => {
            if read_count(pages, "nr_hugepages") < need {
                write_pool(pages, need);
            }
            let got = read_count(pages, "free_hugepages");
            (got >= need)
                .then_some(())
                .ok_or_else(|| format!("L1 has {got} of the {need} free 2 MiB pages it needs"))
        }
        Some((pages, need)) => {
            let got = read_count(pages, "free_hugepages");
            (got >= need).then_some(()).ok_or_else(|| {
                format!(
                    "L1 has {got} of the {need} free 1 GiB pages it needs (reserved at its boot)"
                )
            })
        }
        None => {
            let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
            let available = probe::status_kib(&text, "MemAvailable").unwrap_or(0) >> 10;
            if available < u64::from(key.memory_mib) + SMALL_PAGE_SLACK_MIB {
                log::info!(
                    "{}: {available} MiB available; the 2 MiB pages go back",
                    key.id
                );
                write_pool(HugePages::Size2M, 0);
            }
            Ok(())
        }
    }
}

/// Mounts hugetlbfs for 1 GiB pages where QEMU's memory backend looks for it.
pub fn mount_gigantic() {
    let Some(dir) = hugetlbfs_mount(HugePages::Size1G) else {
        return;
    };
    let _ = fs::create_dir_all(dir);
    let target = CString::new(dir).unwrap_or_default();
    if let Err(e) = mount(c"none", &target, c"hugetlbfs", Some(c"pagesize=1G")) {
        log::warn!("cannot mount hugetlbfs at {dir}: {e}");
    }
}

/// mount(2) of `fstype` from `source` at `target` with the options `data`.
pub(crate) fn mount(
    source: &CStr,
    target: &CStr,
    fstype: &CStr,
    data: Option<&CStr>,
) -> std::io::Result<()> {
    let data = data.map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call; it changes
    // only the mount table of this (L1's) system.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, data) };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Strait's cache dir (`$XDG_CACHE_HOME/strait`) under `base`.
fn strait_dir(base: &Path) -> std::path::PathBuf {
    base.join("strait")
}

/// Creates Strait's cache under `base` and fills it from the run script's cache (the
/// testbed's, over the host share), so only a cold launch finds it empty.
pub fn fill_cache(base: &Path) {
    let dir = strait_dir(base);
    let _ = fs::create_dir_all(&dir);
    let Some(seed) = std::env::var_os("XDG_CACHE_HOME") else {
        return;
    };
    let entries = fs::read_dir(strait_dir(Path::new(&seed)))
        .into_iter()
        .flatten();
    for entry in entries.flatten() {
        let to = dir.join(entry.file_name());
        if let Err(e) = fs::copy(entry.path(), &to) {
            log::warn!(
                "cannot copy {} to {}: {e}",
                entry.path().display(),
                to.display()
            );
        }
    }
}

/// Empties Strait's cache under `base` (a cold launch).
pub fn empty_cache(base: &Path) {
    let dir = strait_dir(base);
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::create_dir_all(&dir);
}

/// The plain populate, twice: (first, second) pass in ms. The first pass also makes
/// L0 back L1's pages (TCG allocates L1's RAM on first touch, at a fraction of the
/// speed L1 zeroes with later); the second is L1's zeroing alone, the baseline. The
/// VMM launches of the same size run after both, on the same warm pages.
pub fn populate_twice(pages: HugePages, mib: u32) -> Result<(f64, f64), String> {
    Ok((populate(pages, mib)?, populate(pages, mib)?))
}

/// Maps `mib` MiB of anonymous hugepages of `pages` with `MAP_POPULATE` (the kernel
/// zeroes every page before mmap returns) and unmaps them: the milliseconds mmap took.
fn populate(pages: HugePages, mib: u32) -> Result<f64, String> {
    let size_flag = match pages {
        HugePages::Size2M => libc::MAP_HUGE_2MB,
        HugePages::Size1G => libc::MAP_HUGE_1GB,
        HugePages::None => return Err("the populate needs hugepages".into()),
    };
    let len = (mib as usize) << 20;
    let flags = libc::MAP_PRIVATE
        | libc::MAP_ANONYMOUS
        | libc::MAP_HUGETLB
        | libc::MAP_POPULATE
        | size_flag;
    let start = Instant::now();
    // SAFETY: a new anonymous mapping at an address the kernel picks; nothing else
    // refers to it, and it is unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if addr == libc::MAP_FAILED {
        return Err(format!(
            "mmap of {mib} MiB on {} pages: {}",
            pages.spec_value(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `addr` and `len` are the mapping made above, which no one uses.
    unsafe { libc::munmap(addr, len) };
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::plan::{LaunchKind, VmmKind};

    fn key(mib: u32, hugepages: HugePages) -> LaunchKey {
        LaunchKey {
            id: "r1-ram-x".into(),
            kind: LaunchKind::Ram,
            vmm: VmmKind::Strait,
            rep: 1,
            memory_mib: mib,
            hugepages,
            prefault: true,
            cold_kernel: false,
        }
    }

    #[test]
    fn a_launch_needs_its_ram_in_pages_and_slack_on_2m() {
        assert_eq!(
            pages_needed(&key(2048, HugePages::Size2M)),
            Some((HugePages::Size2M, 1032))
        );
        assert_eq!(
            pages_needed(&key(3072, HugePages::Size1G)),
            Some((HugePages::Size1G, 3))
        );
        assert_eq!(pages_needed(&key(512, HugePages::None)), None);
    }

    #[test]
    fn pools_live_under_sysfs_by_page_size() {
        assert_eq!(
            pool(HugePages::Size1G).as_deref(),
            Some("/sys/kernel/mm/hugepages/hugepages-1048576kB")
        );
        assert_eq!(pool(HugePages::None), None);
    }

    #[test]
    fn populate_refuses_small_pages() {
        assert!(populate(HugePages::None, 2).is_err());
    }
}
