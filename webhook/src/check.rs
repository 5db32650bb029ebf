//! `lumie-webhook check`: pod manifests judged offline, as the apiserver would with the webhook
//! installed (mutate, then validate), with a verdict and every violation per pod. Like
//! `kyverno apply` or `gator test`, for CI on manifests and for trying a policy out. When a
//! privileged container misses the exception because its pod is not a workspace pod, a `hint`
//! line says what would make it one (labels, service account, creator).

use std::io::Write;
use std::path::PathBuf;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::podview::PodView;
use crate::policy::PolicySet;
use crate::policy_file::documents;
use crate::review::{Requester, evaluate_pod, mutation};
use crate::validate::NOT_WORKSPACE;

/// What `check` needs; tests build it directly.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// Manifest files (YAML or JSON, multi-document).
    pub files: Vec<PathBuf>,
    /// The requesting user (the privileged exception depends on it).
    pub user: String,
    /// The requesting user's groups (for `exemptGroups`).
    pub groups: Vec<String>,
    /// Namespace for pods that name none.
    pub default_namespace: String,
}

/// The verdict on one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodVerdict {
    /// File the pod came from.
    pub source: String,
    /// `namespace/name`.
    pub pod: String,
    /// Allowed after mutation.
    pub allowed: bool,
    /// How many patch operations mutation applied first.
    pub patch_ops: usize,
    /// `Enforce` violations.
    pub denied: Vec<String>,
    /// `Warn` violations.
    pub warnings: Vec<String>,
    /// `Audit` violations.
    pub audited: Vec<String>,
    /// Exemptions.
    pub exempt: Vec<String>,
    /// What would make the pod a workspace pod, for each policy whose privileged exception
    /// missed because it is not one.
    pub hints: Vec<String>,
}

/// Judges every pod in `text`. Other kinds are skipped (listed in the second value).
pub fn check_text(
    policies: &PolicySet,
    config: &CheckConfig,
    source: &str,
    text: &str,
) -> Result<(Vec<PodVerdict>, Vec<String>)> {
    let parse_err = |message: String| Error::Parse {
        path: source.into(),
        message,
    };
    let docs = documents(text).map_err(|e| parse_err(e.to_string()))?;
    let mut verdicts = Vec::new();
    let mut skipped = Vec::new();
    for (i, mut doc) in docs.into_iter().enumerate() {
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind != "Pod" {
            let name = doc["metadata"]["name"].as_str().unwrap_or("");
            skipped.push(format!("{kind} {name:?} (document {})", i + 1));
            continue;
        }
        let text = doc.to_string();
        let pod = PodView::parse(&text)
            .map_err(|e| parse_err(format!("document {}: not a Pod: {e}", i + 1)))?;
        let namespace = pod
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(&config.default_namespace)
            .to_string();
        let name = match (&pod.metadata.name, &pod.metadata.generate_name) {
            (Some(n), _) => n.to_string(),
            (None, Some(g)) => format!("{g}*"),
            (None, None) => String::new(),
        };
        let who = Requester {
            username: &config.user,
            groups: &config.groups,
        };
        let now = k8s_openapi::jiff::Timestamp::now();
        let (ops, _) = mutation(policies, &namespace, &pod, who, now);
        let mutated_text;
        let pod = if ops.is_empty() {
            pod
        } else {
            json_patch::patch(&mut doc, &ops)
                .map_err(|e| parse_err(format!("document {}: applying mutation: {e}", i + 1)))?;
            mutated_text = doc.to_string();
            PodView::parse(&mutated_text)
                .map_err(|e| parse_err(format!("document {}: mutated pod: {e}", i + 1)))?
        };
        let ev = evaluate_pod(policies, &namespace, &pod, None, who, now);
        let strings = |v: &[crate::validate::Violation]| v.iter().map(|x| x.to_string()).collect();
        let mut hints: Vec<String> = Vec::new();
        for v in ev.denied.iter().chain(&ev.warnings).chain(&ev.audited) {
            if !v.rule.ends_with(NOT_WORKSPACE) {
                continue;
            }
            if let Some(p) = policies.covering(&namespace).find(|p| p.name == v.policy) {
                let mut hint = p.workspace_pod_description();
                if !p.is_creator(&config.user) {
                    hint.push_str(&format!(
                        " (checked as {:?}; --user names the creator to check as)",
                        config.user
                    ));
                }
                if !hints.contains(&hint) {
                    hints.push(hint);
                }
            }
        }
        verdicts.push(PodVerdict {
            source: source.to_string(),
            pod: format!("{namespace}/{name}"),
            allowed: ev.allowed(),
            patch_ops: ops.len(),
            denied: strings(&ev.denied),
            warnings: strings(&ev.warnings),
            audited: strings(&ev.audited),
            exempt: ev.exempt.clone(),
            hints,
        });
    }
    Ok((verdicts, skipped))
}

/// Checks every file and prints the verdicts. Returns whether every pod is allowed.
pub fn run(policies: &PolicySet, config: &CheckConfig, out: &mut dyn Write) -> Result<bool> {
    let mut all_allowed = true;
    let mut pods = 0;
    let w = |e: std::io::Error| Error::Io {
        path: "<stdout>".into(),
        source: e,
    };
    for file in &config.files {
        let text = std::fs::read_to_string(file).map_err(Error::io(file))?;
        let source = file.display().to_string();
        let (verdicts, skipped) = check_text(policies, config, &source, &text)?;
        for s in skipped {
            writeln!(out, "SKIP {source}: {s}: not a Pod").map_err(w)?;
        }
        for v in verdicts {
            pods += 1;
            all_allowed &= v.allowed;
            let verdict = if v.allowed { "PASS" } else { "FAIL" };
            let mutated = match v.patch_ops {
                0 => String::new(),
                n => format!(" (after {n} mutation patch operations)"),
            };
            writeln!(out, "{verdict} {} [{}]{mutated}", v.pod, v.source).map_err(w)?;
            for (tag, list) in [
                ("deny", &v.denied),
                ("warn", &v.warnings),
                ("audit", &v.audited),
                ("exempt", &v.exempt),
                ("hint", &v.hints),
            ] {
                for line in list {
                    writeln!(out, "  {tag}: {line}").map_err(w)?;
                }
            }
        }
    }
    writeln!(
        out,
        "{pods} pods checked, {}",
        if all_allowed {
            "all allowed"
        } else {
            "some denied"
        }
    )
    .map_err(w)?;
    Ok(all_allowed)
}
