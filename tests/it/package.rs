//! The Debian package (`cargo deb`, `[package.metadata.deb]` in Cargo.toml): built from the
//! binary this test run already has, unpacked with `dpkg -x` into a temp root, and looked
//! at: every file where the unit and the README expect it (binary, unit, conffile, man
//! pages, completions, monitoring, docs, copyright), the binary runs, and the config
//! (`systemd/config.toml`, no secrets) passes the daemon's own check the way the unit runs
//! it. Beside it: the maintainer scripts run against fake `systemctl`,
//! `deb-systemd-helper` and `deb-systemd-invoke` (systemd is not PID 1 here) for install,
//! upgrade, remove and purge; the man pages and completions are the ones the CLI
//! generates; the alert rules pass `promtool`; the package passes `lintian` with the
//! overrides it ships, each explained.
//!
//! cargo-deb is installed (`cargo install cargo-deb --version CARGO_DEB --locked`, into
//! ~/.cargo/bin) when missing. `AZB_SKIP_DEB=1` skips the package tests; without it, a
//! cargo-deb that cannot be installed, or no `dpkg`, fails them. promtool and lintian are
//! used where installed (`.ci/run` installs them) and otherwise skipped, saying so.

use crate::support::temp_dir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
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

/// The package, built once per test run: the temp dir it is in, and the .deb; `None`
/// when skipped (AZB_SKIP_DEB=1).
fn deb() -> Option<&'static (PathBuf, PathBuf)> {
    static DEB: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    DEB.get_or_init(build_deb).as_ref()
}

fn build_deb() -> Option<(PathBuf, PathBuf)> {
    if !ensure_cargo_deb() {
        return None;
    }
    if Command::new("dpkg").arg("--version").output().is_err() {
        assert!(
            skip_requested(),
            "dpkg is missing: the package cannot be unpacked (AZB_SKIP_DEB=1 skips this test)"
        );
        eprintln!("SKIPPED: no dpkg and AZB_SKIP_DEB=1");
        return None;
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
    Some((dir, deb))
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A control file of the package (`conffiles`, `postinst`, ...).
fn control_file(deb: &Path, name: &str) -> String {
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --ctrl-tarfile '{}' | tar -xO ./{name}",
        deb.display()
    )));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn deb_installs_binary_unit_config_and_what_an_admin_needs() {
    let Some((dir, deb)) = deb() else {
        return;
    };
    let manifest_dir = manifest_dir();
    let root = dir.join("root");
    run(Command::new("dpkg").arg("-x").arg(deb).arg(&root));
    assert_eq!(
        control_file(deb, "conffiles").trim(),
        "/etc/asterisk-zammad-bridge/config.toml",
        "the config is a conffile: an upgrade keeps local changes"
    );
    // The maintainer scripts are ours, as they are in the repository.
    for script in ["postinst", "prerm", "postrm"] {
        assert_eq!(
            control_file(deb, script),
            read(&manifest_dir.join("packaging/debian").join(script)),
            "{script}"
        );
    }

    let bin = root.join("usr/bin").join(NAME);
    let unit = root
        .join("lib/systemd/system")
        .join(format!("{NAME}.service"));
    let config = root.join("etc").join(NAME).join("config.toml");
    let doc = root.join("usr/share/doc").join(NAME);
    let examples = doc.join("examples");
    assert_eq!(
        read(&unit),
        read(&manifest_dir.join("systemd").join(format!("{NAME}.service")))
    );
    let unit_text = read(&unit);
    assert!(unit_text.contains(&format!(
        "ExecStart=/usr/bin/{NAME} run -c /etc/{NAME}/config.toml"
    )));
    assert_eq!(
        read(&config),
        read(&manifest_dir.join("systemd/config.toml"))
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
    // What the README and the man pages point to, and what an admin loads elsewhere.
    let shipped: &[(&str, &str)] = &[
        (
            "usr/share/doc/asterisk-zammad-bridge/README.md",
            "README.md",
        ),
        (
            "usr/share/doc/asterisk-zammad-bridge/docs/configuration.md",
            "docs/configuration.md",
        ),
        (
            "usr/share/doc/asterisk-zammad-bridge/docs/commands.md",
            "docs/commands.md",
        ),
        (
            "usr/share/doc/asterisk-zammad-bridge/changelog.Debian.gz",
            "",
        ),
        ("usr/share/doc/asterisk-zammad-bridge/copyright", ""),
        ("usr/share/man/man1/asterisk-zammad-bridge.1.gz", ""),
        ("usr/share/man/man1/asterisk-zammad-bridge-record.1.gz", ""),
        (
            "usr/share/bash-completion/completions/asterisk-zammad-bridge",
            "packaging/completions/asterisk-zammad-bridge.bash",
        ),
        (
            "usr/share/zsh/vendor-completions/_asterisk-zammad-bridge",
            "packaging/completions/_asterisk-zammad-bridge",
        ),
        (
            "usr/share/asterisk-zammad-bridge/monitoring/alerts.yml",
            "monitoring/alerts.yml",
        ),
        (
            "usr/share/asterisk-zammad-bridge/monitoring/grafana-dashboard.json",
            "monitoring/grafana-dashboard.json",
        ),
    ];
    for (installed, source) in shipped {
        let path = root.join(installed);
        assert!(path.is_file(), "{installed} is missing");
        if !source.is_empty() {
            assert_eq!(read(&path), read(&manifest_dir.join(source)), "{installed}");
        }
    }
    // The copyright names the license of Cargo.toml and carries its text.
    let copyright = read(&doc.join("copyright"));
    assert!(copyright.contains("MIT"), "{copyright}");
    assert!(
        copyright.contains("Permission is hereby granted, free of charge"),
        "{copyright}"
    );
    // The man pages are the generated ones, compressed.
    let man = run(Command::new("sh").arg("-c").arg(format!(
        "gzip -dc '{}'",
        root.join("usr/share/man/man1/asterisk-zammad-bridge.1.gz")
            .display()
    )));
    assert_eq!(
        String::from_utf8_lossy(&man.stdout),
        read(&manifest_dir.join("packaging/man/asterisk-zammad-bridge.1"))
    );
    // Every file of the package is root's; nothing but the binary is executable.
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        assert!(
            line.contains(" root/root ") || line.contains(" 0/0 "),
            "{line}"
        );
        let executable = line.starts_with("-rwx");
        assert_eq!(
            executable,
            line.ends_with("./usr/bin/asterisk-zammad-bridge"),
            "{line}"
        );
    }

    let daemon = |args: &[&str]| {
        let mut command = Command::new(&bin);
        command
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("CREDENTIALS_DIRECTORY");
        crate::support::without_azb_env(&mut command);
        command
    };
    let help = run(&mut daemon(&["--help"]));
    assert!(String::from_utf8_lossy(&help.stdout).contains("check"));
    let version = run(&mut daemon(&["--version"]));
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.starts_with(&format!("{NAME} {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let config_arg = config.to_str().unwrap();
    // The installed config holds no secret: alone it is incomplete (exit 78, naming the
    // key), unless this machine has the credential files in /etc.
    if !crate::support::etc_has_credentials() {
        let alone = daemon(&["check", "--offline", "-c", config_arg])
            .output()
            .unwrap();
        assert_eq!(alone.status.code(), Some(78));
        assert!(String::from_utf8_lossy(&alone.stderr).contains("ami.secret"));
    }
    // ... and as the unit runs it, with both secrets from the credential files its
    // Environment= lines name, it passes as it is; so it does with $CREDENTIALS_DIRECTORY
    // alone.
    let credentials = dir.join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    std::fs::write(credentials.join("ami-secret"), "s3cret\n").unwrap();
    std::fs::write(
        credentials.join("zammad-url"),
        "https://zammad.example.com/api/v1/cti/aB3dE6\n",
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
    let mut by_directory = daemon(&["check", "--offline", "-c", config_arg]);
    by_directory.env("CREDENTIALS_DIRECTORY", &credentials);
    run(&mut by_directory);
}

/// The files in `packaging/` that the CLI definition (src/cli.rs) generates: the man pages
/// (one per command, plus `packaging/man/sections.roff` appended to the main page) and the
/// bash and zsh completions. A stale file is written anew and the test fails: commit it.
#[test]
fn man_pages_and_completions_are_generated_from_the_cli() {
    use asterisk_zammad_bridge::cli::Cli;
    use clap_complete::Shell;
    let dir = manifest_dir().join("packaging");
    let mut cmd = Cli::command_for_docs();
    cmd.build();
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let mut main = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut main)
        .unwrap();
    main.extend_from_slice(read(&dir.join("man/sections.roff")).as_bytes());
    files.push((dir.join(format!("man/{NAME}.1")), main));
    for sub in cmd.get_subcommands() {
        let name = format!("{NAME}-{}", sub.get_name());
        let mut page = Vec::new();
        clap_mangen::Man::new(
            sub.clone()
                .name(&*Box::leak(name.clone().into_boxed_str()))
                .version(env!("CARGO_PKG_VERSION")),
        )
        .render(&mut page)
        .unwrap();
        files.push((dir.join(format!("man/{name}.1")), page));
    }
    for (shell, file) in [
        (Shell::Bash, format!("{NAME}.bash")),
        (Shell::Zsh, format!("_{NAME}")),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, NAME, &mut script);
        files.push((dir.join("completions").join(file), script));
    }
    let mut stale = Vec::new();
    for (path, content) in &files {
        if std::fs::read(path).ok().as_ref() != Some(content) {
            std::fs::write(path, content).unwrap();
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "generated anew from src/cli.rs (commit them): {stale:?}"
    );
    let pages = std::fs::read_dir(dir.join("man")).unwrap().count();
    assert_eq!(
        pages,
        files.len() - 2 + 1,
        "man/ holds the pages and sections.roff only"
    );
}

/// The maintainer scripts as dpkg runs them, with systemd as PID 1 (a private mount
/// namespace with a tmpfs on /run holding /run/systemd/system) and `systemctl`,
/// `deb-systemd-helper` and `deb-systemd-invoke` replaced by fakes that log their
/// arguments: install enables and does not start, an upgrade try-restarts, a remove stops
/// and masks, a purge forgets the unit and deletes the state and the secrets (under
/// `DPKG_ROOT`, a temp dir). Without root (no mount namespace) only the purge runs.
#[test]
fn maintainer_scripts_enable_restart_stop_and_purge() {
    let scripts = manifest_dir().join("packaging/debian");
    let dir = temp_dir("maintainer-scripts");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("calls.log");
    for fake in ["systemctl", "deb-systemd-helper", "deb-systemd-invoke"] {
        let path = bin.join(fake);
        // was-enabled answers "no" once the log shows an earlier enable or disable: as
        // deb-systemd-helper does from its state file.
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{fake} $*\" >>'{}'\n\
                 if [ \"$1 $2\" = \"--quiet was-enabled\" ]; then ! grep -q 'deb-systemd-helper disable' '{}'; exit $?; fi\n\
                 if [ \"$1\" = debian-installed ]; then grep -q 'deb-systemd-helper enable' '{}'; exit $?; fi\n\
                 exit 0\n",
                log.display(),
                log.display(),
                log.display()
            ),
        )
        .unwrap();
        run(Command::new("chmod").arg("755").arg(&path));
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Runs `script args` with systemd "running"; the fakes' log lines it caused.
    let as_root = can_unshare_mounts();
    let step = |script: &str, args: &[&str]| -> Vec<String> {
        let _ = std::fs::remove_file(&log);
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && exec sh \"$0\" \"$@\"",
            )
            .arg(scripts.join(script))
            .args(args)
            .env("PATH", &path)
            .env_remove("DPKG_ROOT");
        run(&mut command);
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let unit = "asterisk-zammad-bridge.service";
    if as_root {
        assert_eq!(
            step("postinst", &["configure", ""]),
            [
                format!("deb-systemd-helper unmask {unit}"),
                format!("deb-systemd-helper --quiet was-enabled {unit}"),
                format!("deb-systemd-helper enable {unit}"),
                "systemctl --system daemon-reload".to_string(),
            ],
            "install: enabled, not started (no secrets yet)"
        );
        assert_eq!(
            step("postinst", &["configure", "0.0.9-1"]),
            [
                format!("deb-systemd-helper unmask {unit}"),
                format!("deb-systemd-helper --quiet was-enabled {unit}"),
                format!("deb-systemd-helper enable {unit}"),
                "systemctl --system daemon-reload".to_string(),
                format!("deb-systemd-invoke try-restart {unit}"),
            ],
            "upgrade: restarted if running"
        );
        assert_eq!(step("prerm", &["upgrade", "0.1.1-1"]), Vec::<String>::new());
        assert_eq!(
            step("prerm", &["remove"]),
            [format!("deb-systemd-invoke stop {unit}")],
            "remove: stopped"
        );
        assert_eq!(
            step("postrm", &["remove"]),
            [
                "systemctl --system daemon-reload".to_string(),
                format!("deb-systemd-helper mask {unit}"),
            ]
        );
    } else {
        eprintln!("SKIPPED (not root: no mount namespace): install, upgrade and remove");
    }
    // Purge, in a fake root: the state and the secrets go, the config dir with them once empty.
    let root = dir.join("root");
    for file in [
        "var/lib/private/asterisk-zammad-bridge/journal",
        "etc/asterisk-zammad-bridge/ami-secret",
        "etc/asterisk-zammad-bridge/zammad-url",
        "usr/bin/deb-systemd-helper",
    ] {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "x").unwrap();
    }
    run(Command::new("chmod")
        .arg("755")
        .arg(root.join("usr/bin/deb-systemd-helper")));
    std::os::unix::fs::symlink(
        "private/asterisk-zammad-bridge",
        root.join("var/lib/asterisk-zammad-bridge"),
    )
    .unwrap();
    let _ = std::fs::remove_file(&log);
    run(Command::new("sh")
        .arg(scripts.join("postrm"))
        .arg("purge")
        .env("PATH", &path)
        .env("DPKG_ROOT", &root));
    assert_eq!(
        read(&log).lines().collect::<Vec<_>>(),
        [
            format!("deb-systemd-helper purge {unit}"),
            format!("deb-systemd-helper unmask {unit}"),
        ]
    );
    for gone in [
        "var/lib/private/asterisk-zammad-bridge",
        "var/lib/asterisk-zammad-bridge",
        "etc/asterisk-zammad-bridge",
    ] {
        assert!(
            std::fs::symlink_metadata(root.join(gone)).is_err(),
            "{gone} is left after a purge"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether this process may make a mount namespace (root, and not in a container that
/// forbids it).
fn can_unshare_mounts() -> bool {
    Command::new("unshare")
        .args(["--mount", "true"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `promtool check rules` and `promtool test rules` on monitoring/ (skipped, saying so,
/// where promtool is not installed; `.ci/run` installs it).
#[test]
fn alert_rules_pass_promtool() {
    let monitoring = manifest_dir().join("monitoring");
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!("SKIPPED: promtool is not installed (apt-get install prometheus)");
        return;
    }
    run(Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&monitoring));
    run(Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&monitoring));
    // The dashboard is JSON whose panels query only metrics the daemon exports.
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&monitoring.join("grafana-dashboard.json"))).unwrap();
    let docs = read(&manifest_dir().join("docs/observability.md"));
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for metric in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("azb_"))
            {
                let base = metric.trim_end_matches("_bucket");
                assert!(docs.contains(&format!("`{base}")), "{metric} in {expr}");
            }
        }
    }
}

/// lintian on the package: no error or warning beyond the overrides the package ships
/// (`packaging/debian/lintian-overrides`, each with its reason). Skipped, saying so, where
/// lintian is not installed (`.ci/run` installs it).
#[test]
fn lintian_finds_nothing_unexplained() {
    let Some((_, deb)) = deb() else {
        return;
    };
    if Command::new("lintian").arg("--version").output().is_err() {
        eprintln!("SKIPPED: lintian is not installed (apt-get install lintian)");
        return;
    }
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--display-level", ">=warning"])
        .arg(deb)
        .output()
        .expect("run lintian");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "lintian:\n{text}");
}
