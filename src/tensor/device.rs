//! Where a tensor's data lives. A value chosen at run time, so one binary serves every machine.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// Host memory; ops run on the rayon thread pool.
    #[default]
    Cpu,
    /// The first NVIDIA GPU; ops with a kernel in `src/**/*.cu` run there.
    Cuda,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda => write!(f, "cuda"),
        }
    }
}

impl Device {
    /// Whether this machine can run it: for `cuda`, the driver, a device and NVRTC are there
    /// (an error names what is missing).
    pub fn check(self) -> crate::Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda => crate::runtime::cuda::cuda().map(|_| ()),
        }
    }
}

impl FromStr for Device {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "cuda:0" => Ok(Device::Cuda),
            other => Err(crate::Error::Invalid(format!(
                "unknown device '{other}' (expected 'cpu' or 'cuda')"
            ))),
        }
    }
}
