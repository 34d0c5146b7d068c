//! Integration tests, one binary, one module per area.

mod agi;
mod cli;
mod daemon;
mod examples;
mod fuzz;
mod replay;
mod support;
mod tracker;
