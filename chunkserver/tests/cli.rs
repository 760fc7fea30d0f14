//! Black-box tests of the `ringvault-chunkserver` binary.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ringvault-chunkserver");

#[test]
fn missing_config_is_named_and_fails() {
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/chunkserver.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/chunkserver.toml"), "{stderr}");
}

#[test]
fn invalid_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chunkserver.toml");
    std::fs::write(&path, "node-id = 1\nlisten = \"not an address\"\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listen"), "{stderr}");
}
