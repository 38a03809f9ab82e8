//! Where a tensor's data lives. A value chosen at run time, so one binary serves every machine.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// Host memory; ops run on the rayon thread pool.
    #[default]
    Cpu,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
        }
    }
}

impl FromStr for Device {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            d if d == "cuda" || d.starts_with("cuda:") => Err(crate::Error::Invalid(
                "device 'cuda': training and evaluation run on the CPU in this version (the CUDA \
                 kernels in kernels/*.cu are built and tested op by op, but tensors do not yet \
                 live on the GPU through a whole step); use --device cpu"
                    .into(),
            )),
            other => Err(crate::Error::Invalid(format!(
                "unknown device '{other}' (expected 'cpu')"
            ))),
        }
    }
}
