//! The AMI connection task and its handle.
