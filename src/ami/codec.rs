//! AMI framing: bytes ⇄ `AmiMessage`. No I/O.
