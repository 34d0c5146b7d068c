//! Build script: the commit and the build date for `--version` (src/cli.rs), as the
//! environment variables AZB_BUILD_COMMIT and AZB_BUILD_DATE. Never uses the network.
//!
//! - Commit: `git rev-parse --short=12 HEAD` when the source is a git checkout; else
//!   AZB_BUILD_COMMIT from the environment (a packager building from a tarball sets it);
//!   else "unknown".
//! - Date (UTC, YYYY-MM-DD): from SOURCE_DATE_EPOCH when set (reproducible builds), else
//!   today's.
//!
//! It runs again when HEAD moves (a commit, a checkout) or either variable changes.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-env-changed=AZB_BUILD_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let commit = git(&["rev-parse", "--short=12", "HEAD"])
        .or_else(|| std::env::var("AZB_BUILD_COMMIT").ok())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    // HEAD and the branch it points to (or packed-refs) change with every commit. Only
    // paths that exist are named: cargo takes a missing one as changed, and would then
    // rebuild the crate on every build. A branch kept only in packed-refs is watched by
    // its directory, where the next commit writes it.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        watch(&head);
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(path) = git(&["rev-parse", "--git-path", &branch])
        && !watch(&path)
        && let Some(dir) = Path::new(&path).parent()
    {
        watch(&dir.to_string_lossy());
    }
    if let Some(packed) = git(&["rev-parse", "--git-path", "packed-refs"]) {
        watch(&packed);
    }
    println!("cargo:rerun-if-changed=build.rs");
    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    println!("cargo:rustc-env=AZB_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=AZB_BUILD_DATE={}", date(seconds));
}

/// Asks cargo to run this script again when `path` changes, if it exists; says whether
/// it does.
fn watch(path: &str) -> bool {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let exists = Path::new(&dir).join(path).exists();
    if exists {
        println!("cargo:rerun-if-changed={path}");
    }
    exists
}

/// A git command's trimmed output in the package's directory; `None` without git or a
/// repository (a tarball).
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    if !Path::new(&dir).join(".git").exists() {
        return None;
    }
    let out = Command::new("git")
        .args(args)
        .current_dir(&dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// `YYYY-MM-DD` (UTC) of a Unix time, by the days-to-civil algorithm.
fn date(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
