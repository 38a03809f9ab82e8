//! Fake quantization on the GPU (`compress/quant/quant.cu`), with the straight-through gradient: the
//! device twin of `compress::quant::fake_quantize`, bit for bit.

use crate::compress::quant::{Format, Granularity};
use crate::ops::gpu::{buf, expect, resident, tensor};
use crate::runtime::cuda::profile;
use crate::tensor::Tensor;

pub(crate) fn fake_quantize(w: &Tensor, format: Format, granularity: Granularity) -> Tensor {
    let _p = profile::scope("fake_quantize");
    let ws = resident(w);
    match format {
        Format::Fp32 => w.clone(),
        Format::Fp16 => {
            let y = expect(
                "fp16 fake quantization",
                crate::compress::quant::launch::fake_quantize_fp16(buf(&ws)),
            );
            // Straight-through: the gradient passes unchanged.
            Tensor::from_device_op(y, w.shape(), &[w], |g, _| vec![Some(g.clone())])
        }
        Format::Int(bits) => {
            let what = "integer fake quantization";
            let params = expect(
                what,
                crate::compress::quant::launch::quant_params(
                    buf(&ws),
                    w.shape(),
                    bits,
                    granularity,
                ),
            );
            let y = expect(
                what,
                crate::compress::quant::launch::fake_quantize_int(buf(&ws), &params),
            );
            Tensor::from_device_op(y, w.shape(), &[w], move |g, _| {
                let gs = resident(g);
                let d = crate::compress::quant::launch::ste_backward(buf(&ws), buf(&gs), &params);
                vec![Some(tensor(expect(what, d), ws.shape()))]
            })
        }
    }
}
