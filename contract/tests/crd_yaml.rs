//! The checked-in CRD YAML is generated from the Rust type; this test fails when they differ.
//! Regenerate with `LUMIE_UPDATE_CRD=1 cargo test -p lumie-contract --test crd_yaml`.

use kube::CustomResourceExt;
use lumie_contract::policy::WorkspacePolicy;

const CRD_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../charts/lumie-coder/crds/workspacepolicies.yaml"
);

fn generated() -> String {
    let header = "# Generated from lumie_contract::policy::WorkspacePolicy. Do not edit by hand:\n\
                  # LUMIE_UPDATE_CRD=1 cargo test -p lumie-contract --test crd_yaml\n";
    format!(
        "{header}{}",
        serde_yaml::to_string(&WorkspacePolicy::crd()).unwrap()
    )
}

#[test]
fn checked_in_crd_matches_the_type() {
    let want = generated();
    if std::env::var_os("LUMIE_UPDATE_CRD").is_some() {
        std::fs::write(CRD_PATH, &want).unwrap();
    }
    let have = std::fs::read_to_string(CRD_PATH).unwrap_or_default();
    assert!(
        have == want,
        "{CRD_PATH} is stale: regenerate with LUMIE_UPDATE_CRD=1 cargo test -p lumie-contract --test crd_yaml"
    );
}
