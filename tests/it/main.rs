//! Integration tests, one binary, one module per area.

mod admin;
mod agi;
mod attacks;
mod cli;
mod daemon;
mod e2e;
mod examples;
mod expectations;
mod faults;
mod fuzz;
mod package;
mod record;
mod recovery;
mod replay;
mod support;
mod systemd;
mod tls;
mod tracker;
