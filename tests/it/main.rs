//! Integration tests, one binary, one module per area.

mod cli;
mod daemon;
mod replay;
mod support;
mod tracker;
