//! The commands besides `run`: [`check`] (validate the config, probe AMI and Zammad),
//! [`replay`] (recorded AMI through the call model, printed as JSON lines) and [`demo`]
//! (the real daemon between the stand-ins, fed recorded calls).

pub mod check;
pub mod demo;
pub mod replay;
