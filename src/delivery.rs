//! delivery (work in progress)
