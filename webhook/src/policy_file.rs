//! Policies from a file (`--policy FILE`): YAML or JSON, one or more documents, each a
//! `WorkspacePolicy` object or a bare spec. Offline review and check use it, and `serve` can
//! run on it without a cluster. Unlike the watch, a broken file is an error, not ignored.

use std::path::Path;

use lumie_contract::policy::{WorkspacePolicy, WorkspacePolicySpec};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::policy::PolicySet;

/// Reads and compiles the policies in `path`.
pub fn load(path: &Path) -> Result<PolicySet> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let fallback = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("policy");
    parse(&text, fallback).map_err(|e| match e {
        Error::Parse { message, .. } => Error::Parse {
            path: path.to_path_buf(),
            message,
        },
        other => other,
    })
}

/// Parses policies from text; a bare spec is named `fallback_name`.
pub fn parse(text: &str, fallback_name: &str) -> Result<PolicySet> {
    let mut named: Vec<(String, WorkspacePolicySpec)> = Vec::new();
    for (i, doc) in documents(text)?.into_iter().enumerate() {
        let parse_err = |e: serde_json::Error| Error::Parse {
            path: fallback_name.into(),
            message: format!("document {}: {e}", i + 1),
        };
        if doc.get("kind").and_then(Value::as_str) == Some("WorkspacePolicy") {
            let p: WorkspacePolicy = serde_json::from_value(doc).map_err(parse_err)?;
            let name = p
                .metadata
                .name
                .clone()
                .unwrap_or_else(|| fallback_name.to_string());
            named.push((name, p.spec));
        } else {
            let spec: WorkspacePolicySpec = serde_json::from_value(doc).map_err(parse_err)?;
            named.push((fallback_name.to_string(), spec));
        }
    }
    if named.is_empty() {
        return Err(Error::Parse {
            path: fallback_name.into(),
            message: "no policy in the file".into(),
        });
    }
    for (name, spec) in &named {
        if let Err(problems) = spec.validate(k8s_openapi::jiff::Timestamp::now()) {
            return Err(Error::InvalidPolicy {
                name: name.clone(),
                problems,
            });
        }
    }
    Ok(PolicySet::from_objects(
        named.iter().map(|(n, s)| (n.as_str(), s)),
        None,
    ))
}

/// The non-empty documents of a YAML or JSON text (JSON is YAML).
pub fn documents(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).map_err(|e| Error::Parse {
            path: "".into(),
            message: format!("document {}: {e}", i + 1),
        })?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumie_contract::policy::PolicyMode;

    #[test]
    fn objects_and_bare_specs() {
        let text = "apiVersion: coder.lumie-infra.com/v1alpha1\nkind: WorkspacePolicy\n\
                    metadata: {name: strict}\nspec: {mode: Warn, namespaces: [team-b]}\n---\n---\n\
                    mode: Audit\nnamespaces: [team-b]\n";
        let set = parse(text, "file").unwrap();
        let got: Vec<_> = set
            .policies()
            .map(|p| (p.name.to_string(), p.mode()))
            .collect();
        assert_eq!(
            got,
            [
                ("file".to_string(), PolicyMode::Audit),
                ("strict".to_string(), PolicyMode::Warn)
            ]
        );
    }

    #[test]
    fn a_broken_file_is_an_error() {
        let e = parse("namespaces: []\n", "p").unwrap_err();
        assert!(e.to_string().contains("spec.namespaces"), "{e}");
        let e = parse("mode: Relaxed\n", "p").unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
        let e = parse("mode: Warn\n", "p").unwrap_err();
        assert!(e.to_string().contains("below the floor"), "{e}");
        let e = parse("", "p").unwrap_err();
        assert!(e.to_string().contains("no policy"), "{e}");
    }
}
