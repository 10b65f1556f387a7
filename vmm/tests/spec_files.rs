//! The shipped spec files: every example in `examples/` loads and validates, and the JSON
//! Schema in `spec.schema.json` describes the same fields, defaults and enums as the
//! serde structs in `src/spec.rs` (so editors and users see what Strait accepts).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use serde_json::Value;
use vmm::spec::{HugePages, OnReboot, SerialSpec, VmSpec};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(crate_dir().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

fn schema() -> Value {
    let text = std::fs::read_to_string(crate_dir().join("spec.schema.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn there_are_examples() {
    assert!(examples().len() >= 3, "{:?}", examples());
}

#[test]
fn every_example_loads_and_validates() {
    for path in examples() {
        let spec = VmSpec::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            spec.kernel.path.is_absolute(),
            "{}: paths resolved",
            path.display()
        );
    }
}

#[test]
fn hugepage_example_matches_the_brief() {
    let spec = VmSpec::load(&crate_dir().join("examples/boot-2m-hugepages.json")).unwrap();
    assert_eq!((spec.vcpus, spec.memory.size_mib), (2, 512));
    assert_eq!(spec.memory.hugepages, HugePages::Size2M);
    assert_eq!(spec.serial, SerialSpec::Stdio);
}

#[test]
fn root_disk_example_has_a_direct_disk_next_to_the_spec() {
    let dir = crate_dir().join("examples");
    let spec = VmSpec::load(&dir.join("root-disk.json")).unwrap();
    assert_eq!(spec.disks.len(), 1);
    assert_eq!(spec.disks[0].path, dir.join("root.img"));
    assert!(spec.disks[0].direct && !spec.disks[0].readonly);
}

#[test]
fn net_example_has_a_named_tap_and_a_mac() {
    let spec = VmSpec::load(&crate_dir().join("examples/net-tap.json")).unwrap();
    assert_eq!(spec.net.len(), 1);
    assert_eq!(spec.net[0].tap.as_deref(), Some("tap0"));
    assert_eq!(
        spec.net[0].mac_or_default().to_string(),
        "52:54:00:12:34:56"
    );
    assert!(spec.net[0].vhost);
}

/// Check every key of `value` is a property of `schema` (recursively), and every object
/// schema forbids additional properties, like `deny_unknown_fields`.
fn assert_described(schema: &Value, value: &Value, at: &str) {
    match value {
        Value::Object(map) => {
            let obj = object_schema(schema).unwrap_or_else(|| panic!("{at}: no object schema"));
            assert_eq!(obj["additionalProperties"], Value::Bool(false), "{at}");
            for (k, v) in map {
                let sub = &obj["properties"][k];
                assert!(!sub.is_null(), "{at}.{k} missing from the schema");
                assert_described(sub, v, &format!("{at}.{k}"));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                assert_described(&schema["items"], v, &format!("{at}[{i}]"));
            }
        }
        _ => {}
    }
}

/// The object alternative of a schema (itself, or one of its `oneOf` branches).
fn object_schema(schema: &Value) -> Option<&Value> {
    if schema.get("properties").is_some() {
        return Some(schema);
    }
    schema["oneOf"]
        .as_array()?
        .iter()
        .find(|s| s.get("properties").is_some())
}

#[test]
fn schema_describes_every_field_of_every_example() {
    let schema = schema();
    for path in examples() {
        let spec = VmSpec::load(&path).unwrap();
        let value = serde_json::to_value(&spec).unwrap();
        assert_described(&schema, &value, &path.display().to_string());
    }
}

#[test]
fn schema_enums_match_serde_names() {
    let schema = schema();
    let hp: Vec<Value> = [HugePages::None, HugePages::Size2M, HugePages::Size1G]
        .iter()
        .map(|h| serde_json::to_value(h).unwrap())
        .collect();
    assert_eq!(
        schema["properties"]["memory"]["properties"]["hugepages"]["enum"],
        Value::Array(hp)
    );
    let serial = &schema["properties"]["serial"]["oneOf"][0]["enum"];
    let names = [SerialSpec::Stdio, SerialSpec::Off].map(|s| serde_json::to_value(s).unwrap());
    assert_eq!(serial, &Value::Array(names.to_vec()));
}

#[test]
fn managed_example_sets_lifecycle_and_api_socket() {
    let spec = VmSpec::load(&crate_dir().join("examples/managed.json")).unwrap();
    assert_eq!(spec.lifecycle.shutdown_timeout_s, 60);
    assert_eq!(spec.lifecycle.on_reboot, OnReboot::Restart);
    assert!(spec.api_socket.unwrap().is_absolute());
}

#[test]
fn schema_lifecycle_matches_serde() {
    let schema = schema();
    let lc = &schema["properties"]["lifecycle"]["properties"];
    let names = [OnReboot::Restart, OnReboot::Exit].map(|o| serde_json::to_value(o).unwrap());
    assert_eq!(lc["on_reboot"]["enum"], Value::Array(names.to_vec()));
    assert_eq!(
        lc["on_reboot"]["default"],
        serde_json::to_value(OnReboot::default()).unwrap()
    );
    let t = &lc["shutdown_timeout_s"];
    assert_eq!(
        t["default"],
        Value::from(vmm::spec::DEFAULT_SHUTDOWN_TIMEOUT_S)
    );
    assert_eq!(t["maximum"], Value::from(vmm::spec::MAX_SHUTDOWN_TIMEOUT_S));
}

#[test]
fn schema_required_fields_are_the_ones_without_defaults() {
    let schema = schema();
    assert_eq!(
        schema["required"],
        serde_json::json!(["vcpus", "memory", "kernel"])
    );
    // Dropping any required field must fail to parse.
    let full = serde_json::json!({"vcpus": 1, "memory": {"size_mib": 64}, "kernel": {"path": "k"}});
    VmSpec::parse(&full.to_string()).unwrap();
    for field in ["vcpus", "memory", "kernel"] {
        let mut v = full.clone();
        v.as_object_mut().unwrap().remove(field);
        assert!(
            VmSpec::parse(&v.to_string()).is_err(),
            "{field} should be required"
        );
    }
}

#[test]
fn schema_limits_match_validation() {
    let schema = schema();
    let vcpus = &schema["properties"]["vcpus"];
    assert_eq!(vcpus["maximum"], Value::from(vmm::spec::MAX_VCPUS));
    let size = &schema["properties"]["memory"]["properties"]["size_mib"];
    assert_eq!(size["minimum"], Value::from(vmm::spec::MIN_MEMORY_MIB));
    assert_eq!(size["maximum"], Value::from(vmm::spec::MAX_MEMORY_MIB));
    assert_eq!(
        schema["properties"]["kernel"]["properties"]["cmdline"]["default"],
        Value::from(vmm::spec::DEFAULT_CMDLINE)
    );
}

#[test]
fn readme_examples_are_valid_specs() {
    let readme = std::fs::read_to_string(crate_dir().join("../README.md")).unwrap();
    let blocks: Vec<&str> = readme
        .split("```json\n")
        .skip(1)
        .map(|rest| &rest[..rest.find("```").unwrap()])
        .collect();
    assert!(
        !blocks.is_empty(),
        "the top-level README has no json example"
    );
    for block in blocks {
        let mut spec = VmSpec::parse(block).unwrap_or_else(|e| panic!("{e}\n{block}"));
        spec.validate().unwrap();
        spec.resolve_paths(Path::new("/"));
    }
}
