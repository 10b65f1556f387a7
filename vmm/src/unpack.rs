//! A bzImage's kernel, decompressed on the host so the guest skips its own decompressor.
//!
//! A bzImage (Linux x86 boot protocol 2.08+, Documentation/arch/x86/boot.rst) carries the
//! kernel proper as a compressed payload at `payload_offset` (from the start of the
//! protected-mode code), `payload_length` bytes long. The payload is the stripped ELF
//! `vmlinux` (plus, for relocatable kernels, its relocation table, which the ELF loader
//! ignores), compressed with one of the formats of `arch/x86/boot/compressed/Makefile`,
//! followed by its uncompressed size as 4 little-endian bytes (`size_append`; for gzip it
//! is also the gzip trailer's ISIZE). The format is told by its magic, as the kernel's
//! `scripts/extract-vmlinux` does. xz payloads use the x86 BCJ filter
//! (`scripts/xz_wrap.sh`), which liblzma decodes.
//!
//! The result is cached by the SHA-256 of the bzImage in the user's cache directory
//! ([`KernelCache`]), so the next launch of the same kernel reads it instead.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use linux_loader::loader::bootparam::setup_header;
use sha2::{Digest, Sha256};

/// Boot protocol 2.08 added `payload_offset` and `payload_length`.
const PROTO_PAYLOAD: u16 = 0x208;
/// Bytes of the uncompressed size appended to every payload.
const SIZE_TRAILER: usize = 4;
/// Largest kernel accepted (the x86_64 kernel image must fit in 1 GiB of virtual space).
const MAX_VMLINUX: usize = 1 << 30;
/// The lz4 legacy frame's magic, also found between concatenated frames.
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// An lz4 legacy block decompresses to at most 8 MiB.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
const ELF_MAGIC: &[u8] = b"\x7fELF";

/// The compression formats a bzImage payload may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Zstd,
    Lz4Legacy,
    Bzip2,
    Lzma,
    Lzo,
}

impl Compression {
    /// The format whose magic starts `data` (the kernel's `extract-vmlinux` list).
    pub fn detect(data: &[u8]) -> Option<Compression> {
        const MAGICS: [(&[u8], Compression); 7] = [
            (&[0x1f, 0x8b, 0x08], Compression::Gzip),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (&LZ4_LEGACY_MAGIC, Compression::Lz4Legacy),
            (b"BZh", Compression::Bzip2),
            (&[0x5d, 0x00, 0x00], Compression::Lzma),
            (&[0x89, b'L', b'Z', b'O', 0x00], Compression::Lzo),
        ];
        MAGICS
            .iter()
            .find(|(magic, _)| data.starts_with(magic))
            .map(|&(_, format)| format)
    }

    /// Whether Strait decompresses this format itself.
    pub fn on_host(self) -> bool {
        matches!(
            self,
            Compression::Gzip | Compression::Xz | Compression::Zstd | Compression::Lz4Legacy
        )
    }
}

/// Why a bzImage's payload cannot be decompressed on the host. None of these is fatal:
/// the guest then decompresses the kernel itself.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("boot protocol {version:#x} has no payload fields (2.08+ needed)")]
    NoPayloadFields { version: u16 },
    #[error("payload {start:#x}+{len:#x} lies outside the {file_len}-byte file")]
    PayloadOutside {
        start: usize,
        len: usize,
        file_len: usize,
    },
    #[error("payload compression not recognised (starts {magic:02x?})")]
    UnknownFormat { magic: Vec<u8> },
    #[error("{0:?} payloads are left to the guest")]
    NotOnHost(Compression),
    #[error("the payload says it decompresses to {size} bytes, over the {MAX_VMLINUX}-byte limit")]
    TooBig { size: usize },
    #[error("{format:?} payload is corrupt")]
    Decode {
        format: Compression,
        #[source]
        source: std::io::Error,
    },
    #[error("decompressed {got} bytes, the payload's trailer says {expected}")]
    SizeMismatch { expected: usize, got: usize },
    #[error("the decompressed payload is not an ELF vmlinux")]
    NotElf,
}

/// A bzImage's compressed kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload<'a> {
    pub format: Compression,
    /// The whole payload, size trailer included.
    pub data: &'a [u8],
    /// The uncompressed size from the trailer.
    pub size: usize,
}

/// Finds the payload of `bzimage`, whose setup header `hdr` has already been checked.
pub fn payload<'a>(bzimage: &'a [u8], hdr: &setup_header) -> Result<Payload<'a>, UnpackError> {
    if { hdr.version } < PROTO_PAYLOAD {
        return Err(UnpackError::NoPayloadFields {
            version: hdr.version,
        });
    }
    let sects = if hdr.setup_sects == 0 {
        4
    } else {
        usize::from(hdr.setup_sects)
    };
    let start = (sects + 1) * 512 + hdr.payload_offset as usize;
    let len = hdr.payload_length as usize;
    let outside = UnpackError::PayloadOutside {
        start,
        len,
        file_len: bzimage.len(),
    };
    let Some(data) = bzimage.get(start..start.saturating_add(len)) else {
        return Err(outside);
    };
    let Some(trailer) = data.len().checked_sub(SIZE_TRAILER).map(|at| &data[at..]) else {
        return Err(outside);
    };
    let size = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) as usize;
    let format = Compression::detect(data).ok_or_else(|| UnpackError::UnknownFormat {
        magic: data.iter().take(6).copied().collect(),
    })?;
    Ok(Payload { format, data, size })
}

/// Decompresses `payload` and checks that the result is an ELF of the announced size.
pub fn decompress(payload: &Payload) -> Result<Vec<u8>, UnpackError> {
    let format = payload.format;
    if payload.size > MAX_VMLINUX {
        return Err(UnpackError::TooBig { size: payload.size });
    }
    // Every decoder but gzip's would read the size trailer as the start of another frame;
    // gzip's stops at the end of its member (and older kernels append nothing more).
    let stream = &payload.data[..payload.data.len() - SIZE_TRAILER];
    let decode_err = |source| UnpackError::Decode { format, source };
    let out = match format {
        Compression::Gzip => read_all(flate2::read::GzDecoder::new(payload.data), payload.size),
        Compression::Xz => read_all(xz2::read::XzDecoder::new(stream), payload.size),
        Compression::Zstd => ruzstd::decoding::StreamingDecoder::new(stream)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            .and_then(|d| read_all(d, payload.size)),
        Compression::Lz4Legacy => lz4_legacy(stream, payload.size),
        Compression::Bzip2 | Compression::Lzma | Compression::Lzo => {
            return Err(UnpackError::NotOnHost(format))
        }
    }
    .map_err(decode_err)?;
    if out.len() != payload.size {
        return Err(UnpackError::SizeMismatch {
            expected: payload.size,
            got: out.len(),
        });
    }
    if !out.starts_with(ELF_MAGIC) {
        return Err(UnpackError::NotElf);
    }
    Ok(out)
}

/// Reads `reader` to its end, but never more than one byte past `size` (a size mismatch).
fn read_all(reader: impl Read, size: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(size);
    reader.take(size as u64 + 1).read_to_end(&mut out)?;
    Ok(out)
}

/// The lz4 legacy frame (`lz4 -l`): the magic, then blocks of a 4-byte little-endian
/// compressed length and raw lz4 data, each decompressing to at most 8 MiB. A repeated
/// magic starts a concatenated frame.
fn lz4_legacy(stream: &[u8], size: usize) -> std::io::Result<Vec<u8>> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut out = vec![0u8; size];
    let mut pos = 0;
    let mut rest = stream.strip_prefix(&LZ4_LEGACY_MAGIC[..]).unwrap_or(stream);
    while rest.len() >= 4 {
        let (len, tail) = rest.split_at(4);
        if len == LZ4_LEGACY_MAGIC {
            rest = tail;
            continue;
        }
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let block = tail
            .get(..len)
            .ok_or_else(|| invalid(format!("block of {len} bytes past the end")))?;
        let room = (size - pos).min(LZ4_LEGACY_BLOCK);
        let n = lz4_flex::block::decompress_into(block, &mut out[pos..pos + room])
            .map_err(|e| invalid(e.to_string()))?;
        pos += n;
        rest = &tail[len..];
    }
    if !rest.is_empty() {
        return Err(invalid(format!("{} stray bytes at the end", rest.len())));
    }
    out.truncate(pos);
    Ok(out)
}

/// Decompressed kernels kept by the SHA-256 of their bzImage, one file each:
/// `vmlinux-<sha256>.elf` in `$XDG_CACHE_HOME/strait` or `~/.cache/strait`.
#[derive(Debug, Clone)]
pub struct KernelCache {
    dir: PathBuf,
}

impl KernelCache {
    /// The cache directory of this user; `None` without `XDG_CACHE_HOME` or `HOME`.
    pub fn for_user() -> Option<KernelCache> {
        let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
        let base = std::env::var_os("XDG_CACHE_HOME")
            .and_then(absolute)
            .or_else(|| {
                std::env::var_os("HOME")
                    .and_then(absolute)
                    .map(|h| h.join(".cache"))
            })?;
        Some(KernelCache::at(base.join("strait")))
    }

    /// A cache in `dir` (created on the first store).
    pub fn at(dir: PathBuf) -> KernelCache {
        KernelCache { dir }
    }

    fn entry(&self, key: &str) -> PathBuf {
        self.dir.join(format!("vmlinux-{key}.elf"))
    }

    /// The cached kernel for `key` if it is whole: an ELF of `size` bytes. Anything else
    /// (missing, cut short by a crash, overwritten) is a miss, and the next store replaces it.
    pub fn load(&self, key: &str, size: usize) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.entry(key)).ok()?;
        if bytes.len() == size && bytes.starts_with(ELF_MAGIC) {
            return Some(bytes);
        }
        log::info!(
            "kernel cache: {} is damaged, rebuilding it",
            self.entry(key).display()
        );
        None
    }

    /// Stores `vmlinux` under `key` atomically: a temporary file renamed into place, so a
    /// reader never sees half an entry.
    pub fn store(&self, key: &str, vmlinux: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self
            .dir
            .join(format!(".vmlinux-{key}.{}.tmp", std::process::id()));
        let written =
            std::fs::write(&tmp, vmlinux).and_then(|()| std::fs::rename(&tmp, self.entry(key)));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

/// The cache key of a bzImage: the hex SHA-256 of its bytes.
pub fn cache_key(bzimage: &[u8]) -> String {
    Sha256::digest(bzimage)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What to boot for a bzImage, as far as the host can tell without decompressing.
#[derive(Debug)]
pub enum Lookup {
    /// The cache holds its vmlinux.
    Hit(Vec<u8>),
    /// Decompressing it here is possible: run the job.
    Miss(Job),
    /// Its format is not one Strait decompresses (logged): the guest decompresses it.
    Guest,
}

/// Looks `bzimage` (at `path`, header `hdr`) up in `cache`. Reads a cache entry (about
/// the size of the kernel) but decompresses nothing.
pub fn lookup(
    path: &Path,
    bzimage: &[u8],
    hdr: &setup_header,
    cache: Option<&KernelCache>,
) -> Lookup {
    let started = Instant::now();
    let payload = match payload(bzimage, hdr) {
        Ok(p) if p.format.on_host() => p,
        Ok(p) => return guest_decompresses(path, &UnpackError::NotOnHost(p.format)),
        Err(e) => return guest_decompresses(path, &e),
    };
    let key = cache.map(|_| cache_key(bzimage));
    if let Some((cache, key)) = cache.zip(key.as_deref()) {
        if let Some(vmlinux) = cache.load(key, payload.size) {
            log::info!(
                "kernel: {}: decompressed kernel from the cache ({} MiB) in {} ms",
                path.display(),
                vmlinux.len() >> 20,
                started.elapsed().as_millis()
            );
            return Lookup::Hit(vmlinux);
        }
    }
    Lookup::Miss(Job {
        path: path.to_path_buf(),
        format: payload.format,
        data: payload.data.to_vec(),
        size: payload.size,
        store: cache.cloned().zip(key),
    })
}

/// Decompressing one bzImage's payload and storing the result in the cache.
#[derive(Debug)]
pub struct Job {
    path: PathBuf,
    format: Compression,
    data: Vec<u8>,
    size: usize,
    store: Option<(KernelCache, String)>,
}

impl Job {
    /// Decompresses (logging the time taken) and stores the result in the cache. `None`
    /// leaves the decompression to the guest, with one line saying why.
    pub fn run(self) -> Option<Vec<u8>> {
        self.run_then(|_| ())
    }

    /// [`Job::run`] on a thread of its own at the lowest CPU priority, so a guest that
    /// boots meanwhile keeps the host's CPUs. The result arrives on the returned channel
    /// before it is stored in the cache.
    pub fn spawn(self) -> Receiver<Vec<u8>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("strait-unpack".into())
            .spawn(move || {
                lower_thread_priority();
                self.run_then(|vmlinux| {
                    // The receiver is gone when the guest booted the bzImage instead.
                    let _ = tx.send(vmlinux.to_vec());
                });
            });
        if let Err(e) = spawned {
            log::warn!("kernel: cannot start the decompression thread: {e}");
        }
        rx
    }

    fn run_then(self, deliver: impl FnOnce(&[u8])) -> Option<Vec<u8>> {
        let started = Instant::now();
        let payload = Payload {
            format: self.format,
            data: &self.data,
            size: self.size,
        };
        let vmlinux = match decompress(&payload) {
            Ok(v) => v,
            Err(e) => {
                guest_decompresses(&self.path, &e);
                return None;
            }
        };
        log::info!(
            "kernel: {}: decompressed on the host: {:?}, {} -> {} MiB in {} ms",
            self.path.display(),
            self.format,
            self.data.len() >> 20,
            vmlinux.len() >> 20,
            started.elapsed().as_millis()
        );
        deliver(&vmlinux);
        if let Some((cache, key)) = &self.store {
            if let Err(e) = cache.store(key, &vmlinux) {
                log::debug!("kernel cache: cannot store in {}: {e}", cache.dir.display());
            }
        }
        Some(vmlinux)
    }
}

/// Nice 19 for the calling thread (Linux applies `setpriority` to one thread by its id).
fn lower_thread_priority() {
    // SAFETY: gettid and setpriority take no pointers; failure only leaves the priority.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
}

fn guest_decompresses(path: &Path, why: &UnpackError) -> Lookup {
    log::info!(
        "kernel: {}: the guest decompresses it: {why}",
        path.display()
    );
    Lookup::Guest
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::ByteValued;

    /// A fake vmlinux: the ELF magic, then a pattern that compresses but not to nothing.
    fn vmlinux(len: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len)
            .map(|i| (i * 7 % 251) as u8 ^ (i >> 9) as u8)
            .collect();
        v[..4].copy_from_slice(ELF_MAGIC);
        v
    }

    fn with_trailer(mut stream: Vec<u8>, size: usize) -> Vec<u8> {
        stream.extend_from_slice(&(size as u32).to_le_bytes());
        stream
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// xz as the kernel's `xz_wrap.sh` makes it: x86 BCJ, then LZMA2, CRC32 check.
    fn xz_bcj(data: &[u8]) -> Vec<u8> {
        let mut filters = xz2::stream::Filters::new();
        filters.x86();
        filters.lzma2(&xz2::stream::LzmaOptions::new_preset(1).unwrap());
        let stream =
            xz2::stream::Stream::new_stream_encoder(&filters, xz2::stream::Check::Crc32).unwrap();
        let mut e = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    /// `lz4 -l`: the legacy magic, then length-prefixed blocks of at most 8 MiB.
    fn lz4_legacy_frame(data: &[u8]) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let block = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(block.len() as u32).to_le_bytes());
            out.extend_from_slice(&block);
        }
        out
    }

    fn payload_of(format: Compression, data: &[u8]) -> Vec<u8> {
        let stream = match format {
            Compression::Gzip => gzip(data),
            Compression::Xz => xz_bcj(data),
            Compression::Zstd => zstd(data),
            Compression::Lz4Legacy => lz4_legacy_frame(data),
            _ => panic!("no encoder for {format:?}"),
        };
        with_trailer(stream, data.len())
    }

    fn roundtrip(format: Compression, data: &[u8]) -> Result<Vec<u8>, UnpackError> {
        let bytes = payload_of(format, data);
        let p = Payload {
            format: Compression::detect(&bytes).unwrap(),
            data: &bytes,
            size: data.len(),
        };
        assert_eq!(p.format, format);
        decompress(&p)
    }

    /// A bzImage: setup header at 0x1f1 with `setup_sects` 4, then the payload at
    /// `payload_offset` 0x100 into the protected-mode part.
    fn bzimage(payload: &[u8]) -> (Vec<u8>, setup_header) {
        let hdr = setup_header {
            setup_sects: 4,
            header: 0x5372_6448,
            version: 0x20f,
            payload_offset: 0x100,
            payload_length: payload.len() as u32,
            init_size: 0x0300_0000,
            kernel_alignment: 0x0020_0000,
            cmdline_size: 2047,
            ..Default::default()
        };
        let mut bz = vec![0u8; 5 * 512 + 0x100];
        bz[0x1f1..0x1f1 + hdr.as_slice().len()].copy_from_slice(hdr.as_slice());
        bz.extend_from_slice(payload);
        (bz, hdr)
    }

    #[test]
    fn magics_are_told_apart() {
        let cases: [(&[u8], Compression); 7] = [
            (b"\x1f\x8b\x08\x00", Compression::Gzip),
            (b"\xfd7zXZ\x00\x00", Compression::Xz),
            (b"\x28\xb5\x2f\xfd\x00", Compression::Zstd),
            (b"\x02\x21\x4c\x18\x10", Compression::Lz4Legacy),
            (b"BZh91AY", Compression::Bzip2),
            (b"\x5d\x00\x00\x00\x04", Compression::Lzma),
            (b"\x89LZO\x00\r\n", Compression::Lzo),
        ];
        for (magic, format) in cases {
            assert_eq!(Compression::detect(magic), Some(format), "{magic:02x?}");
        }
    }

    #[test]
    fn unknown_magic_is_no_format() {
        assert_eq!(Compression::detect(b"\x7fELF\x02"), None);
        assert_eq!(Compression::detect(b""), None);
    }

    #[test]
    fn only_four_formats_are_decompressed_here() {
        let host: Vec<_> = [
            Compression::Gzip,
            Compression::Xz,
            Compression::Zstd,
            Compression::Lz4Legacy,
            Compression::Bzip2,
            Compression::Lzma,
            Compression::Lzo,
        ]
        .into_iter()
        .filter(|f| f.on_host())
        .collect();
        assert_eq!(host.len(), 4);
    }

    #[test]
    fn gzip_payload_decompresses() {
        let data = vmlinux(100_000);
        assert_eq!(roundtrip(Compression::Gzip, &data).unwrap(), data);
    }

    #[test]
    fn xz_payload_with_x86_bcj_filter_decompresses() {
        let data = vmlinux(100_000);
        assert_eq!(roundtrip(Compression::Xz, &data).unwrap(), data);
    }

    #[test]
    fn zstd_payload_decompresses() {
        let data = vmlinux(100_000);
        assert_eq!(roundtrip(Compression::Zstd, &data).unwrap(), data);
    }

    #[test]
    fn lz4_legacy_payload_decompresses() {
        let data = vmlinux(100_000);
        assert_eq!(roundtrip(Compression::Lz4Legacy, &data).unwrap(), data);
    }

    #[test]
    fn lz4_legacy_spans_several_blocks() {
        let data = vmlinux(LZ4_LEGACY_BLOCK + 1000);
        assert_eq!(roundtrip(Compression::Lz4Legacy, &data).unwrap(), data);
    }

    #[test]
    fn gzip_without_appended_size_decompresses() {
        // Older kernels appended nothing: the gzip trailer's ISIZE is the last word.
        let data = vmlinux(5000);
        let bytes = gzip(&data);
        let p = Payload {
            format: Compression::Gzip,
            data: &bytes,
            size: data.len(),
        };
        assert_eq!(decompress(&p).unwrap(), data);
    }

    #[test]
    fn wrong_size_trailer_is_a_mismatch() {
        let data = vmlinux(5000);
        let bytes = payload_of(Compression::Zstd, &data);
        let p = Payload {
            format: Compression::Zstd,
            data: &bytes,
            size: 4000,
        };
        assert!(matches!(
            decompress(&p),
            Err(UnpackError::SizeMismatch {
                expected: 4000,
                got: 4001
            })
        ));
    }

    #[test]
    fn non_elf_content_is_rejected() {
        let data = vec![0u8; 5000];
        assert!(matches!(
            roundtrip(Compression::Gzip, &data),
            Err(UnpackError::NotElf)
        ));
    }

    #[test]
    fn corrupt_stream_is_a_decode_error() {
        let data = vmlinux(5000);
        let mut bytes = payload_of(Compression::Xz, &data);
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        let p = Payload {
            format: Compression::Xz,
            data: &bytes,
            size: data.len(),
        };
        assert!(matches!(
            decompress(&p),
            Err(UnpackError::Decode {
                format: Compression::Xz,
                ..
            })
        ));
    }

    #[test]
    fn payload_is_found_through_the_setup_header() {
        let bytes = payload_of(Compression::Gzip, &vmlinux(3000));
        let (bz, hdr) = bzimage(&bytes);
        let p = payload(&bz, &hdr).unwrap();
        assert_eq!(
            (p.format, p.data, p.size),
            (Compression::Gzip, &bytes[..], 3000)
        );
    }

    #[test]
    fn payload_past_the_file_end_is_rejected() {
        let (mut bz, hdr) = bzimage(&payload_of(Compression::Gzip, &vmlinux(3000)));
        bz.truncate(bz.len() - 1);
        assert!(matches!(
            payload(&bz, &hdr),
            Err(UnpackError::PayloadOutside { .. })
        ));
    }

    #[test]
    fn old_protocol_has_no_payload() {
        let (bz, mut hdr) = bzimage(&payload_of(Compression::Gzip, &vmlinux(3000)));
        hdr.version = 0x207;
        assert!(matches!(
            payload(&bz, &hdr),
            Err(UnpackError::NoPayloadFields { version: 0x207 })
        ));
    }

    #[test]
    fn unknown_payload_is_left_to_the_guest() {
        let (bz, hdr) = bzimage(b"\x00\x01\x02\x03\x04\x05\x06\x07");
        assert!(matches!(
            payload(&bz, &hdr),
            Err(UnpackError::UnknownFormat { .. })
        ));
        assert_eq!(vmlinux_of(Path::new("/k"), &bz, &hdr, None), None);
    }

    /// Looks up and, on a miss, decompresses in this thread.
    fn vmlinux_of(
        path: &Path,
        bz: &[u8],
        hdr: &setup_header,
        cache: Option<&KernelCache>,
    ) -> Option<Vec<u8>> {
        match lookup(path, bz, hdr, cache) {
            Lookup::Hit(v) => Some(v),
            Lookup::Miss(job) => job.run(),
            Lookup::Guest => None,
        }
    }

    #[test]
    fn spawned_job_delivers_the_kernel_and_fills_the_cache() {
        let cache = temp_cache("spawn");
        let data = vmlinux(20_000);
        let (bz, hdr) = bzimage(&payload_of(Compression::Lz4Legacy, &data));
        let Lookup::Miss(job) = lookup(Path::new("/k"), &bz, &hdr, Some(&cache)) else {
            panic!("an empty cache must miss");
        };
        let got = job.spawn().recv().unwrap();
        let mut cached = None;
        for _ in 0..100 {
            cached = cache.load(&cache_key(&bz), data.len());
            if cached.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::remove_dir_all(&cache.dir).unwrap();
        assert_eq!(got, data);
        assert_eq!(cached, Some(data));
    }

    fn temp_cache(tag: &str) -> KernelCache {
        let dir = std::env::temp_dir().join(format!("strait-kcache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        KernelCache::at(dir)
    }

    #[test]
    fn first_launch_stores_and_second_reads_the_cache() {
        let cache = temp_cache("hit");
        let data = vmlinux(20_000);
        let (bz, hdr) = bzimage(&payload_of(Compression::Xz, &data));
        let first = vmlinux_of(Path::new("/k"), &bz, &hdr, Some(&cache));
        assert_eq!(first.as_deref(), Some(&data[..]));
        let key = cache_key(&bz);
        assert_eq!(cache.load(&key, data.len()).as_deref(), Some(&data[..]));
        // The cache is read, not the payload: a marked entry comes back as it is.
        let mut marked = data.clone();
        marked[100] ^= 1;
        cache.store(&key, &marked).unwrap();
        let second = vmlinux_of(Path::new("/k"), &bz, &hdr, Some(&cache));
        std::fs::remove_dir_all(&cache.dir).unwrap();
        assert_eq!(second, Some(marked));
    }

    #[test]
    fn corrupt_cache_entry_is_rebuilt() {
        let cache = temp_cache("corrupt");
        let data = vmlinux(20_000);
        let (bz, hdr) = bzimage(&payload_of(Compression::Zstd, &data));
        let key = cache_key(&bz);
        cache.store(&key, &data[..data.len() / 2]).unwrap();
        let got = vmlinux_of(Path::new("/k"), &bz, &hdr, Some(&cache));
        let stored = std::fs::read(cache.entry(&key)).unwrap();
        std::fs::remove_dir_all(&cache.dir).unwrap();
        assert_eq!(got.as_deref(), Some(&data[..]));
        assert_eq!(stored, data);
    }

    #[test]
    fn cache_entry_without_elf_magic_is_a_miss() {
        let cache = temp_cache("magic");
        cache.store("k", &[0u8; 64]).unwrap();
        let hit = cache.load("k", 64);
        std::fs::remove_dir_all(&cache.dir).unwrap();
        assert_eq!(hit, None);
    }

    #[test]
    fn unwritable_cache_still_decompresses() {
        let cache = KernelCache::at("/proc/strait-no-such-dir".into());
        let data = vmlinux(3000);
        let (bz, hdr) = bzimage(&payload_of(Compression::Gzip, &data));
        assert_eq!(
            vmlinux_of(Path::new("/k"), &bz, &hdr, Some(&cache)),
            Some(data)
        );
    }

    #[test]
    fn cache_key_is_the_sha256() {
        assert_eq!(
            cache_key(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
