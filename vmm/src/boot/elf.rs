//! What an uncompressed x86-64 `vmlinux` ELF header must say before Strait loads it
//! (System V gABI, "ELF Header" and "Program Header"; x86-64 psABI for EM_X86_64).
//!
//! linux-loader checks only the magic, class and byte order, so any 64-bit ELF (/bin/ls,
//! an arm64 vmlinux) used to pass `validate` and fail, or triple-fault, in `run`. A
//! vmlinux is an ET_EXEC for EM_X86_64 whose PT_LOAD segments sit at physical addresses
//! in low RAM (1 MiB..3 GiB) and whose entry point (`phys_startup_64`) is inside them.

use arch::x86_64::layout;

const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;

/// Where a vmlinux loads: what the loader will copy and where the guest starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfLayout {
    pub entry: u64,
    /// Lowest `p_paddr` of a loaded segment.
    pub start: u64,
    /// Highest `p_paddr + p_memsz` of a loaded segment (linux-loader's `kernel_end`).
    pub end: u64,
}

/// Why a 64-bit ELF is not an x86-64 kernel Strait can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ElfProblem {
    #[error("it is not a 64-bit little-endian ELF")]
    NotElf64,
    #[error("its type is {e_type}{}, a vmlinux is ET_EXEC (2)", type_name(*e_type))]
    NotExecutable { e_type: u16 },
    #[error("its machine is {e_machine}, an x86-64 vmlinux has EM_X86_64 (62)")]
    WrongMachine { e_machine: u16 },
    #[error("its program headers are not within the first {0} bytes")]
    ProgramHeaders(usize),
    #[error("it has no loadable segment")]
    NoLoadSegment,
    #[error("it loads at {start:#x}..{end:#x}, outside guest RAM from 1 MiB to 3 GiB")]
    LoadOutsideRam { start: u64, end: u64 },
    #[error("its entry point {entry:#x} is outside its loaded segments")]
    EntryOutside { entry: u64 },
}

fn type_name(e_type: u16) -> &'static str {
    match e_type {
        1 => " (ET_REL, an object file)",
        ET_DYN => " (ET_DYN, a shared library or position-independent program)",
        4 => " (ET_CORE, a core dump)",
        _ => "",
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Check the ELF header and program headers in `head` (the file's first bytes, which
/// start with the ELF magic) describe an x86-64 kernel in low RAM.
pub fn check_elf(head: &[u8]) -> Result<ElfLayout, ElfProblem> {
    if head.len() < EHDR_LEN || head[4] != ELFCLASS64 || head[5] != ELFDATA2LSB {
        return Err(ElfProblem::NotElf64);
    }
    let e_type = u16_at(head, 16).unwrap_or(0);
    if e_type != ET_EXEC {
        return Err(ElfProblem::NotExecutable { e_type });
    }
    let e_machine = u16_at(head, 18).unwrap_or(0);
    if e_machine != EM_X86_64 {
        return Err(ElfProblem::WrongMachine { e_machine });
    }
    let entry = u64_at(head, 24).unwrap_or(0);
    let (start, end) = load_range(head)?;
    if start < layout::HIMEM_START.0 || end > layout::MEM_32BIT_GAP_START.0 {
        return Err(ElfProblem::LoadOutsideRam { start, end });
    }
    if !(start..end).contains(&entry) {
        return Err(ElfProblem::EntryOutside { entry });
    }
    Ok(ElfLayout { entry, start, end })
}

/// The span of the PT_LOAD segments with file contents (the ones linux-loader copies).
fn load_range(head: &[u8]) -> Result<(u64, u64), ElfProblem> {
    let beyond = ElfProblem::ProgramHeaders(head.len());
    let phoff = usize::try_from(u64_at(head, 32).unwrap_or(u64::MAX)).map_err(|_| beyond)?;
    let phentsize = usize::from(u16_at(head, 54).unwrap_or(0));
    let phnum = usize::from(u16_at(head, 56).unwrap_or(0));
    if phentsize < PHDR_LEN && phnum > 0 {
        return Err(beyond);
    }
    let mut range: Option<(u64, u64)> = None;
    for i in 0..phnum {
        let at = phentsize
            .checked_mul(i)
            .and_then(|o| o.checked_add(phoff))
            .ok_or(beyond)?;
        let ph = head.get(at..at.saturating_add(PHDR_LEN)).ok_or(beyond)?;
        let (p_type, filesz) = (u32_at(ph, 0), u64_at(ph, 32));
        if p_type != Some(PT_LOAD) || filesz == Some(0) {
            continue;
        }
        let (paddr, memsz) = (u64_at(ph, 24).unwrap_or(0), u64_at(ph, 40).unwrap_or(0));
        let end = paddr.checked_add(memsz).ok_or(ElfProblem::LoadOutsideRam {
            start: paddr,
            end: u64::MAX,
        })?;
        range = Some(range.map_or((paddr, end), |(s, e)| (s.min(paddr), e.max(end))));
    }
    range.ok_or(ElfProblem::NoLoadSegment)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const LOAD: u64 = 0x100_0000;

    /// An ELF64 header with one PT_LOAD of `len` bytes at `paddr`, entry `entry`.
    pub(crate) fn elf_head(e_type: u16, machine: u16, entry: u64, paddr: u64) -> Vec<u8> {
        let mut v = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        v.extend(e_type.to_le_bytes());
        v.extend(machine.to_le_bytes());
        v.extend(1u32.to_le_bytes());
        v.extend(entry.to_le_bytes());
        v.extend(64u64.to_le_bytes()); // e_phoff
        v.extend(0u64.to_le_bytes()); // e_shoff
        v.extend(0u32.to_le_bytes()); // e_flags
        for h in [64u16, 56, 1, 64, 0, 0] {
            v.extend(h.to_le_bytes());
        }
        v.extend(PT_LOAD.to_le_bytes());
        v.extend(5u32.to_le_bytes());
        v.extend(0x1000u64.to_le_bytes()); // p_offset
        v.extend(paddr.to_le_bytes()); // p_vaddr
        v.extend(paddr.to_le_bytes()); // p_paddr
        v.extend(0x20_0000u64.to_le_bytes()); // p_filesz
        v.extend(0x40_0000u64.to_le_bytes()); // p_memsz
        v.extend(0x1000u64.to_le_bytes());
        v
    }

    #[test]
    fn x86_64_vmlinux_passes_with_its_load_range() {
        let l = check_elf(&elf_head(ET_EXEC, EM_X86_64, LOAD, LOAD)).unwrap();
        assert_eq!(
            l,
            ElfLayout {
                entry: LOAD,
                start: LOAD,
                end: LOAD + 0x40_0000
            }
        );
    }

    #[test]
    fn position_independent_program_is_not_a_kernel() {
        let err = check_elf(&elf_head(ET_DYN, EM_X86_64, 0x6ab0, 0)).unwrap_err();
        assert_eq!(err, ElfProblem::NotExecutable { e_type: ET_DYN });
    }

    #[test]
    fn arm64_vmlinux_is_the_wrong_machine() {
        let err = check_elf(&elf_head(ET_EXEC, 183, LOAD, LOAD)).unwrap_err();
        assert_eq!(err, ElfProblem::WrongMachine { e_machine: 183 });
    }

    #[test]
    fn segment_below_1_mib_is_outside_ram() {
        let err = check_elf(&elf_head(ET_EXEC, EM_X86_64, 0x8000, 0x8000)).unwrap_err();
        assert!(
            matches!(err, ElfProblem::LoadOutsideRam { start: 0x8000, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn virtual_load_address_is_outside_ram() {
        let high = 0xffff_ffff_8100_0000;
        let err = check_elf(&elf_head(ET_EXEC, EM_X86_64, high, high)).unwrap_err();
        assert!(matches!(err, ElfProblem::LoadOutsideRam { .. }), "{err:?}");
    }

    #[test]
    fn entry_outside_the_segments_is_refused() {
        let err = check_elf(&elf_head(ET_EXEC, EM_X86_64, 0x10_0000, LOAD)).unwrap_err();
        assert_eq!(err, ElfProblem::EntryOutside { entry: 0x10_0000 });
    }

    #[test]
    fn program_headers_past_the_probe_are_refused() {
        let mut head = elf_head(ET_EXEC, EM_X86_64, LOAD, LOAD);
        head[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            check_elf(&head),
            Err(ElfProblem::ProgramHeaders(_))
        ));
        head[32..40].copy_from_slice(&0x10_0000u64.to_le_bytes());
        assert!(matches!(
            check_elf(&head),
            Err(ElfProblem::ProgramHeaders(_))
        ));
    }

    #[test]
    fn no_load_segment_is_refused() {
        let mut head = elf_head(ET_EXEC, EM_X86_64, LOAD, LOAD);
        head[56..58].copy_from_slice(&0u16.to_le_bytes()); // e_phnum
        assert_eq!(check_elf(&head), Err(ElfProblem::NoLoadSegment));
    }

    #[test]
    fn elf32_is_refused() {
        let mut head = elf_head(ET_EXEC, EM_X86_64, LOAD, LOAD);
        head[4] = 1;
        assert_eq!(check_elf(&head), Err(ElfProblem::NotElf64));
        assert_eq!(check_elf(b"\x7fELF\x02\x01\x01"), Err(ElfProblem::NotElf64));
    }
}
