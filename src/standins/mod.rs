//! Faithful stand-ins for the bridge's peers, for the tests, the benchmarks and the demo;
//! no product code imports them: [`zammad`] (Zammad's CTI endpoint, block list, routing
//! table, caller log), [`ami`] (Asterisk's manager interface, scripted) and [`agi`]
//! (Asterisk's side of a FastAGI session).

pub mod agi;
pub mod ami;
pub mod zammad;
