//! AMI over TLS without a real Asterisk: a TLS front (tokio-rustls, with the test
//! certificates of `tests/fixtures/tls/`) before the stand-in AMI. What the admin sees:
//! `check`'s line for a trusted certificate, an untrusted one, one with its host only in the
//! CN (Asterisk's `ast_tls_cert`), a name mismatch (`ami.tls_server_name`), and a plain
//! port; the daemon, refused a certificate, names it and keeps retrying. The real Asterisk
//! with `tlsenable` is in `e2e.rs`.

use crate::support::{fixture, temp_dir};
use asterisk_zammad_bridge::standins::ami::{FakeAmi, FakeAmiConfig};
use asterisk_zammad_bridge::standins::zammad::{FakeZammad, FakeZammadConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

const SECRET: &str = "tls-ami-secret";
const TOKEN: &str = "tls-zammad-token-0123456789";

/// A TLS listener that serves `cert` and hands each connection's plain bytes to `backend`.
async fn tls_front(cert: &str, backend: SocketAddr) -> SocketAddr {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture(&format!("tls/{cert}.pem")))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture(&format!("tls/{cert}.key"))).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    // Served as it is: `with_single_cert` would refuse the v1 certificate before any
    // client could.
    let signing = provider.key_provider.load_private_key(key).unwrap();
    let certified = Arc::new(CertifiedKey::new(certs, signing));
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Always(certified)));
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to do.
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

#[derive(Debug)]
struct Always(Arc<CertifiedKey>);

impl ResolvesServerCert for Always {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

async fn stand_ins() -> (FakeAmi, FakeZammad) {
    let ami = FakeAmi::start(FakeAmiConfig {
        username: "zammad".into(),
        secret: SECRET.into(),
        ..FakeAmiConfig::default()
    })
    .await;
    let zammad = FakeZammad::start(FakeZammadConfig {
        token: TOKEN.into(),
        ..FakeZammadConfig::default()
    })
    .await
    .unwrap();
    (ami, zammad)
}

/// The config for AMI at `ami` over TLS; `extra` adds `[ami]` keys.
fn config(ami: SocketAddr, zammad: &FakeZammad, extra: &str) -> String {
    format!(
        "[ami]\naddress = \"{ami}\"\nsecret = \"{SECRET}\"\ntls = true\n{extra}\n\
         [zammad]\nurl = \"{}\"\ntimeout = \"3s\"\n",
        zammad.url()
    )
}

fn ca_file(name: &str) -> String {
    format!(
        "tls_ca_file = \"{}\"",
        fixture(&format!("tls/{name}.pem")).display()
    )
}

/// `check` on `config`: exit code and stdout + stderr.
async fn check(config: &str) -> (Option<i32>, String) {
    let dir = temp_dir("tls-check");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"));
    command
        .arg("check")
        .arg("-c")
        .arg(&path)
        .env_remove("RUST_LOG")
        .env_remove("CREDENTIALS_DIRECTORY");
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("AZB__")) {
        command.env_remove(name);
    }
    let out = command.output().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(SECRET) && !text.contains(TOKEN), "{text}");
    (out.status.code(), text)
}

#[tokio::test]
async fn check_names_each_certificate_problem_and_passes_a_trusted_one() {
    let (ami, zammad) = stand_ins().await;
    let san = tls_front("san", ami.addr()).await;
    let cn_only = tls_front("cn-only", ami.addr()).await;
    let self_signed = tls_front("self-signed", ami.addr()).await;
    let cases: Vec<(&str, String, i32, String)> = vec![
        (
            "the CA in ami.tls_ca_file",
            config(san, &zammad, &ca_file("ca")),
            0,
            format!("ami: ok (logged in as zammad at {san} over TLS (certificate valid)"),
        ),
        (
            "a self-signed certificate named in ami.tls_ca_file",
            config(self_signed, &zammad, &ca_file("self-signed")),
            0,
            format!("ami: ok (logged in as zammad at {self_signed} over TLS"),
        ),
        (
            "a name in the subjectAltName by ami.tls_server_name",
            config(
                san,
                &zammad,
                &format!("{}\ntls_server_name = \"localhost\"", ca_file("ca")),
            ),
            0,
            "over TLS (certificate valid for localhost)".to_string(),
        ),
        (
            "no ami.tls_ca_file: the system's roots do not know the test CA",
            config(san, &zammad, ""),
            1,
            format!("ami: TLS with {san} failed: certificate not trusted (unknown issuer)"),
        ),
        (
            "a name the certificate does not carry",
            config(
                san,
                &zammad,
                &format!("{}\ntls_server_name = \"pbx.example.com\"", ca_file("ca")),
            ),
            1,
            "certificate not valid for \"pbx.example.com\": it names 127.0.0.1, localhost; set \
             ami.tls_server_name"
                .to_string(),
        ),
        (
            "the host only in the CN of a v1 certificate (ast_tls_cert)",
            config(cn_only, &zammad, &ca_file("ca")),
            1,
            "an X.509 v3 certificate with a subjectAltName is needed".to_string(),
        ),
        (
            "tls = true on the plain AMI port",
            config(ami.addr(), &zammad, &ca_file("ca")),
            1,
            "the server does not speak TLS".to_string(),
        ),
    ];
    for (what, config, code, want) in cases {
        let (got, out) = check(&config).await;
        assert_eq!(got, Some(code), "{what}:\n{out}");
        assert!(out.contains(&want), "{what}: no {want:?} in\n{out}");
        if code == 1 {
            assert!(out.contains("zammad: ok"), "{what}: only AMI fails\n{out}");
        }
    }
}

/// A certificate error is not a config error: the daemon names it in the log at error
/// level, keeps retrying (no exit, so no restart loop), and logs in once it can.
#[tokio::test]
async fn the_daemon_names_a_refused_certificate_and_keeps_retrying() {
    let (ami, zammad) = stand_ins().await;
    let san = tls_front("san", ami.addr()).await;
    let dir = temp_dir("tls-daemon");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    let state = dir.join("state");
    std::fs::write(
        &path,
        format!(
            "{}[agi]\nlisten = \"\"\n[admin]\nlisten = \"\"\n[state]\ndir = \"{}\"\n",
            config(san, &zammad, ""),
            state.display()
        ),
    )
    .unwrap();
    let log = dir.join("daemon.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"));
    command
        .arg("run")
        .arg("-c")
        .arg(&path)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    crate::support::without_azb_env(&mut command);
    let mut child = command.spawn().unwrap();
    // Backoff: attempts at about 0 s, 1 s, 3 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let attempts = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let attempts = text.matches("AMI TLS handshake failed").count();
        if attempts >= 2 || std::time::Instant::now() > deadline {
            break attempts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let still_running = child.try_wait().unwrap().is_none();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(attempts >= 2, "two failed handshakes logged:\n{text}");
    assert!(still_running, "the daemon must not exit:\n{text}");
    assert!(status.success(), "{status}:\n{text}");
    assert!(
        text.contains("ERROR") && text.contains("certificate not trusted (unknown issuer)"),
        "{text}"
    );
    assert!(!text.contains(SECRET), "{text}");
    assert_eq!(ami.logins(), 0);
}
