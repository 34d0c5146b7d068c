//! replay (work in progress)
