//! The FastAGI parser and the live FastAGI port under hostile input: mutated sessions and
//! arbitrary lines never panic the parser; every value we send stays one word as
//! `res_agi` splits it, and line breaks are refused; hundreds of random connections
//! leave the daemon serving.

use super::oracle::check_agi_session;
use super::{Mutation, apply, bytes, cases, config, corpus, mutation, save_failure};
use crate::support::harness::Harness;
use asterisk_zammad_bridge::agi::protocol::{
    AgiCommand, AgiEnv, AgiError, AgiReply, ReplyLine, ReplyReader,
};
use asterisk_zammad_bridge::standins::agi::{FakeAgiCall, split_words};
use asterisk_zammad_bridge::standins::zammad::FakeZammadConfig;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// The corpus files and the recorded session: what Asterisk sends on one connection.
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut seeds: Vec<Vec<u8>> = corpus("agi").into_iter().map(|(_, b)| b).collect();
        seeds.push(
            std::fs::read(crate::support::fixture(
                "ami-transcripts/agi-agi-inbound.txt",
            ))
            .unwrap(),
        );
        seeds
    })
}

/// Splits a seed after its environment block, if it has a complete and valid one.
fn split_env(seed: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut env = AgiEnv::default();
    let mut at = 0;
    for line in seed.split_inclusive(|b| *b == b'\n') {
        at += line.len();
        let line = std::str::from_utf8(line).ok()?;
        if env.push_line(line.trim_end_matches('\n')).ok()? {
            return Some(seed.split_at(at));
        }
    }
    None
}

/// Seeds' valid environment blocks, and what followed them (replies).
type EnvsAndReplies = (Vec<Vec<u8>>, Vec<Vec<u8>>);

fn envs_and_replies() -> &'static EnvsAndReplies {
    static SPLIT: OnceLock<EnvsAndReplies> = OnceLock::new();
    SPLIT.get_or_init(|| {
        let (mut envs, mut replies) = (Vec::new(), Vec::new());
        for (env, rest) in seeds().iter().filter_map(|s| split_env(s)) {
            envs.push(env.to_vec());
            if !rest.is_empty() {
                replies.push(rest.to_vec());
            }
        }
        assert!(envs.len() >= 5 && replies.len() >= 5);
        (envs, replies)
    })
}

fn mutated(seeds: &'static [Vec<u8>]) -> impl Strategy<Value = Vec<u8>> {
    (any::<Index>(), proptest::collection::vec(mutation(), 0..6)).prop_map(
        move |(seed, mutations): (Index, Vec<Mutation>)| {
            let mut bytes = seeds[seed.index(seeds.len())].clone();
            for m in &mutations {
                apply(&mut bytes, m, seeds);
            }
            bytes
        },
    )
}

/// What Asterisk might send on one connection: a mutated seed; a valid environment block
/// followed by mutated replies and random lines (so the reply reader gets its share);
/// plain bytes; random lines.
fn session() -> impl Strategy<Value = Vec<u8>> {
    let (envs, replies) = envs_and_replies();
    let reply_part = prop_oneof![
        2 => mutated(replies),
        1 => line().prop_map(|l| l + "\n").prop_map(String::into_bytes),
    ];
    prop_oneof![
        3 => mutated(seeds()),
        3 => (
            proptest::sample::select(&envs[..]),
            proptest::collection::vec(reply_part, 0..8),
        )
            .prop_map(|(env, replies)| [env, replies.concat()].concat()),
        1 => bytes(2048),
        1 => proptest::collection::vec(line(), 0..40).prop_map(|lines| lines.join("\n").into_bytes()),
    ]
}

/// One line of either side's vocabulary, or anything.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "agi_[a-z_0-9]{0,12}: ?[ -~]{0,20}",
        1 => Just(String::new()),
        1 => Just("HANGUP".to_string()),
        3 => "(200|510|511|520|520-|20|2000)( result=-?[0-9]{0,20}( \\(.{0,10}\\)?)?)?.{0,10}",
        2 => any::<String>(),
        1 => "[\r\t :()\"\\\\a-z0-9=_-]{0,40}",
    ]
}

/// No CR, LF or NUL: what a command may carry.
fn one_line_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| s.replace(['\r', '\n', '\0'], "")),
        "[\"\\\\ \t()a-z;,|$]{0,30}",
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn mutated_sessions_never_panic_the_parser(bytes in session()) {
        if let Err(e) = check_agi_session(&bytes) {
            let path = save_failure("agi-session", &bytes);
            prop_assert!(false, "{e} (input in {})", path.display());
        }
    }

    #[test]
    fn arbitrary_lines_never_panic_the_parser(lines in proptest::collection::vec(line(), 0..64)) {
        let mut env = AgiEnv::default();
        let mut replies = ReplyReader::default();
        for line in &lines {
            let _ = env.push_line(line);
            let _ = replies.push_line(line);
        }
    }

    /// `GET VARIABLE`'s answer gives back the value whatever brackets it holds.
    #[test]
    fn a_value_reads_back_from_its_reply(value in one_line_value()) {
        let mut replies = ReplyReader::default();
        let reply = replies.push_line(&format!("200 result=1 ({value})")).unwrap();
        let ReplyLine::Reply(reply) = reply else { panic!("{reply:?}") };
        prop_assert_eq!(reply.value(), Some(value.as_str()));
        prop_assert_eq!(
            replies.push_line("200 result=0").unwrap(),
            ReplyLine::Reply(AgiReply::Success { result: 0, data: None })
        );
    }

    /// The injection guard: each argument is exactly one word to `res_agi`, whatever it
    /// holds (quotes, backslashes, spaces, tabs, `$`...).
    #[test]
    fn every_argument_stays_one_word(name in one_line_value(), value in one_line_value(), level in any::<u8>()) {
        let words = |c: Result<AgiCommand, AgiError>| split_words(c.unwrap().as_str());
        prop_assert_eq!(words(AgiCommand::set_variable("X", &value)), ["SET", "VARIABLE", "X", &value]);
        prop_assert_eq!(words(AgiCommand::set_variable(&name, &value)), ["SET", "VARIABLE", &name, &value]);
        prop_assert_eq!(words(AgiCommand::get_variable(&name)), ["GET", "VARIABLE", &name]);
        prop_assert_eq!(words(AgiCommand::exec(&name, &value)), ["EXEC", &name, &value]);
        prop_assert_eq!(words(AgiCommand::verbose(&value, level)), ["VERBOSE", &value, &level.to_string()]);
    }

    /// A CR, LF or NUL anywhere in any argument is refused.
    #[test]
    fn line_breaks_and_nul_are_refused(
        value in one_line_value(),
        at in any::<Index>(),
        evil in proptest::sample::select(&["\r", "\n", "\0", "\r\n", "\nHANGUP\n", "\nEXEC Hangup 17"][..]),
    ) {
        let chars: Vec<char> = value.chars().collect();
        let at = at.index(chars.len() + 1);
        let bad: String = chars[..at].iter().collect::<String>() + evil + &chars[at..].iter().collect::<String>();
        for built in [
            AgiCommand::set_variable("X", &bad),
            AgiCommand::set_variable(&bad, "1"),
            AgiCommand::get_variable(&bad),
            AgiCommand::exec("Hangup", &bad),
            AgiCommand::exec(&bad, "17"),
            AgiCommand::verbose(&bad, 1),
        ] {
            prop_assert_eq!(built, Err(AgiError::LineBreakInCommand));
        }
    }
}

/// Panics outside `tests/` (in the daemon or a dependency) since the process started. A
/// session task that panics only loses its connection, so this is how a test sees it.
fn library_panics() -> usize {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| !l.file().starts_with("tests/"))
            {
                COUNT.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    COUNT.load(Ordering::SeqCst)
}

/// One hostile connection: the bytes, whether to close our side after them, and how to
/// cut them into writes.
#[derive(Debug, Clone)]
struct Connection {
    bytes: Vec<u8>,
    close_write: bool,
    write_size: usize,
}

fn connection() -> impl Strategy<Value = Connection> {
    (
        prop_oneof![
            4 => session(),
            1 => proptest::collection::vec(any::<u8>(), 0..4096),
        ],
        proptest::bool::weighted(0.8),
        prop_oneof![Just(usize::MAX), 1..64usize],
    )
        .prop_map(|(bytes, close_write, write_size)| Connection {
            bytes,
            close_write,
            write_size,
        })
}

/// Sends one connection's bytes and reads until the server closes the connection: the
/// number of bytes it wrote (commands), or `None` if it never closed.
async fn send(agi: std::net::SocketAddr, c: &Connection) -> Option<usize> {
    let mut stream = TcpStream::connect(agi).await.ok()?;
    for chunk in c.bytes.chunks(c.write_size.max(1)) {
        // The server may close first (garbage): the rest of the write then fails.
        if stream.write_all(chunk).await.is_err() {
            break;
        }
    }
    if c.close_write {
        let _ = stream.shutdown().await;
    }
    let mut sink = Vec::new();
    // Closed or reset (the server closed with our bytes unread): either way it is gone.
    let _closed_or_reset =
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink))
            .await
            .ok()?;
    Some(sink.len())
}

/// Random bytes and mutated sessions on the daemon's FastAGI port, 32 connections at a
/// time: every connection is closed, nothing panics, and a normal session works after.
/// `AZB_FUZZ_SEED` replays a run; `AZB_FUZZ_CASES` sets the number of connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fastagi_port_survives_random_connections() {
    let h = Harness::start(FakeZammadConfig::default(), |c| {
        c.agi.idle_timeout = Duration::from_millis(300);
        c.agi.decision_timeout = Duration::from_millis(300);
    })
    .await;
    let panics_before = library_panics();
    let seed: u64 = std::env::var("AZB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let n = cases(300).min(20_000) as usize;
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let strategy = connection();
    let connections: Vec<Connection> = (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    let started = std::time::Instant::now();
    let mut running: JoinSet<(usize, Option<usize>)> = JoinSet::new();
    let mut left_open = Vec::new();
    let mut answered = 0;
    for (i, c) in connections.iter().cloned().enumerate() {
        if running.len() >= 32
            && let Some(done) = running.join_next().await
        {
            match done.unwrap() {
                (i, None) => left_open.push(i),
                (_, Some(written)) => answered += usize::from(written > 0),
            }
        }
        let agi = h.agi;
        running.spawn(async move { (i, send(agi, &c).await) });
    }
    while let Some(done) = running.join_next().await {
        match done.unwrap() {
            (i, None) => left_open.push(i),
            (_, Some(written)) => answered += usize::from(written > 0),
        }
    }
    for &i in &left_open {
        save_failure(&format!("agi-port-open-{i}"), &connections[i].bytes);
    }
    assert!(
        left_open.is_empty(),
        "seed {seed}: the server left {} connection(s) open: {left_open:?}",
        left_open.len()
    );
    assert_eq!(
        library_panics(),
        panics_before,
        "seed {seed}: something panicked while the connections ran (see the output)"
    );
    assert!(!h.daemon.is_finished(), "seed {seed}: the daemon stopped");
    eprintln!(
        "{n} FastAGI connections (seed {seed}) in {:?}; the script ran on {answered}",
        started.elapsed()
    );
    // Enough of them were sessions (the script sent commands) to reach past the parser.
    assert!(
        answered * 10 >= n,
        "seed {seed}: only {answered} sessions of {n}"
    );
    // A normal session still works.
    let mut call = FakeAgiCall::inbound("1795596443.98", "1795596443.99", "+15555550100", "800");
    call.channel = "Local/800@from-trunk-00000063;2".into();
    assert!(h.ami.send_raw(crate::support::encode(&[call.newchannel()])));
    let t = tokio::time::timeout(Duration::from_secs(10), call.run(h.agi))
        .await
        .expect("the session ends")
        .expect("the session runs");
    assert_eq!(
        t.commands[1..],
        [
            r#"SET VARIABLE "ZAMMAD_CALLID" "1795596443.98""#,
            r#"SET VARIABLE "ZAMMAD_ACTION" "continue""#,
        ]
    );
    h.stop().await;
}
