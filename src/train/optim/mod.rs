//! Adam with weight decay (decoupled, as AdamW, or as an L2 term) and gradient clipping by the
//! global norm. The update of each parameter is one fused pass over (param, grad, m, v).

pub mod launch;

use crate::autodiff::Gradients;
use crate::ops::reduce::launch::global_norm;
use crate::runtime::cuda::DeviceBuffer;
use crate::tensor::Tensor;
use crate::{Error, Result};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WeightDecay {
    /// AdamW: shrink the weights directly, `p -= lr·wd·p`, outside the adaptive step.
    Decoupled,
    /// Classic Adam: add `wd·p` to the gradient before the moments (PyTorch `Adam(weight_decay)`).
    L2,
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub decay: WeightDecay,
    /// Rescale all gradients together when their global l2 norm exceeds this.
    pub max_grad_norm: Option<f32>,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decay: WeightDecay::Decoupled,
            max_grad_norm: None,
        }
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug)]
pub struct StepInfo {
    /// Global l2 norm of the gradients before clipping.
    pub grad_norm: f32,
    pub clipped: bool,
}

/// Step count and first and second moments, one buffer per parameter.
pub type AdamState = (u64, Vec<Vec<f32>>, Vec<Vec<f32>>);

pub struct Adam {
    pub config: AdamConfig,
    step: u64,
    /// First and second moments, one buffer per parameter (empty until its first gradient).
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// The moments of parameters that live on the GPU, kept there (`m`, `v` then hold a
    /// restored state until the first step moves it over).
    device_moments: Vec<Option<(DeviceBuffer, DeviceBuffer)>>,
}

const CHUNK: usize = 1 << 14;

impl Adam {
    pub fn new(config: AdamConfig) -> Adam {
        Adam {
            config,
            step: 0,
            m: Vec::new(),
            v: Vec::new(),
            device_moments: Vec::new(),
        }
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// The moment buffers and step count, for saving a run (moments on the GPU are copied).
    pub fn state(&self) -> Result<AdamState> {
        let (mut m, mut v) = (self.m.clone(), self.v.clone());
        for (i, moments) in self.device_moments.iter().enumerate() {
            if let Some((dm, dv)) = moments {
                m[i] = dm.to_host()?;
                v[i] = dv.to_host()?;
            }
        }
        Ok((self.step, m, v))
    }

    /// Restore a saved state (see `state`).
    pub fn restore(&mut self, step: u64, m: Vec<Vec<f32>>, v: Vec<Vec<f32>>) -> Result<()> {
        if m.len() != v.len() || m.iter().zip(&v).any(|(a, b)| a.len() != b.len()) {
            return Err(Error::Invalid(
                "optimiser state: moment buffers do not match".into(),
            ));
        }
        self.step = step;
        self.m = m;
        self.v = v;
        self.device_moments.clear();
        Ok(())
    }

    /// Update `params` (in a fixed order, the same every step) from their gradients. Parameters
    /// without a gradient are left alone, as in PyTorch. A non-finite gradient is an error and
    /// changes nothing.
    pub fn step(&mut self, params: &mut [&mut Tensor], grads: &Gradients) -> Result<StepInfo> {
        if self.m.is_empty() {
            self.m = params.iter().map(|_| Vec::new()).collect();
            self.v = params.iter().map(|_| Vec::new()).collect();
        }
        if self.m.len() != params.len() {
            return Err(Error::Invalid(format!(
                "optimiser was set up for {} parameters, got {}",
                self.m.len(),
                params.len()
            )));
        }
        // A restored state must fit the parameters it updates (both paths index by them).
        for (i, p) in params.iter().enumerate() {
            let (m, v) = (self.m[i].len(), self.v[i].len());
            if m != v || (m != 0 && m != p.numel()) {
                return Err(Error::Invalid(format!(
                    "optimiser state: parameter {i} has {} values but its moments hold {m} and \
                     {v}",
                    p.numel()
                )));
            }
        }
        if self.step == u64::MAX {
            return Err(Error::Invalid(format!(
                "optimiser state: the step count {} cannot grow",
                self.step
            )));
        }
        if params.iter().any(|p| p.is_cuda()) {
            return self.step_on_gpu(params, grads);
        }
        let sq: f64 = params
            .iter()
            .filter_map(|p| grads.get(p))
            .map(|g| {
                g.data()
                    .iter()
                    .map(|&x| (x as f64) * (x as f64))
                    .sum::<f64>()
            })
            .sum();
        let grad_norm = sq.sqrt() as f32;
        if !grad_norm.is_finite() {
            return Err(Error::Invalid(
                "non-finite gradient (NaN or infinity): the step was not applied".into(),
            ));
        }
        let clip = match self.config.max_grad_norm {
            Some(max) if grad_norm > max => max / (grad_norm + 1e-6),
            _ => 1.0,
        };
        self.step += 1;
        let c = self.config;
        // β^t is 0 in f32 long before t leaves i32, so saturating changes nothing but the wrap.
        let t = self.step.min(i32::MAX as u64) as i32;
        let step_size = c.lr / (1.0 - c.beta1.powi(t));
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let (l2, shrink) = match c.decay {
            WeightDecay::L2 => (c.weight_decay, 1.0),
            WeightDecay::Decoupled => (0.0, 1.0 - c.lr * c.weight_decay),
        };
        for (i, p) in params.iter_mut().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            let shape = p.shape().to_vec();
            let mut w = std::mem::replace(&mut **p, Tensor::scalar(0.0)).into_vec();
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            if m.is_empty() {
                *m = vec![0.0; w.len()];
                *v = vec![0.0; w.len()];
            }
            type Chunks<'a> = (((&'a mut [f32], &'a [f32]), &'a mut [f32]), &'a mut [f32]);
            let update = |(((w, g), m), v): Chunks<'_>| {
                for j in 0..w.len() {
                    let gj = g[j] * clip + l2 * w[j];
                    m[j] = c.beta1 * m[j] + (1.0 - c.beta1) * gj;
                    v[j] = c.beta2 * v[j] + (1.0 - c.beta2) * gj * gj;
                    let denom = v[j].sqrt() / bias2_sqrt + c.eps;
                    w[j] = w[j] * shrink - step_size * m[j] / denom;
                }
            };
            if w.len() > 4 * CHUNK {
                w.par_chunks_mut(CHUNK)
                    .zip(g.data().par_chunks(CHUNK))
                    .zip(m.par_chunks_mut(CHUNK))
                    .zip(v.par_chunks_mut(CHUNK))
                    .for_each(update);
            } else {
                w.chunks_mut(CHUNK)
                    .zip(g.data().chunks(CHUNK))
                    .zip(m.chunks_mut(CHUNK))
                    .zip(v.chunks_mut(CHUNK))
                    .for_each(update);
            }
            **p = Tensor::from_vec(w, &shape).requires_grad();
        }
        Ok(StepInfo {
            grad_norm,
            clipped: clip < 1.0,
        })
    }

    /// `step` for parameters on the GPU: the norm, the clipping factor and the fused update
    /// (`adam.cu`'s `adam_step`, the same arithmetic) all on the device; one value
    /// (the norm) comes back.
    fn step_on_gpu(&mut self, params: &mut [&mut Tensor], grads: &Gradients) -> Result<StepInfo> {
        use crate::ops::gpu::resident;
        let _p = crate::runtime::cuda::profile::scope("step: Adam");
        if self.device_moments.len() != params.len() {
            self.device_moments = params.iter().map(|_| None).collect();
        }
        let on_gpu: Vec<Option<Tensor>> =
            params.iter().map(|p| grads.get(p).map(resident)).collect();
        let buffers: Vec<&DeviceBuffer> = on_gpu
            .iter()
            .flatten()
            .filter_map(Tensor::cuda_buffer)
            .collect();
        let grad_norm = global_norm(&buffers)?;
        if !grad_norm.is_finite() {
            return Err(Error::Invalid(
                "non-finite gradient (NaN or infinity): the step was not applied".into(),
            ));
        }
        let clip = launch::clip_scale(grad_norm, self.config.max_grad_norm)?;
        self.step += 1;
        for (i, (p, g)) in params.iter_mut().zip(&on_gpu).enumerate() {
            let Some(g) = g.as_ref().and_then(Tensor::cuda_buffer) else {
                continue;
            };
            let moments = match self.device_moments[i].take() {
                Some(m) => m,
                None if !self.m[i].is_empty() => (
                    DeviceBuffer::from_host(&self.m[i])?,
                    DeviceBuffer::from_host(&self.v[i])?,
                ),
                None => (
                    DeviceBuffer::zeros(p.numel())?,
                    DeviceBuffer::zeros(p.numel())?,
                ),
            };
            let (mut m, mut v) = moments;
            // A new buffer: the old parameter tensor may still be held (graphs, checkpoints).
            let current = resident(p);
            let mut w = crate::ops::gpu::copy(current.cuda_buffer().expect("resident"));
            launch::adam_step(&mut w, g, &mut m, &mut v, &self.config, self.step, clip)?;
            let shape = p.shape().to_vec();
            **p = Tensor::from_device(w, &shape).requires_grad();
            self.device_moments[i] = Some((m, v));
        }
        Ok(StepInfo {
            grad_norm,
            clipped: clip < 1.0,
        })
    }
}
