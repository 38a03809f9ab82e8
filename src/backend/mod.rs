//! Compute backends. `cpu` is the reference implementation of every op.

pub mod cpu;

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));
