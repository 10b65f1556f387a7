//! bzImage setup header and ELF header probing: any bytes give a probe or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (len, head) = match data.split_first_chunk::<8>() {
        Some((l, rest)) => (u64::from_le_bytes(*l), rest),
        None => (data.len() as u64, data),
    };
    let _ = vmm::boot::probe_kernel(head, len);
    let _ = vmm::boot::probe_kernel(head, head.len() as u64);
});
