//! What each request means: a pure function from a request and a snapshot of the VM to
//! the response and the action to take (vmm/api/openapi.yaml documents the endpoints).
//! Only the `PUT /vm/...` endpoints act; nothing a client sends can do anything else.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::http::{Request, Response, Status};
use crate::spec::MAX_SHUTDOWN_TIMEOUT_S;

/// What a request asks the VM to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Press the ACPI power button (no deadline).
    PowerButton,
    /// Press the button and stop the guest if it has not powered off after the
    /// timeout (`None`: `lifecycle.shutdown_timeout_s`).
    Shutdown(Option<Duration>),
    /// Reset the VM, as a guest reboot (follows `lifecycle.on_reboot`).
    Reboot,
    /// Stop the vCPUs (passthrough untouched).
    Pause,
    /// Start them again.
    Resume,
}

/// The VM's run state as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    Paused,
    ShuttingDown,
    /// A reboot in place is under way: from the guest's (or the API's) request until
    /// the vCPUs run the next boot.
    Rebooting,
    Stopping,
}

/// A BAR of a passed-through function, as placed in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BarView {
    pub index: u8,
    pub kind: String,
    pub addr: String,
    pub size: u64,
}

/// A passed-through function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceView {
    pub host: String,
    pub guest: String,
    pub vendor_id: String,
    pub device_id: String,
    pub bars: Vec<BarView>,
}

/// What `GET /vm` and `GET /vm/counters` report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmView {
    pub state: RunState,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub hugepages: String,
    pub devices: Vec<DeviceView>,
    /// Boot phases, milliseconds since Strait started.
    pub timeline: Vec<(String, f64)>,
    /// Guest boots in this process (2 after one reboot in place).
    pub boots: u32,
    #[serde(skip)]
    pub exits: Vec<(&'static str, u64)>,
}

/// `PUT /vm/shutdown`'s optional body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShutdownBody {
    timeout_s: Option<u32>,
}

/// The response to `req` given the VM's state `vm`, and what to do.
pub fn handle(req: &Request, vm: &VmView) -> (Response, Option<Action>) {
    let path = req.path.split('?').next().unwrap_or_default();
    let method = req.method.as_str();
    match (method, path) {
        ("GET", "/ping") => (Response::json(Status::Ok, json!({"pong": true})), None),
        ("GET", "/vm") => (Response::json(Status::Ok, vm_json(vm)), None),
        ("GET", "/vm/counters") => (Response::json(Status::Ok, counters_json(vm)), None),
        ("PUT", "/vm/shutdown") => match shutdown_timeout(&req.body) {
            Ok(t) => act(vm, Action::Shutdown(t)),
            Err(msg) => (Response::error(Status::BadRequest, msg), None),
        },
        ("PUT", _) if !is_blank(&req.body) && is_endpoint(path) => (
            Response::error(Status::BadRequest, format!("{path} takes no body")),
            None,
        ),
        ("PUT", "/vm/power-button") => act(vm, Action::PowerButton),
        ("PUT", "/vm/reboot") => act(vm, Action::Reboot),
        ("PUT", "/vm/pause") => act(vm, Action::Pause),
        ("PUT", "/vm/resume") => act(vm, Action::Resume),
        (_, p) if is_endpoint(p) => (
            Response::error(
                Status::MethodNotAllowed,
                format!("{method} is not allowed on {p}"),
            ),
            None,
        ),
        (_, p) => (
            Response::error(Status::NotFound, format!("no endpoint {p}")),
            None,
        ),
    }
}

const ENDPOINTS: [&str; 8] = [
    "/ping",
    "/vm",
    "/vm/counters",
    "/vm/power-button",
    "/vm/shutdown",
    "/vm/reboot",
    "/vm/pause",
    "/vm/resume",
];

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

fn is_endpoint(path: &str) -> bool {
    ENDPOINTS.contains(&path)
}

/// Accept `action` unless the VM's state rules it out.
fn act(vm: &VmView, action: Action) -> (Response, Option<Action>) {
    let conflict = match (vm.state, action) {
        (RunState::Stopping, _) => Some("the VM is stopping"),
        (RunState::Rebooting, _) => Some("the VM is rebooting: try again once it runs"),
        (RunState::Paused, Action::Pause) => Some("the VM is already paused"),
        (RunState::Running | RunState::ShuttingDown, Action::Resume) => {
            Some("the VM is not paused")
        }
        (RunState::Paused, Action::PowerButton | Action::Shutdown(_)) => {
            Some("the VM is paused: resume it first, or the guest cannot see the button")
        }
        _ => None,
    };
    match conflict {
        Some(msg) => (Response::error(Status::Conflict, msg), None),
        None => (
            Response::json(Status::Accepted, json!({"accepted": action_name(action)})),
            Some(action),
        ),
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::PowerButton => "power-button",
        Action::Shutdown(_) => "shutdown",
        Action::Reboot => "reboot",
        Action::Pause => "pause",
        Action::Resume => "resume",
    }
}

/// The timeout of a `PUT /vm/shutdown` body: empty, `{}` or `{"timeout_s": N}`.
fn shutdown_timeout(body: &[u8]) -> Result<Option<Duration>, String> {
    if is_blank(body) {
        return Ok(None);
    }
    let b: ShutdownBody = serde_json::from_slice(body)
        .map_err(|e| format!("body: {e}; want {{\"timeout_s\": N}}"))?;
    match b.timeout_s {
        Some(t) if !(1..=MAX_SHUTDOWN_TIMEOUT_S).contains(&t) => Err(format!(
            "timeout_s: {t} is outside 1..={MAX_SHUTDOWN_TIMEOUT_S}"
        )),
        t => Ok(t.map(|t| Duration::from_secs(u64::from(t)))),
    }
}

fn vm_json(vm: &VmView) -> serde_json::Value {
    let timeline: serde_json::Map<String, serde_json::Value> = vm
        .timeline
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "state": vm.state,
        "vcpus": vm.vcpus,
        "memory_mib": vm.memory_mib,
        "hugepages": vm.hugepages,
        "devices": vm.devices,
        "timeline_ms": timeline,
        "boots": vm.boots,
    })
}

fn counters_json(vm: &VmView) -> serde_json::Value {
    let exits: serde_json::Map<String, serde_json::Value> = vm
        .exits
        .iter()
        .map(|(k, v)| ((*k).to_string(), json!(v)))
        .collect();
    let total: u64 = vm.exits.iter().map(|(_, n)| n).sum();
    json!({ "exits_total": total, "exits": exits })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(state: RunState) -> VmView {
        VmView {
            state,
            vcpus: 2,
            memory_mib: 512,
            hugepages: "2M".into(),
            devices: vec![DeviceView {
                host: "0000:00:03.0".into(),
                guest: "0000:01:00.0".into(),
                vendor_id: "0x1b36".into(),
                device_id: "0x0010".into(),
                bars: vec![BarView {
                    index: 0,
                    kind: "mem64".into(),
                    addr: "0xc0000000".into(),
                    size: 16384,
                }],
            }],
            timeline: vec![("vcpus_started".into(), 12.5)],
            boots: 1,
            exits: vec![("io_in", 3), ("hlt", 4)],
        }
    }

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn run(method: &str, path: &str, body: &str) -> (Response, Option<Action>) {
        handle(&req(method, path, body), &vm(RunState::Running))
    }

    #[test]
    fn ping_pongs() {
        let (r, a) = run("GET", "/ping", "");
        assert_eq!((r.status, a), (Status::Ok, None));
    }

    #[test]
    fn get_vm_reports_devices_with_both_addresses_and_the_timeline() {
        let (r, a) = run("GET", "/vm", "");
        assert_eq!((r.status, a), (Status::Ok, None));
        assert_eq!(r.body["state"], "running");
        assert_eq!(r.body["devices"][0]["host"], "0000:00:03.0");
        assert_eq!(r.body["devices"][0]["guest"], "0000:01:00.0");
        assert_eq!(r.body["devices"][0]["bars"][0]["size"], 16384);
        assert_eq!(r.body["timeline_ms"]["vcpus_started"], 12.5);
    }

    #[test]
    fn counters_sum_the_exits() {
        let (r, _) = run("GET", "/vm/counters", "");
        assert_eq!(r.body["exits_total"], 7);
        assert_eq!(r.body["exits"]["hlt"], 4);
    }

    #[test]
    fn each_put_maps_to_its_action() {
        assert_eq!(
            run("PUT", "/vm/power-button", "").1,
            Some(Action::PowerButton)
        );
        assert_eq!(
            run("PUT", "/vm/shutdown", "").1,
            Some(Action::Shutdown(None))
        );
        assert_eq!(run("PUT", "/vm/reboot", "").1, Some(Action::Reboot));
        assert_eq!(run("PUT", "/vm/pause", "").1, Some(Action::Pause));
        let (r, a) = handle(&req("PUT", "/vm/resume", ""), &vm(RunState::Paused));
        assert_eq!((r.status, a), (Status::Accepted, Some(Action::Resume)));
    }

    #[test]
    fn shutdown_takes_a_timeout_from_its_body() {
        let (r, a) = run("PUT", "/vm/shutdown", r#"{"timeout_s": 5}"#);
        assert_eq!(r.status, Status::Accepted);
        assert_eq!(a, Some(Action::Shutdown(Some(Duration::from_secs(5)))));
        assert_eq!(
            run("PUT", "/vm/shutdown", "{}").1,
            Some(Action::Shutdown(None))
        );
    }

    #[test]
    fn a_bad_shutdown_body_is_a_400_and_does_nothing() {
        for body in [
            r#"{"x":"#,
            r#"{"timeout_s": 0}"#,
            r#"{"timeout_s": "5"}"#,
            r#"{"t": 1}"#,
        ] {
            let (r, a) = run("PUT", "/vm/shutdown", body);
            assert_eq!((r.status, a), (Status::BadRequest, None), "{body}");
        }
    }

    #[test]
    fn a_body_on_an_endpoint_that_takes_none_is_a_400_and_does_nothing() {
        for path in ["/vm/pause", "/vm/resume", "/vm/reboot", "/vm/power-button"] {
            let (r, a) = run("PUT", path, "}}}");
            assert_eq!((r.status, a), (Status::BadRequest, None), "{path}");
        }
        assert_eq!(run("PUT", "/vm/pause", "\r\n").1, Some(Action::Pause));
    }

    #[test]
    fn wrong_method_is_405_and_unknown_path_404() {
        assert_eq!(
            run("GET", "/vm/pause", "").0.status,
            Status::MethodNotAllowed
        );
        assert_eq!(run("DELETE", "/vm", "").0.status, Status::MethodNotAllowed);
        assert_eq!(
            run("GET", "/../../etc/passwd", "").0.status,
            Status::NotFound
        );
        assert_eq!(run("PUT", "/vm/", "").1, None);
    }

    #[test]
    fn state_conflicts_are_409_and_do_nothing() {
        let paused = vm(RunState::Paused);
        let (r, a) = handle(&req("PUT", "/vm/pause", ""), &paused);
        assert_eq!((r.status, a), (Status::Conflict, None));
        let (r, a) = handle(&req("PUT", "/vm/shutdown", ""), &paused);
        assert_eq!((r.status, a), (Status::Conflict, None));
        assert_eq!(run("PUT", "/vm/resume", "").1, None);
        let stopping = vm(RunState::Stopping);
        assert_eq!(handle(&req("PUT", "/vm/reboot", ""), &stopping).1, None);
    }

    #[test]
    fn a_vm_rebooting_in_place_says_so_and_refuses_every_action() {
        let rebooting = vm(RunState::Rebooting);
        let (r, _) = handle(&req("GET", "/vm", ""), &rebooting);
        assert_eq!(r.body["state"], "rebooting");
        for path in ENDPOINTS
            .iter()
            .filter(|p| p.starts_with("/vm/") && **p != "/vm/counters")
        {
            let (r, a) = handle(&req("PUT", path, ""), &rebooting);
            assert_eq!((r.status, a), (Status::Conflict, None), "{path}");
        }
    }

    #[test]
    fn a_query_string_does_not_change_the_endpoint() {
        assert_eq!(run("GET", "/vm?pretty=1", "").0.status, Status::Ok);
    }
}
