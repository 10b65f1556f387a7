//! Host-side checks of Strait's own tools, run in L1 before the VMM: `strait check` on
//! the scenario's devices and `strait plan` on its spec. Their outputs land in the work
//! directory (`check.json`, `plan.json`, with `.rc` exit statuses); these checks hold
//! them against what the testbed knows: which device is which, and where L2 and
//! `strait run` put every BAR.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::device::Device;
use crate::outcome::CheckResult;

/// Output file of `strait check --json` in the work directory.
pub const CHECK_OUTPUT: &str = "check.json";
/// Output file of `strait plan --json` in the work directory.
pub const PLAN_OUTPUT: &str = "plan.json";

/// The commands L1 runs before the VMM, for `strait` at `binary` and `spec`.
pub fn commands(binary: &str, devices: usize, spec: &str) -> Vec<(String, Vec<String>)> {
    let mut check = vec![binary.to_string(), "check".into(), "--json".into()];
    check.extend((0..devices).map(crate::vmm::device_placeholder));
    let plan = vec![
        binary.to_string(),
        "plan".into(),
        "--json".into(),
        spec.to_string(),
    ];
    vec![(CHECK_OUTPUT.into(), check), (PLAN_OUTPUT.into(), plan)]
}

fn read(work_dir: &Path, name: &str) -> Result<String, String> {
    fs::read_to_string(work_dir.join(name)).map_err(|e| format!("no {name}: {e}"))
}

fn json(work_dir: &Path, name: &str) -> Result<Value, String> {
    let text = read(work_dir, name)?;
    let err = read(work_dir, &format!("{name}.err")).unwrap_or_default();
    serde_json::from_str(&text).map_err(|e| format!("{name} is not JSON ({e}); stderr: {err}"))
}

/// The L1 addresses of the scenario's devices, in scenario order.
fn l1_addresses(work_dir: &Path, devices: &[Device]) -> Result<Vec<(Device, String)>, String> {
    let text = read(work_dir, "devices")?;
    let addrs: Vec<String> = text.split_whitespace().map(String::from).collect();
    if addrs.len() != devices.len() {
        return Err(format!("devices file lists {addrs:?}"));
    }
    Ok(devices.iter().copied().zip(addrs).collect())
}

/// The status `check` gave rule `rule` on `subject`.
fn status<'a>(doc: &'a Value, rule: &str, subject: Option<&str>) -> Option<&'a str> {
    doc["findings"].as_array()?.iter().find_map(|f| {
        let same_subject = subject.is_none_or(|s| f["subject"].as_str() == Some(s));
        (f["check"] == rule && same_subject).then(|| f["status"].as_str())?
    })
}

/// `strait check` in L1: the IOMMU on, every group viable, nvme resets by FLR, bochs and
/// ivshmem have no reset method (WARN), and the exit code 1 that WARN gives.
pub fn check_report(work_dir: &Path, devices: &[Device]) -> Result<String, String> {
    let doc = json(work_dir, CHECK_OUTPUT)?;
    let rc = read(work_dir, &format!("{CHECK_OUTPUT}.rc"))?;
    let mut wrong = Vec::new();
    let mut want = |what: String, got: Option<&str>, expected: &str| {
        if got != Some(expected) {
            wrong.push(format!("{what}: {got:?}, want {expected}"));
        }
    };
    want(
        "iommu units".into(),
        status(&doc, "iommu units", None),
        "ok",
    );
    for (device, addr) in l1_addresses(work_dir, devices)? {
        let group = status(&doc, "iommu group", Some(&addr));
        want(format!("{addr} iommu group"), group, "ok");
        let reset = if device == Device::Nvme { "ok" } else { "warn" };
        want(
            format!("{addr} ({}) reset", device.name()),
            status(&doc, "reset", Some(&addr)),
            reset,
        );
    }
    if rc.trim() != "1" {
        wrong.push(format!("exit status {}, want 1", rc.trim()));
    }
    if !wrong.is_empty() {
        let fails: Vec<String> = doc["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["status"] != "ok")
            .map(|f| format!("{} {} {}", f["status"], f["subject"], f["check"]))
            .collect();
        return Err(format!(
            "{}; non-OK findings: {}",
            wrong.join("; "),
            fails.join(", ")
        ));
    }
    Ok(format!(
        "exit 1, {} OK / {} WARN / {} FAIL; IOMMU on, groups viable, nvme FLR, others no reset (WARN)",
        doc["ok"], doc["warn"], doc["fail"]
    ))
}

fn hex(v: &Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.trim_start_matches("0x"), 16).ok()
}

/// `TESTBED-PCI <bdf> <id> <index>:<start>-<end> ...` lines of L2's console:
/// (bdf, resource index) -> start.
fn guest_bars(console: &str) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for line in console.lines() {
        let Some(rest) = line.split("TESTBED-PCI ").nth(1) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(bdf), Some(_id)) = (words.next(), words.next()) else {
            continue;
        };
        for r in words {
            let Some((index, range)) = r.split_once(':') else {
                continue;
            };
            let start = range.split('-').next().unwrap_or("");
            if let (Ok(i), Ok(s)) = (
                index.parse::<u64>(),
                u64::from_str_radix(start.trim_start_matches("0x"), 16),
            ) {
                out.push((bdf.to_string(), i, s));
            }
        }
    }
    out
}

/// `strait plan` in L1 against the guest: every BAR the plan places is where L2 found
/// it, and the 64-bit window is the one `strait run` logged.
pub fn plan_matches(work_dir: &Path) -> Result<String, String> {
    let doc = json(work_dir, PLAN_OUTPUT)?;
    let console = read(work_dir, "l2-console.log")?;
    let guest = guest_bars(&console);
    let mut compared = 0;
    let mut wrong = Vec::new();
    for port in doc["root_ports"].as_array().into_iter().flatten() {
        for bar in port["bars"].as_array().into_iter().flatten() {
            let (Some(f), Some(i), Some(addr)) = (
                bar["function"].as_str(),
                bar["index"].as_u64(),
                hex(&bar["address"]),
            ) else {
                wrong.push(format!("malformed BAR {bar}"));
                continue;
            };
            let seen = guest
                .iter()
                .find(|(b, j, _)| b == f && *j == i)
                .map(|g| g.2);
            compared += 1;
            if seen != Some(addr) {
                wrong.push(format!("{f} BAR{i}: plan {addr:#x}, guest {seen:x?}"));
            }
        }
    }
    let window = (hex(&doc["mmio64"][0]), hex(&doc["mmio64"][1]));
    let logged = console
        .lines()
        .find_map(|l| l.split("64-bit PCI window ").nth(1))
        .and_then(|w| w.split_whitespace().next())
        .and_then(|w| w.split_once('+'))
        .map(|(a, s)| {
            let h = |x: &str| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok();
            (h(a), h(s))
        });
    if logged != Some(window) {
        wrong.push(format!(
            "64-bit window: plan {window:x?}, run logged {logged:x?}"
        ));
    }
    if compared == 0 {
        wrong.push("the plan places no BAR".into());
    }
    if wrong.is_empty() {
        Ok(format!(
            "{compared} BARs where L2 sees them; 64-bit window as run logged"
        ))
    } else {
        Err(wrong.join("; "))
    }
}

/// A check result from one of the functions above.
pub fn result(name: &str, r: Result<String, String>) -> CheckResult {
    let (passed, detail) = match r {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    CheckResult {
        name: name.to_string(),
        passed,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_bars_are_read_from_testbed_pci_lines() {
        let console = "x TESTBED-PCI 0000:03:00.0 0x1af4:0x1110 0:0x00000000c1200000-0x00000000c12000ff 2:0x0000000200000000-0x00000003ffffffff \n";
        assert_eq!(
            guest_bars(console),
            [
                ("0000:03:00.0".into(), 0, 0xc120_0000),
                ("0000:03:00.0".into(), 2, 0x2_0000_0000)
            ]
        );
    }

    #[test]
    fn check_commands_name_every_device_placeholder() {
        let cmds = commands("/s", 2, "/w/spec.json");
        assert_eq!(cmds[0].0, CHECK_OUTPUT);
        assert_eq!(cmds[0].1, ["/s", "check", "--json", "@DEV0@", "@DEV1@"]);
        assert_eq!(cmds[1].1, ["/s", "plan", "--json", "/w/spec.json"]);
    }
}
