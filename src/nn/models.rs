//! The named architectures, built from a name, an input shape and a width multiplier.
//!
//! - `mlp`:   Flatten, FC 256, ReLU, FC 256, ReLU, FC classes (widths × width).
//! - `small`: Conv 16 k4 s2 p1, ReLU, Conv 32 k4 s1 p1, ReLU, Flatten, FC 100, ReLU, FC classes.
//! - `cnn7`:  Conv 64,64,128,128,128 (k3 p1, strides 1,1,2,1,1), each + BN + ReLU; Flatten,
//!   FC 512 + BN + ReLU, FC classes (channel counts × width, `--width 0.25` gives
//!   16,16,32,32,32 and FC 128).

use crate::nn::{BatchNorm, Conv2d, Init, Layer, Linear, Mode, Sequential};
use crate::ops::Conv2dParams;
use crate::rng::Rng;
use crate::runtime::memory;
use crate::tensor::Tensor;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Mlp,
    Small,
    Cnn7,
    /// A network read from another format (`onnx::import`): its layers are given, not planned
    /// from a name, so it cannot be rebuilt from a checkpoint's description.
    #[value(skip)]
    Custom,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Mlp => "mlp",
            Arch::Small => "small",
            Arch::Cnn7 => "cnn7",
            Arch::Custom => "custom",
        }
    }
}

/// Per-channel input normalisation `(x − mean) / std`, applied before the first layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// The per-channel map as `x·scale + shift` (scale = 1/std, shift = −mean/std), as tensors
    /// on `device`: on the GPU, constants uploaded once per process (a copy from the host on
    /// every pass would wait for the stream).
    pub fn affine(&self, device: crate::Device) -> (Tensor, Tensor) {
        let scale: Vec<f32> = self.std.iter().map(|s| 1.0 / s).collect();
        let shift: Vec<f32> = self
            .mean
            .iter()
            .zip(&self.std)
            .map(|(m, s)| -m / s)
            .collect();
        let c = scale.len();
        (
            Tensor::constant_on(&scale, &[c], device),
            Tensor::constant_on(&shift, &[c], device),
        )
    }
}

/// Everything needed to rebuild a model's structure (stored in checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub arch: Arch,
    /// [channels, height, width] of one input.
    pub input_shape: [usize; 3],
    pub num_classes: usize,
    pub width: f32,
    pub normalization: Option<Normalization>,
    pub init: Init,
}

impl ModelSpec {
    pub fn new(arch: Arch, input_shape: [usize; 3], num_classes: usize) -> ModelSpec {
        ModelSpec {
            arch,
            input_shape,
            num_classes,
            width: 1.0,
            normalization: None,
            init: Init::Pytorch,
        }
    }

    fn validate(&self) -> Result<()> {
        let [c, h, w] = self.input_shape;
        if c == 0 || h == 0 || w == 0 || self.num_classes < 2 {
            return Err(Error::Invalid(format!(
                "model {}: input shape {:?} and {} classes are not a classification problem",
                self.arch.name(),
                self.input_shape,
                self.num_classes
            )));
        }
        if !(self.width.is_finite() && self.width > 0.0 && self.width <= 64.0) {
            return Err(Error::Invalid(format!(
                "model width must be in (0, 64], got {}",
                self.width
            )));
        }
        // Bounds that keep every size computation far from overflow.
        if c > 4096 || h > 4096 || w > 4096 || self.num_classes > 1 << 20 {
            return Err(Error::Invalid(format!(
                "input shape {:?} with {} classes is larger than supported (4096 per axis)",
                self.input_shape, self.num_classes
            )));
        }
        let min_side = match self.arch {
            Arch::Mlp | Arch::Custom => 1,
            Arch::Small => 4,
            Arch::Cnn7 => 2,
        };
        if h < min_side || w < min_side {
            return Err(Error::Invalid(format!(
                "model {} needs inputs of at least {min_side}x{min_side}, got {h}x{w}",
                self.arch.name()
            )));
        }
        if let Some(n) = &self.normalization {
            // The first layer computes x·(1/std) − mean/std in f32: both must be finite, or
            // every activation after it is NaN or infinite.
            let usable = |(&m, &s): (&f32, &f32)| {
                m.is_finite()
                    && s.is_finite()
                    && s > 0.0
                    && (1.0 / s).is_finite()
                    && (m / s).is_finite()
            };
            if n.mean.len() != c || n.std.len() != c || !n.mean.iter().zip(&n.std).all(usable) {
                return Err(Error::Invalid(format!(
                    "normalisation needs {c} finite means and {c} positive stds with 1/std and \
                     mean/std finite in f32, got {:?} / {:?}",
                    n.mean, n.std
                )));
            }
        }
        Ok(())
    }
}

/// A named architecture with its weights. Cloning shares the weights' storage (cheap).
#[derive(Clone)]
pub struct Model {
    pub spec: ModelSpec,
    pub net: Sequential,
}

fn scaled(channels: usize, width: f32) -> usize {
    ((channels as f32 * width).round() as usize).max(1)
}

/// The shape of one layer, before any weight exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerPlan {
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        params: Conv2dParams,
    },
    Linear {
        in_features: usize,
        out_features: usize,
    },
    BatchNorm {
        channels: usize,
        spatial_dims: usize,
    },
    ReLU,
    Flatten,
}

impl LayerPlan {
    /// Number of values in this layer's state dict (parameters and running statistics).
    pub fn state_len(&self) -> usize {
        match *self {
            LayerPlan::Conv2d {
                in_channels,
                out_channels,
                kernel,
                ..
            } => out_channels * (in_channels * kernel * kernel + 1),
            LayerPlan::Linear {
                in_features,
                out_features,
            } => out_features * (in_features + 1),
            LayerPlan::BatchNorm { channels, .. } => 4 * channels,
            LayerPlan::ReLU | LayerPlan::Flatten => 0,
        }
    }

    fn build(self, rng: &mut Rng) -> Layer {
        match self {
            LayerPlan::Conv2d {
                in_channels,
                out_channels,
                kernel,
                params,
            } => Layer::Conv2d(Conv2d::new(in_channels, out_channels, kernel, params, rng)),
            LayerPlan::Linear {
                in_features,
                out_features,
            } => Layer::Linear(Linear::new(in_features, out_features, rng)),
            LayerPlan::BatchNorm {
                channels,
                spatial_dims,
            } => Layer::BatchNorm(BatchNorm::new(channels, spatial_dims)),
            LayerPlan::ReLU => Layer::ReLU,
            LayerPlan::Flatten => Layer::Flatten,
        }
    }
}

impl ModelSpec {
    /// The layers this spec describes, with their shapes (no weights allocated), so that the
    /// size of a model can be known before building it.
    pub fn plan(&self) -> Result<Vec<LayerPlan>> {
        self.validate()?;
        let [c, h, w] = self.input_shape;
        let k = self.num_classes;
        let mut layers = Vec::new();
        let linear = |in_features, out_features| LayerPlan::Linear {
            in_features,
            out_features,
        };
        let conv = |in_channels, out_channels, kernel, params| LayerPlan::Conv2d {
            in_channels,
            out_channels,
            kernel,
            params,
        };
        match self.arch {
            Arch::Custom => {
                return Err(Error::Invalid(
                    "a custom network (one read from ONNX) has no layer plan: it cannot be \
                     rebuilt from its description"
                        .into(),
                ))
            }
            Arch::Mlp => {
                let hidden = scaled(256, self.width);
                layers.extend([
                    LayerPlan::Flatten,
                    linear(c * h * w, hidden),
                    LayerPlan::ReLU,
                    linear(hidden, hidden),
                    LayerPlan::ReLU,
                    linear(hidden, k),
                ]);
            }
            Arch::Small => {
                let p1 = Conv2dParams::new(2, 1);
                let p2 = Conv2dParams::new(1, 1);
                let (h1, w1) = p1.output_hw(h, w, 4, 4);
                let (h2, w2) = p2.output_hw(h1, w1, 4, 4);
                layers.extend([
                    conv(c, 16, 4, p1),
                    LayerPlan::ReLU,
                    conv(16, 32, 4, p2),
                    LayerPlan::ReLU,
                    LayerPlan::Flatten,
                    linear(32 * h2 * w2, 100),
                    LayerPlan::ReLU,
                    linear(100, k),
                ]);
            }
            Arch::Cnn7 => {
                let (mut ch, mut hh, mut ww) = (c, h, w);
                for (out, stride) in [(64, 1), (64, 1), (128, 2), (128, 1), (128, 1)] {
                    let out = scaled(out, self.width);
                    let p = Conv2dParams::new(stride, 1);
                    layers.extend([
                        conv(ch, out, 3, p),
                        LayerPlan::BatchNorm {
                            channels: out,
                            spatial_dims: 2,
                        },
                        LayerPlan::ReLU,
                    ]);
                    (hh, ww) = p.output_hw(hh, ww, 3, 3);
                    ch = out;
                }
                let fc = scaled(512, self.width);
                layers.extend([
                    LayerPlan::Flatten,
                    linear(ch * hh * ww, fc),
                    LayerPlan::BatchNorm {
                        channels: fc,
                        spatial_dims: 1,
                    },
                    LayerPlan::ReLU,
                    linear(fc, k),
                ]);
            }
        }
        Ok(layers)
    }

    /// Number of values in the model's state dict.
    pub fn state_len(&self) -> Result<usize> {
        Ok(self.plan()?.iter().map(LayerPlan::state_len).sum())
    }

    /// Values per input of each activation of a forward pass: the input, its normalised copy
    /// (with normalisation), then every layer's output.
    pub fn activation_lens(&self) -> Result<Vec<u64>> {
        let plan = self.plan()?;
        let [c, h, w] = self.input_shape;
        let (mut c, mut h, mut w) = (c as u64, h as u64, w as u64);
        let mut lens = vec![c * h * w];
        if self.normalization.is_some() {
            lens.push(c * h * w);
        }
        for layer in plan {
            match layer {
                LayerPlan::Conv2d {
                    out_channels,
                    kernel,
                    params,
                    ..
                } => {
                    let (hh, ww) = params.output_hw(h as usize, w as usize, kernel, kernel);
                    (c, h, w) = (out_channels as u64, hh as u64, ww as u64);
                }
                LayerPlan::Linear { out_features, .. } => (c, h, w) = (out_features as u64, 1, 1),
                LayerPlan::BatchNorm { .. } | LayerPlan::ReLU | LayerPlan::Flatten => {}
            }
            lens.push(c.saturating_mul(h).saturating_mul(w));
        }
        Ok(lens)
    }

    /// Bytes of an inference pass (no gradients) over `batch` inputs: the input, held by the
    /// caller throughout, and the largest input-and-output pair of one step (each step's input
    /// is freed once the next is computed). Convolutions' scratch is a few bands, not counted.
    pub fn inference_bytes(&self, batch: usize) -> Result<u64> {
        let lens = self.activation_lens()?;
        let pair = lens
            .windows(2)
            .map(|p| p[0].saturating_add(p[1]))
            .max()
            .unwrap_or(0);
        Ok(memory::f32_bytes(
            (batch as u64).saturating_mul(lens[0].saturating_add(pair)),
        ))
    }

    /// A one-line name of the architecture for messages: `cnn7 (width 2) on 3x32x32 inputs`.
    pub fn describe(&self) -> String {
        let [c, h, w] = self.input_shape;
        format!(
            "{} (width {}) on {c}x{h}x{w} inputs",
            self.arch.name(),
            self.width
        )
    }
}

impl Model {
    /// The same network with every parameter and batch-norm statistic on `device`.
    pub fn to_device(&self, device: crate::tensor::Device) -> Result<Model> {
        let mut moved = self.clone();
        for layer in &mut moved.net.layers {
            for (_, p) in layer.parameters_mut() {
                *p = p.to_device(device)?;
            }
            if let crate::nn::Layer::BatchNorm(bn) = layer {
                bn.running_mean = bn.running_mean.to_device(device)?;
                bn.running_var = bn.running_var.to_device(device)?;
            }
        }
        Ok(moved)
    }

    /// Build and initialise the architecture `spec` describes; refused, before any weight is
    /// allocated, when its weights alone would not fit in the memory limit.
    pub fn new(spec: ModelSpec, rng: &mut Rng) -> Result<Model> {
        let values = spec.state_len()?;
        memory::check(
            || {
                format!(
                    "model {} has {values} weights and statistics:",
                    spec.describe()
                )
            },
            memory::f32_bytes(values as u64),
        )?;
        let layers = spec.plan()?.into_iter().map(|p| p.build(rng)).collect();
        let mut model = Model {
            spec,
            net: Sequential::new(layers),
        };
        if model.spec.init == Init::Ibp {
            model.apply_ibp_init(rng);
        }
        Ok(model)
    }

    /// A custom network (`Arch::Custom`) from its layers, which the caller has checked to chain
    /// on `spec.input_shape`; a forward pass of one input checks that they end in
    /// `spec.num_classes` logits.
    pub fn from_layers(spec: ModelSpec, layers: Vec<Layer>) -> Result<Model> {
        spec.validate()?;
        let model = Model {
            spec,
            net: Sequential::new(layers),
        };
        let [c, h, w] = model.spec.input_shape;
        let probe = Tensor::zeros(&[1, c, h, w]);
        let logits = crate::autodiff::with_no_grad(|| model.forward(&probe, Mode::Eval));
        if logits.shape() != [1, model.spec.num_classes] {
            return Err(Error::Shape(format!(
                "the network gives outputs {:?} per input, expected [1, {}]",
                logits.shape(),
                model.spec.num_classes
            )));
        }
        Ok(model)
    }

    /// Redraw every conv and linear weight but the last with the IBP initialisation.
    fn apply_ibp_init(&mut self, rng: &mut Rng) {
        let affine: Vec<usize> = (0..self.net.layers.len())
            .filter(|&i| matches!(self.net.layers[i], Layer::Linear(_) | Layer::Conv2d(_)))
            .collect();
        for &i in &affine[..affine.len().saturating_sub(1)] {
            match &mut self.net.layers[i] {
                Layer::Linear(l) => {
                    l.weight = Init::ibp_weight(l.weight.shape(), l.in_features(), rng)
                }
                Layer::Conv2d(cv) => {
                    let (kh, kw) = cv.kernel();
                    cv.weight =
                        Init::ibp_weight(cv.weight.shape(), cv.in_channels() * kh * kw, rng);
                }
                _ => unreachable!("filtered to affine layers"),
            }
        }
    }

    /// An error unless `x` is a batch of this model's inputs.
    pub fn check_input(&self, shape: &[usize]) -> Result<()> {
        if shape.len() != 4 || shape[1..] != self.spec.input_shape {
            return Err(Error::Shape(format!(
                "model {} expects inputs [batch, {}, {}, {}], got {shape:?}",
                self.spec.arch.name(),
                self.spec.input_shape[0],
                self.spec.input_shape[1],
                self.spec.input_shape[2]
            )));
        }
        Ok(())
    }

    /// A copy whose parameters are constants, not leaves: an attack on it computes input
    /// gradients only, without the weight-gradient work. Shares the weights' storage.
    pub fn detached(&self) -> Model {
        let mut copy = self.clone();
        for p in copy.net.parameters_mut() {
            *p = p.detach();
        }
        copy
    }

    /// Map pixels in [0, 1] to the network's input scale (identity without normalisation).
    pub fn normalize(&self, x: &Tensor) -> Tensor {
        match &self.spec.normalization {
            None => x.clone(),
            Some(n) => {
                let (scale, shift) = n.affine(x.device());
                x.channel_affine(&scale, &shift)
            }
        }
    }

    /// Logits for a batch of pixel inputs [N, C, H, W] in [0, 1].
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        self.net.forward(&self.normalize(x), mode)
    }

    /// `forward`, or an error naming the first step (the input, its normalisation, a layer)
    /// whose output holds a NaN or an infinity: checking the logits alone would miss a NaN that
    /// a ReLU later turns into 0. On any device (0·x sums to 0 exactly when every x is finite).
    pub fn forward_checked(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let finite = |t: &Tensor| t.mul_scalar(0.0).sum().item() == 0.0;
        let fail = |what: String| {
            Err(Error::Invalid(format!(
                "{what} of model {} holds NaN or infinite values",
                self.spec.describe()
            )))
        };
        if !finite(x) {
            return fail("the input".into());
        }
        let mut h = self.normalize(x);
        if self.spec.normalization.is_some() && !finite(&h) {
            return fail("the normalised input".into());
        }
        for (i, layer) in self.net.layers.iter().enumerate() {
            h = layer.forward(&h, mode);
            if !finite(&h) {
                return fail(format!("the output of layer {i}, {},", layer.describe()));
            }
        }
        Ok(h)
    }

    /// Training-mode forward pass that updates batch norm's running statistics.
    pub fn forward_train(&mut self, x: &Tensor) -> Tensor {
        let h = self.normalize(x);
        self.net.forward_train(&h)
    }

    /// Training-mode forward pass returning each batch-norm layer's batch statistics (see
    /// `Sequential::forward_batch_stats`).
    pub fn forward_batch_stats(
        &mut self,
        x: &Tensor,
        update_running: bool,
    ) -> (Tensor, Vec<crate::nn::BatchStats>) {
        let h = self.normalize(x);
        self.net.forward_batch_stats(&h, update_running)
    }
}
