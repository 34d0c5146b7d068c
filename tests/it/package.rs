//! The Debian package (`cargo deb`, `[package.metadata.deb]` in Cargo.toml): built from the
//! binary this test run already has, unpacked with `dpkg -x` into a temp root, and looked
//! at: the binary runs, the unit and the config are where the unit expects them, and the
//! config (`systemd/config.toml`, no secrets) passes the daemon's own check the way the unit runs it (secrets
//! from credential files through `AZB__*_FILE`).
//!
//! cargo-deb is installed (`cargo install cargo-deb --version CARGO_DEB --locked`, into
//! ~/.cargo/bin) when missing. `AZB_SKIP_DEB=1` skips the test; without it, a cargo-deb that
//! cannot be installed, or no `dpkg`, fails it.

use crate::support::temp_dir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

/// The cargo-deb this test installs when there is none (pinned: later versions may refuse
/// the dev profile used here).
const CARGO_DEB: &str = "3.8.0";
const NAME: &str = "asterisk-zammad-bridge";

fn skip_requested() -> bool {
    std::env::var("AZB_SKIP_DEB").is_ok_and(|v| v == "1")
}

fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn has_cargo_deb() -> bool {
    Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// cargo-deb, installed if need be; `false`: skipped (AZB_SKIP_DEB=1).
fn ensure_cargo_deb() -> bool {
    if has_cargo_deb() {
        return true;
    }
    if skip_requested() {
        eprintln!("SKIPPED: cargo-deb is not installed and AZB_SKIP_DEB=1");
        return false;
    }
    eprintln!("cargo-deb is missing: cargo install cargo-deb --version {CARGO_DEB} --locked");
    let started = Instant::now();
    let out = Command::new("cargo")
        .args(["install", "cargo-deb", "--version", CARGO_DEB, "--locked"])
        // Its own build dir, not this project's target dir.
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run cargo install");
    assert!(
        out.status.success() && has_cargo_deb(),
        "cargo-deb could not be installed (set AZB_SKIP_DEB=1 to skip the package test):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("installed cargo-deb in {:.0?}", started.elapsed());
    true
}

/// The profile the test binary was built with: its directory under the target dir.
fn profile_of(binary: &Path) -> &'static str {
    match binary.parent().and_then(Path::file_name) {
        Some(dir) if dir == "release" => "release",
        _ => "dev",
    }
}

#[test]
fn deb_installs_binary_unit_and_config() {
    if !ensure_cargo_deb() {
        return;
    }
    if Command::new("dpkg").arg("--version").output().is_err() {
        assert!(
            skip_requested(),
            "dpkg is missing: the package cannot be unpacked (AZB_SKIP_DEB=1 skips this test)"
        );
        eprintln!("SKIPPED: no dpkg and AZB_SKIP_DEB=1");
        return;
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = Path::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"));
    // cargo-deb finds the binary under the target dir of this profile; `--no-build` takes
    // the one cargo test has just built, so the package costs no second build. (A release
    // package is `cargo deb` without options; only the profile of the binary differs.)
    let target_dir = binary.parent().unwrap().parent().unwrap();
    let dir = temp_dir("deb");
    std::fs::create_dir_all(&dir).unwrap();
    let started = Instant::now();
    run(Command::new("cargo")
        .args(["deb", "--no-build", "--profile", profile_of(binary), "-o"])
        .arg(&dir)
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target_dir));
    let deb: PathBuf = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb in the output dir");
    eprintln!("cargo deb: {:.1?}", started.elapsed());

    let root = dir.join("root");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
    let conffiles = run(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --ctrl-tarfile '{}' | tar -xO ./conffiles",
        deb.display()
    )));
    assert_eq!(
        String::from_utf8_lossy(&conffiles.stdout).trim(),
        "/etc/asterisk-zammad-bridge/config.toml",
        "the config is a conffile: an upgrade keeps local changes"
    );

    let bin = root.join("usr/bin").join(NAME);
    let unit = root
        .join("lib/systemd/system")
        .join(format!("{NAME}.service"));
    let config = root.join("etc").join(NAME).join("config.toml");
    let examples = root.join("usr/share/doc").join(NAME).join("examples");
    assert_eq!(
        std::fs::read_to_string(&unit).unwrap(),
        std::fs::read_to_string(manifest_dir.join("systemd").join(format!("{NAME}.service")))
            .unwrap()
    );
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(unit_text.contains(&format!(
        "ExecStart=/usr/bin/{NAME} run -c /etc/{NAME}/config.toml"
    )));
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        std::fs::read_to_string(manifest_dir.join("systemd/config.toml")).unwrap()
    );
    for example in [
        "config.toml",
        "config-freepbx.toml",
        "manager.conf",
        "extensions.conf",
        "extensions_custom.conf",
    ] {
        assert!(examples.join(example).is_file(), "examples/{example}");
    }

    let daemon = |args: &[&str]| {
        let mut command = Command::new(&bin);
        command.args(args).env_remove("RUST_LOG");
        crate::support::without_azb_env(&mut command);
        command
    };
    let help = run(&mut daemon(&["--help"]));
    assert!(String::from_utf8_lossy(&help.stdout).contains("check"));
    let config_arg = config.to_str().unwrap();
    // The installed config holds no secret: alone it is incomplete (exit 78, naming the
    // key), ...
    let alone = daemon(&["check", "--offline", "-c", config_arg])
        .output()
        .unwrap();
    assert_eq!(alone.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&alone.stderr).contains("ami.secret"));
    // ... and as the unit runs it, with both secrets from the credential files its
    // Environment= lines name, it passes as it is.
    let credentials = dir.join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    std::fs::write(credentials.join("ami-secret"), "s3cret\n").unwrap();
    std::fs::write(
        credentials.join("zammad-url"),
        "https://zammad.example.com/api/v1/cti/TOKEN\n",
    )
    .unwrap();
    let mut as_unit = daemon(&["check", "--offline", "-c", config_arg]);
    for line in unit_text.lines() {
        let Some(assignment) = line.strip_prefix("Environment=") else {
            continue;
        };
        let (name, value) = assignment.split_once('=').unwrap();
        let value = value.replace("%d", credentials.to_str().unwrap());
        as_unit.env(name, value);
    }
    run(&mut as_unit);
    eprintln!("package test: {:.1?} in all", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}
