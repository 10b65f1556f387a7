//! Strait's VMM: the VM spec, the command line, guest RAM, kernel loading, the boot
//! recipe, vCPU threads and their exit handling, and the legacy device wiring.
//!
//! Module map, in boot order: [`spec`] (the JSON document) -> [`host`] (does the host
//! have what it names) -> [`builder::build_vm`] ([`memory`], [`boot`] with [`unpack`],
//! [`device_manager`], [`vcpu`]) -> [`vm::Vm::wait`] ([`exits`] decides each vCPU exit).
//! [`error`] maps every failure to an exit code; [`logger`] writes stderr and the boot
//! timeline; [`files`] opens the files a spec names without blocking. [`check`] is
//! `strait check`, the host preflight that needs no spec. [`sandbox`] is what each thread gives up once the
//! guest runs (seccomp, capabilities, Landlock, `--user`).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod boot;
pub mod builder;
pub mod check;
pub mod cli;
pub mod device_manager;
pub mod error;
pub mod exits;
pub mod files;
pub mod host;
pub mod interrupts;
pub mod io_buses;
pub mod io_thread;
pub mod logger;
pub mod memory;
pub mod numa;
pub mod passthrough;
pub mod pci_layout;
pub mod plan;
pub mod preopened;
pub mod sandbox;
pub mod slots;
pub mod spec;
pub mod stop;
pub mod terminal;
pub mod unpack;
pub mod vcpu;
pub mod virtio;
pub mod vm;
