//! Compute backends. `cpu` is the reference implementation of every op.

pub mod cpu;
