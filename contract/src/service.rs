//! The port contract of the stable `dev-workspace` Service ([`STABLE_SERVICE`]), as one rule.
//!
//! The server's readiness drift check and `lumie-server doctor` both judge that Service with
//! [`port_drift`], so a Service the doctor passes never raises a readiness warning and the
//! other way round. The lumie-dev overlay owns the Service; nobody here changes it.
//!
//! [`STABLE_SERVICE`]: crate::workspace::STABLE_SERVICE

use std::fmt;

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::apps::{self, WorkspaceApp};

/// The only protocol the workspace apps speak; the apiserver writes it when a port omits it.
pub const PROTOCOL: &str = "TCP";

/// What is wrong with one contract port of the Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortFault {
    /// No port carries the app's name or its number.
    Missing,
    /// The app's number is there under another name, or none. The name is part of the
    /// contract: the app proxy and the agent reach an app by its slug, not by a number.
    Renamed {
        /// The name the port has.
        name: Option<String>,
    },
    /// The port named for the app has another number: clients of the Service dial the
    /// contract number and reach nothing.
    Port {
        /// The number it has.
        port: i32,
    },
    /// The port forwards somewhere the workspace pods do not listen. Accepted targets are the
    /// app's container port as a number, or the app's slug (the workspace containers name
    /// their ports by slug). A string is always a container port *name* to Kubernetes, so a
    /// digits-only string such as `"13337"` is not the number: no port can be named so (names
    /// need a letter), and it forwards nowhere.
    TargetPort {
        /// The target as the Service says it (an omitted targetPort is the port's number).
        target: IntOrString,
    },
    /// Not TCP: a UDP or SCTP port of the right number still does not carry the app's HTTP.
    Protocol {
        /// The protocol it has.
        protocol: String,
    },
}

/// One contract port that does not hold, for one app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortProblem {
    /// The app whose port it is.
    pub app: WorkspaceApp,
    /// What is wrong.
    pub fault: PortFault,
}

impl PortProblem {
    /// The drift field it is reported under (`port/<slug>`, `targetPort/<slug>`,
    /// `protocol/<slug>`): a missing or renamed port is a `port` drift.
    pub fn field(&self) -> String {
        let kind = match self.fault {
            PortFault::Missing | PortFault::Renamed { .. } | PortFault::Port { .. } => "port",
            PortFault::TargetPort { .. } => "targetPort",
            PortFault::Protocol { .. } => "protocol",
        };
        format!("{kind}/{}", self.app.slug)
    }
}

/// Every field [`PortProblem::field`] can name, so a drift that is fixed can be reported as
/// fixed.
pub fn drift_fields() -> Vec<String> {
    apps::ALL
        .iter()
        .flat_map(|a| {
            ["port", "targetPort", "protocol"]
                .into_iter()
                .map(move |kind| format!("{kind}/{}", a.slug))
        })
        .collect()
}

impl fmt::Display for PortProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slug = self.app.slug;
        let want = self.app.port;
        match &self.fault {
            PortFault::Missing => write!(f, "port {slug} ({want}) is missing"),
            PortFault::Renamed { name: Some(name) } => write!(
                f,
                "port {want} is named {name:?}, the contract says {slug:?}"
            ),
            PortFault::Renamed { name: None } => {
                write!(f, "port {want} has no name, the contract says {slug:?}")
            }
            PortFault::Port { port } => {
                write!(f, "port {slug} is {port}, the contract says {want}")
            }
            PortFault::TargetPort {
                target: IntOrString::String(s),
            } if is_digits(s) => write!(
                f,
                "port {slug} targets the port name {s:?}, which no container can have (write the number {want} unquoted); the workspace pods listen on {want}"
            ),
            PortFault::TargetPort { target } => {
                let shown = match target {
                    IntOrString::Int(n) => n.to_string(),
                    IntOrString::String(s) => s.clone(),
                };
                write!(
                    f,
                    "port {slug} targets {shown}, the workspace pods listen on {want}"
                )
            }
            PortFault::Protocol { protocol } => {
                write!(f, "port {slug} is {protocol}, the contract says {PROTOCOL}")
            }
        }
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A Service port the contract does not name. Not a fault (the overlay may add ports), but
/// worth saying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraPort {
    /// Its name, if any.
    pub name: Option<String>,
    /// Its number.
    pub port: i32,
}

impl fmt::Display for ExtraPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({})",
            self.name.as_deref().unwrap_or_default(),
            self.port
        )
    }
}

/// How the Service's ports stand against the contract.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortDrift {
    /// What does not hold, app by app in [`apps::ALL`] order; empty when the contract holds.
    pub problems: Vec<PortProblem>,
    /// Ports named for no app and numbered for none.
    pub extras: Vec<ExtraPort>,
}

/// Judges the Service's ports against [`apps::ALL`].
///
/// The rule: for every app the Service carries a port **named** for the app's slug, with the
/// app's **number**, over **TCP** (omitted means TCP), whose **targetPort** is the app's number
/// or its slug (omitted means the port's number). A port is found by name first; the number is
/// only used to say a port was renamed rather than lost. Each fault of a port is its own
/// problem, so one look shows all of them.
pub fn port_drift(ports: &[ServicePort]) -> PortDrift {
    let mut problems = Vec::new();
    for app in apps::ALL {
        let want = i32::from(app.port);
        let mut fault = |fault| problems.push(PortProblem { app, fault });
        let Some(p) = ports.iter().find(|p| p.name.as_deref() == Some(app.slug)) else {
            fault(match ports.iter().find(|p| p.port == want) {
                Some(p) => PortFault::Renamed {
                    name: p.name.clone(),
                },
                None => PortFault::Missing,
            });
            continue;
        };
        if p.port != want {
            fault(PortFault::Port { port: p.port });
        }
        let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
        let target_ok = match &target {
            IntOrString::Int(n) => *n == want,
            IntOrString::String(s) => s == app.slug,
        };
        if !target_ok {
            fault(PortFault::TargetPort { target });
        }
        if let Some(protocol) = p.protocol.as_deref().filter(|p| *p != PROTOCOL) {
            fault(PortFault::Protocol {
                protocol: protocol.to_string(),
            });
        }
    }
    let extras = ports
        .iter()
        .filter(|p| {
            !apps::ALL
                .iter()
                .any(|a| p.name.as_deref() == Some(a.slug) || i32::from(a.port) == p.port)
        })
        .map(|p| ExtraPort {
            name: p.name.clone(),
            port: p.port,
        })
        .collect();
    PortDrift { problems, extras }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The contract's ports as the lumie-dev chart renders them.
    fn contract_ports() -> serde_json::Value {
        json!([
            {"name": "tilt", "port": 10350, "targetPort": 10350, "protocol": "TCP"},
            {"name": "code-server", "port": 13337, "targetPort": 13337, "protocol": "TCP"},
            {"name": "agents", "port": 3000, "targetPort": 3000, "protocol": "TCP"}
        ])
    }

    fn remove(p: &mut serde_json::Value, i: usize) {
        p.as_array_mut().unwrap().remove(i);
    }

    /// (case, edit of the contract ports, `field: message` of each problem, extras).
    type Case = (
        &'static str,
        fn(&mut serde_json::Value),
        &'static [&'static str],
        &'static [&'static str],
    );

    #[test]
    fn port_drift_table() {
        let cases: &[Case] = &[
            ("contract", |_| {}, &[], &[]),
            (
                "targetPort by the port name",
                |p| p[1]["targetPort"] = json!("code-server"),
                &[],
                &[],
            ),
            (
                "no targetPort: the port's number",
                |p| remove_key(&mut p[2], "targetPort"),
                &[],
                &[],
            ),
            (
                "no protocol: TCP",
                |p| remove_key(&mut p[0], "protocol"),
                &[],
                &[],
            ),
            (
                "the old readiness fixture: by number, by name, omitted",
                |p| {
                    p[1]["targetPort"] = json!("code-server");
                    remove_key(&mut p[2], "targetPort");
                    for port in p.as_array_mut().unwrap() {
                        remove_key(port, "protocol");
                    }
                },
                &[],
                &[],
            ),
            (
                "port number drift (targetPort still right)",
                |p| p[0]["port"] = json!(10351),
                &["port/tilt: port tilt is 10351, the contract says 10350"],
                &[],
            ),
            (
                "port and targetPort moved together",
                |p| {
                    p[1]["port"] = json!(13338);
                    p[1]["targetPort"] = json!(13338);
                },
                &[
                    "port/code-server: port code-server is 13338, the contract says 13337",
                    "targetPort/code-server: port code-server targets 13338, the workspace pods listen on 13337",
                ],
                &[],
            ),
            (
                "port moved, targetPort omitted: it follows the port",
                |p| {
                    p[2]["port"] = json!(3001);
                    remove_key(&mut p[2], "targetPort");
                },
                &[
                    "port/agents: port agents is 3001, the contract says 3000",
                    "targetPort/agents: port agents targets 3001, the workspace pods listen on 3000",
                ],
                &[],
            ),
            (
                "targetPort number drift",
                |p| p[1]["targetPort"] = json!(8080),
                &[
                    "targetPort/code-server: port code-server targets 8080, the workspace pods listen on 13337",
                ],
                &[],
            ),
            (
                "targetPort names another container port",
                |p| p[2]["targetPort"] = json!("http"),
                &["targetPort/agents: port agents targets http, the workspace pods listen on 3000"],
                &[],
            ),
            (
                "numeric-string targetPort is a name, not the number",
                |p| p[1]["targetPort"] = json!("13337"),
                &[
                    "targetPort/code-server: port code-server targets the port name \"13337\", which no container can have (write the number 13337 unquoted); the workspace pods listen on 13337",
                ],
                &[],
            ),
            (
                "missing port",
                |p| remove(p, 0),
                &["port/tilt: port tilt (10350) is missing"],
                &[],
            ),
            (
                "no ports at all",
                |p| *p = json!([]),
                &[
                    "port/tilt: port tilt (10350) is missing",
                    "port/code-server: port code-server (13337) is missing",
                    "port/agents: port agents (3000) is missing",
                ],
                &[],
            ),
            (
                "name mismatch: the number under another name",
                |p| p[0]["name"] = json!("tilt-ui"),
                &["port/tilt: port 10350 is named \"tilt-ui\", the contract says \"tilt\""],
                &[],
            ),
            (
                "the only port, unnamed",
                |p| {
                    *p = json!([{"port": 3000, "targetPort": 3000}]);
                },
                &[
                    "port/tilt: port tilt (10350) is missing",
                    "port/code-server: port code-server (13337) is missing",
                    "port/agents: port 3000 has no name, the contract says \"agents\"",
                ],
                &[],
            ),
            (
                "UDP",
                |p| p[0]["protocol"] = json!("UDP"),
                &["protocol/tilt: port tilt is UDP, the contract says TCP"],
                &[],
            ),
            (
                "SCTP and a wrong target: both said",
                |p| {
                    p[2]["protocol"] = json!("SCTP");
                    p[2]["targetPort"] = json!(3001);
                },
                &[
                    "targetPort/agents: port agents targets 3001, the workspace pods listen on 3000",
                    "protocol/agents: port agents is SCTP, the contract says TCP",
                ],
                &[],
            ),
            (
                "extra port",
                |p| {
                    p.as_array_mut()
                        .unwrap()
                        .push(json!({"name": "debug", "port": 2345}))
                },
                &[],
                &["debug (2345)"],
            ),
            (
                "a renamed port is not also an extra",
                |p| {
                    p[0]["name"] = json!("tilt-ui");
                    p.as_array_mut()
                        .unwrap()
                        .push(json!({"name": "debug", "port": 2345}))
                },
                &["port/tilt: port 10350 is named \"tilt-ui\", the contract says \"tilt\""],
                &["debug (2345)"],
            ),
            (
                "order of the ports does not matter",
                |p| p.as_array_mut().unwrap().reverse(),
                &[],
                &[],
            ),
        ];
        for (name, edit, problems, extras) in cases {
            let mut ports = contract_ports();
            edit(&mut ports);
            let ports: Vec<ServicePort> = serde_json::from_value(ports).expect("ports");
            let got = port_drift(&ports);
            let shown: Vec<String> = got
                .problems
                .iter()
                .map(|p| format!("{}: {p}", p.field()))
                .collect();
            assert_eq!(shown, *problems, "{name}");
            let extra: Vec<String> = got.extras.iter().map(ToString::to_string).collect();
            assert_eq!(extra, *extras, "{name}");
            for p in &got.problems {
                assert!(drift_fields().contains(&p.field()), "{name}: {}", p.field());
            }
        }
    }

    fn remove_key(port: &mut serde_json::Value, key: &str) {
        port.as_object_mut().unwrap().remove(key);
    }

    #[test]
    fn every_field_is_listed_once() {
        let fields = drift_fields();
        assert_eq!(fields.len(), 3 * apps::ALL.len());
        let mut unique = fields.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), fields.len());
        assert!(fields.contains(&"targetPort/code-server".to_string()));
    }
}
