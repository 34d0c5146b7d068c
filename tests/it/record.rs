//! `record` → `replay`: the binary records what the stand-in AMI sends (a recorded lab
//! call, after the banner and the login's answers), and `replay` of the recording prints
//! exactly what `replay` of the original prints. The recording holds what Asterisk sent
//! and nothing this side wrote: no login, no secret. It is created with mode 0600 and
//! never overwrites a file.

use crate::support::{fixture, temp_dir};
use asterisk_zammad_bridge::standins::ami::{FakeAmi, FakeAmiConfig};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

const SECRET: &str = "record-secret-value";

fn bridge() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"));
    command
        .env_remove("RUST_LOG")
        .env_remove("CREDENTIALS_DIRECTORY");
    for (name, _) in std::env::vars().filter(|(n, _)| n.to_ascii_uppercase().starts_with("AZB__")) {
        command.env_remove(name);
    }
    command
}

async fn replay(config: &Path, transcript: &Path) -> String {
    let out = bridge()
        .arg("replay")
        .arg("-c")
        .arg(config)
        .arg(transcript)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_recording_replays_as_the_original_and_holds_no_secret() {
    let ami = FakeAmi::start(FakeAmiConfig {
        username: "zammad".into(),
        secret: SECRET.into(),
        ..FakeAmiConfig::default()
    })
    .await;
    let dir = temp_dir("record");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[ami]\naddress = \"{}\"\nusername = \"zammad\"\nsecret = \"{SECRET}\"\n\
             [calls]\ninbound_contexts = [\"from-trunk\"]\noutbound_contexts = [\"from-internal\"]\n\
             [numbers]\ncountry_code = \"1\"\n[agents]\n\"201\" = \"Alice\"\n\"202\" = \"Bob\"\n",
            ami.addr()
        ),
    )
    .unwrap();
    let output = dir.join("capture.ami");
    let original = fixture("ami-transcripts/inbound-answered.txt");

    let recorder = bridge()
        .arg("record")
        .arg("-c")
        .arg(&config)
        .args(["--for", "3s"])
        .arg(&output)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), ami.wait_logged_in())
        .await
        .expect("record logs in");
    let sent = ami
        .send_events(&std::fs::read(&original).unwrap())
        .expect("a logged-in connection");
    assert!(sent > 10, "{sent} events");
    let done = tokio::time::timeout(Duration::from_secs(10), recorder.wait_with_output())
        .await
        .expect("record stops after --for")
        .unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(
        stderr.contains("recorded ") && stderr.contains("(after 3s)"),
        "{stderr}"
    );
    assert!(stderr.contains("phone numbers"), "{stderr}");

    let recording = std::fs::read(&output).unwrap();
    let text = String::from_utf8_lossy(&recording);
    assert!(
        text.starts_with("Asterisk Call Manager/"),
        "the banner first: {text:.80}"
    );
    assert!(
        text.contains("Authentication accepted"),
        "the login's answer is Asterisk's"
    );
    assert!(!text.contains(SECRET), "the secret");
    assert!(
        !text.contains("Action: Login") && !text.contains("Key: "),
        "the login"
    );
    let mode = std::fs::metadata(&output).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let from_recording = replay(&config, &output).await;
    assert!(
        from_recording.contains("\"event\":\"newCall\""),
        "{from_recording}"
    );
    assert_eq!(from_recording, replay(&config, &original).await);

    // An existing file is never overwritten.
    let again = bridge()
        .arg("record")
        .arg("-c")
        .arg(&config)
        .args(["--for", "1s"])
        .arg(&output)
        .output()
        .await
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("failed to create"),
        "{again:?}"
    );
    assert_eq!(std::fs::read(&output).unwrap(), recording);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn record_refuses_a_config_it_cannot_log_in_with() {
    let dir = temp_dir("record-config");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(&config, "[ami]\nsecret = \"change-me\"\n").unwrap();
    let out = bridge()
        .arg("record")
        .arg("-c")
        .arg(&config)
        .arg(dir.join("out"))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("ami.secret is still the example's placeholder"),
        "{out:?}"
    );
    assert!(!dir.join("out").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
