//! fake_zammad (work in progress)
