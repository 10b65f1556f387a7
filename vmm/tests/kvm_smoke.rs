//! End-to-end runs of the `strait` binary on this machine's /dev/kvm with tiny hand-built
//! guests (no Linux kernel needed): a 64-bit ELF whose entry code prints on COM1 and then
//! powers off or resets through the ACPI registers. They exercise the whole pipeline:
//! spec, RAM, ELF loading, boot registers, the vCPU loop, port I/O, the stop path.
//!
//! They need a /dev/kvm that runs guests, so they are `#[ignore]`d (reported as ignored,
//! never as a silent pass). Run them with
//! `cargo test -p vmm --test kvm_smoke -- --ignored`. Linux guests are booted by the
//! nested testbed (`integration/`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Guest physical load address and entry of the test kernel (above HIMEM).
const LOAD_ADDR: u64 = 0x100_0000;
const TIMEOUT: Duration = Duration::from_secs(30);

/// `mov dx, port; mov al, value; out dx, al` in 64-bit mode.
fn outb(port: u16, value: u8) -> Vec<u8> {
    let [lo, hi] = port.to_le_bytes();
    vec![0x66, 0xba, lo, hi, 0xb0, value, 0xee]
}

/// Entry code: print `text` on COM1, write `(port, value)`, then halt forever.
fn guest_code(text: &str, port: u16, value: u8) -> Vec<u8> {
    let mut code: Vec<u8> = text.bytes().flat_map(|b| outb(0x3f8, b)).collect();
    code.extend(outb(port, value));
    code.extend([0xf4, 0xeb, 0xfd]); // hlt; jmp back to hlt
    code
}

/// A minimal ELF64 executable: one PT_LOAD segment holding `code` at LOAD_ADDR.
fn elf_image(code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let offset = (EHDR + PHDR) as u64;
    let mut v = Vec::new();
    v.extend([0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    v.extend(2u16.to_le_bytes()); // e_type: EXEC
    v.extend(62u16.to_le_bytes()); // e_machine: x86-64
    v.extend(1u32.to_le_bytes()); // e_version
    v.extend(LOAD_ADDR.to_le_bytes()); // e_entry
    v.extend((EHDR as u64).to_le_bytes()); // e_phoff
    v.extend(0u64.to_le_bytes()); // e_shoff
    v.extend(0u32.to_le_bytes()); // e_flags
    v.extend(
        [EHDR as u16, PHDR as u16, 1, 64, 0, 0]
            .iter()
            .flat_map(|h| h.to_le_bytes()),
    );
    v.extend(1u32.to_le_bytes()); // p_type: LOAD
    v.extend(5u32.to_le_bytes()); // p_flags: R+X
    v.extend(offset.to_le_bytes()); // p_offset
    v.extend(LOAD_ADDR.to_le_bytes()); // p_vaddr
    v.extend(LOAD_ADDR.to_le_bytes()); // p_paddr
    v.extend((code.len() as u64).to_le_bytes()); // p_filesz
    v.extend((code.len() as u64).to_le_bytes()); // p_memsz
    v.extend(0x1000u64.to_le_bytes()); // p_align
    v.extend(code);
    v
}

fn work_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strait-kvm-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run `strait run` on a spec booting `code`; kill it after TIMEOUT.
fn run_guest(name: &str, code: &[u8], vcpus: u32) -> Output {
    let spec = format!(
        r#"{{"vcpus": {vcpus}, "memory": {{"size_mib": 64}}, "kernel": {{"path": "kernel.elf"}}}}"#
    );
    run_spec(name, code, &spec).0
}

/// Run `spec` (kernel at `kernel.elf`, relative) in a fresh directory; returns the
/// output and what the guest wrote to `console.log` there, if anything.
fn run_spec(name: &str, code: &[u8], spec: &str) -> (Output, String) {
    let dir = work_dir(name);
    std::fs::write(dir.join("kernel.elf"), elf_image(code)).unwrap();
    std::fs::write(dir.join("vm.json"), spec).unwrap();
    let out = spawn_with_timeout(&dir.join("vm.json"));
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    (out, console)
}

fn spawn_with_timeout(spec: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(["-v", "run"])
        .arg(spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > TIMEOUT {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "strait did not exit within {TIMEOUT:?}\nstdout tail: {}\nstderr tail: {}",
                tail(&out.stdout),
                tail(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn assert_exit(out: &Output, stdout: &str, log_line: &str) {
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "stdout: {so}\nstderr: {se}");
    assert_eq!(so, stdout, "stderr: {se}");
    assert!(se.contains(log_line), "stderr: {se}");
    assert!(se.contains("timeline: guest_exit="), "stderr: {se}");
}

#[test]
fn elf_image_is_accepted_by_the_probe() {
    let image = elf_image(&guest_code("x", 0x600, 0x34));
    let probe = vmm::boot::probe_kernel(&image, image.len() as u64).unwrap();
    assert_eq!(probe.format, vmm::boot::KernelFormat::Elf);
}

#[test]
#[ignore = "needs a /dev/kvm that runs guests: cargo test -p vmm --test kvm_smoke -- --ignored"]
fn guest_prints_and_powers_off() {
    let out = run_guest("poweroff", &guest_code("OK\n", 0x600, 0x34), 1);
    assert_exit(&out, "OK\n", "strait: guest powered off");
}

#[test]
#[ignore = "needs a /dev/kvm that runs guests: cargo test -p vmm --test kvm_smoke -- --ignored"]
fn guest_reset_register_reboots() {
    let out = run_guest("reset", &guest_code("R\n", 0x602, 0x01), 2);
    assert_exit(&out, "R\n", "strait: guest requested reboot");
}

#[test]
#[ignore = "needs a /dev/kvm that runs guests: cargo test -p vmm --test kvm_smoke -- --ignored"]
fn guest_i8042_reset_reboots() {
    let out = run_guest("i8042", &guest_code("", 0x64, 0xfe), 1);
    assert_exit(&out, "", "strait: guest requested reboot");
}

#[test]
#[ignore = "needs a /dev/kvm that runs guests: cargo test -p vmm --test kvm_smoke -- --ignored"]
fn ram_above_4g_and_file_console() {
    // 4.5 GiB: 3 GiB below the PCI hole, 1.5 GiB from 4 GiB (two KVM slots), lazily
    // backed so the test needs no real memory.
    let spec = r#"{"vcpus": 1,
        "memory": {"size_mib": 4608, "prefault": false},
        "kernel": {"path": "kernel.elf"},
        "serial": {"file": "console.log"}}"#;
    let (out, console) = run_spec("high", &guest_code("F\n", 0x600, 0x34), spec);
    assert_exit(&out, "", "strait: guest powered off");
    assert_eq!(console, "F\n");
}
