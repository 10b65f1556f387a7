//! The VM spec parser and its checks: any text gives a spec or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(spec) = vmm::spec::VmSpec::parse(text) {
            let _ = spec.validate();
            let _ = spec.passthrough_addresses();
            let _ = spec.memory_bytes();
        }
    }
});
