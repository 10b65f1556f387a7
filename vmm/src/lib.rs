//! Strait's VMM: the VM spec, the command line, guest RAM, kernel loading, the boot
//! recipe, vCPU threads and their exit handling, and the legacy device wiring.
//!
//! Module map, in boot order: [`spec`] (the JSON document) -> [`host`] (does the host
//! have what it names) -> [`builder::build_vm`] ([`memory`], [`boot`] with [`unpack`],
//! [`device_manager`], [`vcpu`]) -> [`vm::Vm::wait`] ([`exits`] decides each vCPU exit). [`error`] maps every
//! failure to an exit code; [`logger`] writes stderr and the boot timeline.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod attach;
pub mod bar_rules;
pub mod bars;
pub mod boot;
pub mod builder;
pub mod cli;
pub mod device_manager;
pub mod error;
pub mod exits;
pub mod host;
pub mod interrupts;
pub mod logger;
pub mod memory;
pub mod passthrough;
pub mod spec;
pub mod unpack;
pub mod vcpu;
pub mod vm;
