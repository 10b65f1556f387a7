//! The nvme scenario with Strait as L1's VMM. Ignored until Strait boots
//! guests; run it with `cargo build --release -p vmm` then
//! `cargo test -p testbed --test strait -- --ignored`.

use testbed::{scenario, Testbed, TestbedOptions, Vmm};

#[test]
#[ignore = "Strait does not boot guests yet"]
fn strait_passes_nvme_through_to_l2() {
    let opts = TestbedOptions {
        vmm: Vmm::Strait {
            binary: testbed::default_strait_binary(),
        },
        ..Default::default()
    };
    let outcome = match Testbed::new(opts).and_then(|t| t.run(&scenario::nvme())) {
        Ok(outcome) => outcome,
        Err(e) => panic!("the nested testbed could not run scenario nvme with strait: {e}"),
    };
    eprintln!("{}", outcome.summary());
    if let Err(failure) = outcome.verify() {
        panic!("{failure}");
    }
}
