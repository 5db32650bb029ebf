//! Prometheus metrics: requests by endpoint, decision and mode, latency per endpoint, and the
//! policy generation. Label values are enums, so counting a request allocates nothing.

use std::time::Duration;

use lumie_contract::policy::PolicyMode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::review::Endpoint;

/// How a request ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Decision {
    /// `allowed: true`.
    Allowed,
    /// `allowed: false`.
    Denied,
    /// HTTP 400: the review could not be read.
    Invalid,
}

impl Decision {
    /// `allowed`, `denied` or `invalid`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::Invalid => "invalid",
        }
    }
}

/// The mode a decision was taken under; ordered strictest first.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum ModeLabel {
    /// At least one `Enforce` policy applied.
    Enforce,
    /// The strictest applied policy was `Warn`.
    Warn,
    /// The strictest applied policy was `Audit`.
    Audit,
    /// Every covering policy exempted the requester.
    Exempt,
    /// No policy covers the namespace (or the request was unreadable).
    None,
}

impl From<PolicyMode> for ModeLabel {
    fn from(m: PolicyMode) -> Self {
        match m {
            PolicyMode::Enforce => ModeLabel::Enforce,
            PolicyMode::Warn => ModeLabel::Warn,
            PolicyMode::Audit => ModeLabel::Audit,
        }
    }
}

impl ModeLabel {
    /// `Enforce`, `Warn`, `Audit`, `Exempt` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModeLabel::Enforce => "Enforce",
            ModeLabel::Warn => "Warn",
            ModeLabel::Audit => "Audit",
            ModeLabel::Exempt => "Exempt",
            ModeLabel::None => "none",
        }
    }
}

macro_rules! label_value {
    ($t:ty) => {
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}
label_value!(Decision);
label_value!(ModeLabel);
label_value!(Endpoint);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: Endpoint,
    decision: Decision,
    mode: ModeLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: Endpoint,
}

/// The webhook's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    generation: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        // 25 µs .. ~0.4 s: the hot path is sub-millisecond, the tail is what matters.
        let latency: Family<EndpointLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_025, 2.0, 15))
            });
        let generation = Gauge::default();
        registry.register(
            "lumie_webhook_requests",
            "Admission reviews by endpoint, decision and policy mode",
            requests.clone(),
        );
        registry.register(
            "lumie_webhook_request_duration_seconds",
            "Time to answer an admission review, by endpoint",
            latency.clone(),
        );
        registry.register(
            "lumie_webhook_policy_generation",
            "Increases each time the WorkspacePolicy objects in force are rebuilt",
            generation.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            generation,
        }
    }

    /// Counts one review and its latency.
    pub fn observe(&self, endpoint: Endpoint, decision: Decision, mode: ModeLabel, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint,
                decision,
                mode,
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels { endpoint })
            .observe(took.as_secs_f64());
    }

    /// Sets the policy generation.
    pub fn set_generation(&self, generation: u64) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
