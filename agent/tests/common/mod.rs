pub mod deploy_manifests;
pub mod fake_apiserver;
