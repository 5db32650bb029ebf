//! Pod mutation as a pure function: the JSON Patch (RFC 6902) that makes a workspace pod meet
//! the policies' injectable parts, the ServiceAccount and the required node anti-affinity.
//!
//! The patch is built from what the pod already has, so it is correct for absent parents (no
//! `affinity`, no `nodeAffinity`…) and empty when there is nothing to do: mutating a mutated pod
//! yields no patch, which makes `reinvocationPolicy: IfNeeded` safe. The user's node selector
//! terms are kept: the expressions are added to each of them.

use json_patch::{AddOperation, PatchOperation};
use jsonptr::PointerBuf;
use serde_json::{Value, json};

use crate::podview::{AffinityView, PodView};
use crate::policy::CompiledPolicy;
use crate::validate::term_avoids;

const REQUIRED: &str = "requiredDuringSchedulingIgnoredDuringExecution";

/// The patch operations for `pod` under the policies covering its namespace (in name order).
/// Empty when the pod is not a workspace pod under any of them, or already complies.
pub fn mutate_pod<'a>(
    policies: impl IntoIterator<Item = &'a CompiledPolicy>,
    pod: &PodView<'_>,
) -> Vec<PatchOperation> {
    let Some(spec) = pod.spec.as_ref() else {
        // Not a pod the apiserver would accept; validation names what is missing.
        return Vec::new();
    };
    let labels = pod.metadata.labels.as_ref();
    let mut service_account: Option<&str> = None;
    let mut keys: Vec<&str> = Vec::new();
    for p in policies.into_iter().filter(|p| p.is_workspace(labels)) {
        service_account.get_or_insert(&p.spec.service_account_name);
        for k in &p.spec.avoid_node_labels {
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
    }
    let Some(service_account) = service_account else {
        return Vec::new();
    };

    let mut ops = Vec::new();
    let current = spec.service_account_name.as_deref().unwrap_or("");
    if current.is_empty() || current == "default" {
        ops.push(add(&["spec", "serviceAccountName"], json!(service_account)));
        // The deprecated alias is echoed by the apiserver; keep the two in agreement.
        if spec
            .service_account
            .as_deref()
            .is_some_and(|s| s != service_account)
        {
            ops.push(add(&["spec", "serviceAccount"], json!(service_account)));
        }
    }
    if !keys.is_empty() {
        affinity_ops(spec.affinity.as_ref(), &keys, &mut ops);
    }
    ops
}

fn affinity_ops(affinity: Option<&AffinityView<'_>>, keys: &[&str], ops: &mut Vec<PatchOperation>) {
    let exprs = |keys: &[&str]| -> Value {
        Value::Array(
            keys.iter()
                .map(|k| json!({"key": k, "operator": "DoesNotExist"}))
                .collect(),
        )
    };
    let terms = |keys: &[&str]| json!([{ "matchExpressions": exprs(keys) }]);
    let Some(affinity) = affinity else {
        let value = json!({"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": terms(keys)}}});
        ops.push(add(&["spec", "affinity"], value));
        return;
    };
    let Some(node) = affinity.node_affinity.as_ref() else {
        let value = json!({REQUIRED: {"nodeSelectorTerms": terms(keys)}});
        ops.push(add(&["spec", "affinity", "nodeAffinity"], value));
        return;
    };
    let Some(required) = node.required.as_ref() else {
        let value = json!({"nodeSelectorTerms": terms(keys)});
        ops.push(add(&["spec", "affinity", "nodeAffinity", REQUIRED], value));
        return;
    };
    let node_terms = required.node_selector_terms.as_deref().unwrap_or(&[]);
    if node_terms.is_empty() {
        ops.push(add(
            &[
                "spec",
                "affinity",
                "nodeAffinity",
                REQUIRED,
                "nodeSelectorTerms",
            ],
            terms(keys),
        ));
        return;
    }
    for (i, term) in node_terms.iter().enumerate() {
        let missing: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !term_avoids(term, k))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let index = i.to_string();
        let base = [
            "spec",
            "affinity",
            "nodeAffinity",
            REQUIRED,
            "nodeSelectorTerms",
            index.as_str(),
            "matchExpressions",
        ];
        if term.match_expressions.is_none() {
            ops.push(add(&base, exprs(&missing)));
        } else {
            let mut path = base.to_vec();
            path.push("-");
            for k in missing {
                ops.push(add(&path, json!({"key": k, "operator": "DoesNotExist"})));
            }
        }
    }
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}
