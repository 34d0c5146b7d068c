//! Integration tests, one binary, one module per area.

mod cli;
mod daemon;
mod e2e;
mod replay;
mod support;
mod tracker;
