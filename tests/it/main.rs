//! Integration tests, one binary, one module per area.

mod replay;
mod support;
mod tracker;
