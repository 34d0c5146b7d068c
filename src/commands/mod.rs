//! The commands besides `run`: [`check`] (validate the config, probe AMI and Zammad),
//! [`replay`] (recorded AMI through the call model, printed as JSON lines), [`record`]
//! (what Asterisk sends on AMI, to a file `replay` reads) and [`demo`] (the real daemon
//! between the stand-ins, fed recorded calls).

pub mod check;
pub mod demo;
pub mod record;
pub mod replay;
