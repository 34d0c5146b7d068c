//! tracker (work in progress)
