//! The binary's command line: `--check-config` and exit code 64.

use std::process::Command;

fn admin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sse-admin"));
    command
        .env_remove("SSE_ADMIN__TOKEN")
        .env_remove("SSE_CONFIG");
    command
}

#[test]
fn check_config_names_the_bad_key_and_exits_64() {
    let out = admin().arg("--check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin.token"), "{stderr}");

    let out = admin()
        .arg("--check-config")
        .env("SSE_ADMIN__TOKEN", "t0ken")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.toml");
    std::fs::write(
        &file,
        "[admin]\ntoken = \"t\"\n[http]\nlisten = \"nowhere\"\n[log]\nformat = \"xml\"\n",
    )
    .unwrap();
    let out = admin()
        .arg("--check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("http.listen") && stderr.contains("log.format"),
        "{stderr}"
    );

    // The file may also come from SSE_CONFIG; unknown keys are refused.
    std::fs::write(&file, "[admin]\ntoken = \"t\"\ntokn = \"x\"\n").unwrap();
    let out = admin()
        .arg("--check-config")
        .env("SSE_CONFIG", &file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokn"));

    let out = admin()
        .args(["--check-config", "--config", "/nonexistent/admin.toml"])
        .env("SSE_ADMIN__TOKEN", "t")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));

    let out = admin().arg("--frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}
