//! The FastAGI parser: the input is what Asterisk sends on one connection, read as the
//! server reads it (`tests/it/fuzz/oracle.rs`); and, as a value, it must stay one word
//! of a command as `res_agi` splits it, or be refused for a line break or NUL.

#![no_main]

use asterisk_zammad_bridge::agi::AgiCommand;
use asterisk_zammad_bridge::standins::agi::split_words;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/it/fuzz/oracle.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = oracle::check_agi_session(data) {
        panic!("{e}");
    }
    let value = String::from_utf8_lossy(data);
    match AgiCommand::set_variable("X", &value) {
        Ok(command) => assert_eq!(
            split_words(command.as_str()),
            ["SET", "VARIABLE", "X", &value]
        ),
        Err(_) => assert!(value.contains(['\r', '\n', '\0'])),
    }
});
