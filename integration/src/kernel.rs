//! L1's kernel as an uncompressed ELF `vmlinux`, extracted from Debian's
//! bzImage. QEMU boots an ELF with a PVH note (CONFIG_PVH) straight into
//! 64-bit code, skipping the bzImage's self-decompression, which under TCG
//! costs about 5 s per boot. The payload is found through the setup header
//! (Linux x86 boot protocol >= 2.08: `payload_offset`, `payload_length`).
//! L2 keeps the bzImage: both VMMs under test boot the stock file.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::images::{Cache, KeyHasher};
use crate::modules::Compression;

/// Setup header offsets (Documentation/arch/x86/boot.rst).
const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC: usize = 0x202;
const VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;

fn le32(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// The compressed kernel inside a bzImage, without the 4-byte uncompressed
/// size the kernel build appends to it (decompressors see that as garbage).
pub fn payload(bz: &[u8]) -> std::result::Result<(Compression, &[u8]), String> {
    if bz.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(b"HdrS") {
        return Err("no HdrS setup header".into());
    }
    let version = bz
        .get(VERSION..VERSION + 2)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    if version < 0x208 {
        return Err(format!("boot protocol {version:#x} has no payload fields"));
    }
    let setup_sects = match bz.get(SETUP_SECTS) {
        Some(0) | None => 4,
        Some(n) => usize::from(*n),
    };
    let (Some(offset), Some(length)) = (le32(bz, PAYLOAD_OFFSET), le32(bz, PAYLOAD_LENGTH)) else {
        return Err("truncated setup header".into());
    };
    let start = (setup_sects + 1) * 512 + offset;
    let data = bz
        .get(start..start + length.saturating_sub(4))
        .ok_or_else(|| format!("payload {start:#x}+{length:#x} lies outside the file"))?;
    let compression = match data {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Compression::Xz,
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        [0x7f, b'E', b'L', b'F', ..] => Compression::None,
        _ => return Err("payload compression not recognised".into()),
    };
    Ok((compression, data))
}

/// The extracted ELF vmlinux of `bzimage`, cached.
pub fn vmlinux(bzimage: &Path, cache: &Cache) -> Result<PathBuf> {
    let key = KeyHasher::default().str("vmlinux-1").file(bzimage).finish();
    cache.artefact("vmlinux", key, "elf", || extract(bzimage, cache.dir()))
}

fn extract(bzimage: &Path, scratch_dir: &Path) -> Result<Vec<u8>> {
    let failed = |detail: String| Error::Decompress {
        path: bzimage.to_path_buf(),
        detail,
    };
    let bz = std::fs::read(bzimage).map_err(|source| Error::ReadFile {
        path: bzimage.to_path_buf(),
        source,
    })?;
    let (compression, data) = payload(&bz).map_err(failed)?;
    let elf = match compression.tool() {
        None => data.to_vec(),
        Some(tool) => {
            let scratch = scratch_dir.join(format!(".payload.{}.tmp", std::process::id()));
            std::fs::write(&scratch, data).map_err(|source| Error::WriteFile {
                path: scratch.clone(),
                source,
            })?;
            let output = Command::new(tool).arg("-dc").arg(&scratch).output();
            let _ = std::fs::remove_file(&scratch);
            let output = output.map_err(|e| failed(format!("running {tool}: {e}")))?;
            if !output.status.success() {
                return Err(failed(
                    String::from_utf8_lossy(&output.stderr).trim().to_string(),
                ));
            }
            output.stdout
        }
    };
    if !elf.starts_with(b"\x7fELF") {
        return Err(failed("decompressed payload is not an ELF file".into()));
    }
    Ok(elf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bzimage(setup_sects: u8, version: u16, payload: &[u8]) -> Vec<u8> {
        let mut bz = vec![0u8; (usize::from(setup_sects) + 1) * 512 + 16];
        bz[SETUP_SECTS] = setup_sects;
        bz[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        bz[VERSION..VERSION + 2].copy_from_slice(&version.to_le_bytes());
        bz[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&16u32.to_le_bytes());
        let length = payload.len() as u32 + 4;
        bz[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&length.to_le_bytes());
        bz.extend_from_slice(payload);
        bz.extend_from_slice(&[1, 2, 3, 4]); // the appended uncompressed size
        bz
    }

    #[test]
    fn xz_payload_is_found_without_the_size_trailer() {
        let bz = bzimage(27, 0x20f, b"\xfd7zXZ\0stream");
        let found = payload(&bz);
        assert_eq!(found, Ok((Compression::Xz, &b"\xfd7zXZ\0stream"[..])));
    }

    #[test]
    fn zero_setup_sects_means_four() {
        let bz = bzimage(4, 0x20f, b"\x1f\x8bgz");
        let mut patched = bz.clone();
        patched[SETUP_SECTS] = 0;
        assert_eq!(payload(&patched), payload(&bz));
    }

    #[test]
    fn old_boot_protocol_is_rejected() {
        assert!(payload(&bzimage(4, 0x206, b"\x1f\x8bgz")).is_err());
    }

    #[test]
    fn non_bzimage_is_rejected() {
        assert!(payload(b"\x7fELF not a bzImage").is_err());
    }

    #[test]
    fn unknown_compression_is_rejected() {
        assert!(payload(&bzimage(4, 0x20f, b"LZ4?")).is_err());
    }
}
