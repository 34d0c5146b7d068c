//! Pure call policy: number normalisation and cause mapping. No I/O, no clocks.

pub mod cause;
pub mod number;
