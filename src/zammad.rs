//! zammad (work in progress)
