//! The testbed's baseline: QEMU in L1 passes L0's emulated NVMe controller
//! through a PCIe root port to L2, whose stock nvme driver binds, round-trips
//! a random pattern and takes MSI-X interrupts. If this fails, the testbed
//! (not a VMM under development) is broken. Missing prerequisites that cannot
//! be installed fail the test with the reason; nothing here passes silently.
//!
//! `TESTBED_BREAK=1 cargo test -p testbed --test baseline` forces a check to
//! fail, to see the failure report with the console tails.

use testbed::{scenario, Outcome, Testbed, TestbedOptions};

fn run_baseline() -> Outcome {
    let testbed = match Testbed::new(TestbedOptions::default()) {
        Ok(testbed) => testbed,
        Err(e) => panic!("the nested testbed cannot run here: {e}"),
    };
    match testbed.run(&scenario::nvme()) {
        Ok(outcome) => outcome,
        Err(e) => panic!("the nested testbed could not run scenario nvme: {e}"),
    }
}

#[test]
fn qemu_passes_nvme_through_to_l2() {
    let outcome = run_baseline();
    eprintln!("{}", outcome.summary());
    for name in ["nvme-bound", "nvme-pattern", "nvme-msix"] {
        assert!(
            outcome.passed(name),
            "check {name} did not pass\n{}",
            outcome.report()
        );
    }
    assert_eq!(
        outcome.vmm_exit,
        Some(0),
        "QEMU in L1 did not exit cleanly\n{}",
        outcome.report()
    );
    if let Err(failure) = outcome.verify() {
        panic!("{failure}");
    }
}
