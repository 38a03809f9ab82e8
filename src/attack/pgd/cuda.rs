//! PGD on the GPU: the signed, projected step, and the best points kept on the device beside
//! the iterates, so that the attack loop never copies a point, a loss or a prediction to the
//! host.

use crate::ops::gpu::{buf, copy, expect, resident, tensor};
use crate::runtime::cuda::DeviceBuffer;
use crate::tensor::Tensor;

/// PGD's step on the GPU: min(max(x + step·sign(g), lo), hi), a new constant tensor.
pub(crate) fn pgd_step(x: &Tensor, g: &Tensor, lo: &Tensor, hi: &Tensor, step: f32) -> Tensor {
    let _p = crate::runtime::cuda::profile::scope("pgd_step");
    let (xs, gs, ls, hs) = (resident(x), resident(g), resident(lo), resident(hi));
    let mut next = copy(buf(&xs));
    expect(
        "PGD step",
        crate::attack::pgd::launch::pgd_step(&mut next, buf(&gs), buf(&ls), buf(&hs), step),
    );
    tensor(next, x.shape())
}

/// PGD's best points kept on the GPU beside the iterates (`attack::pgd`), so that the attack
/// loop never copies a point, a loss or a prediction to the host.
pub(crate) struct DeviceBest {
    best: crate::attack::pgd::launch::PgdBest,
    labels: std::sync::Arc<crate::ops::loss::launch::DeviceLabels>,
}

impl DeviceBest {
    /// The host points `start` (one row per label) as the best points of samples labelled `y`
    /// among `classes`: uploaded once, straight into the best points' buffer.
    pub(crate) fn new(start: &[f32], y: &[usize], classes: usize) -> DeviceBest {
        let what = "PGD best points";
        crate::tensor::transfers::count_upload();
        let start = expect(what, DeviceBuffer::from_host(start));
        DeviceBest {
            best: expect(
                what,
                crate::attack::pgd::launch::PgdBest::new(start, y.len()),
            ),
            labels: expect(
                what,
                crate::ops::loss::launch::DeviceLabels::cached(y, classes),
            ),
        }
    }

    /// `Best::offer` on the device.
    pub(crate) fn offer(&mut self, x: &Tensor, logits: &Tensor, loss: &Tensor, keep: bool) {
        let _p = crate::runtime::cuda::profile::scope("pgd_keep_best");
        let (xs, ls, ss) = (resident(x), resident(logits), resident(loss));
        expect(
            "PGD best points",
            crate::attack::pgd::launch::pgd_keep_best(
                &mut self.best,
                buf(&xs),
                buf(&ls),
                buf(&ss),
                &self.labels,
                keep,
            ),
        );
    }

    /// Whether every sample has been misclassified (copies the flags to the host).
    pub(crate) fn all_fooled(&self) -> bool {
        expect("PGD best points", self.best.fooled.to_host())
            .iter()
            .all(|&f| f != 0.0)
    }

    /// The best points (on the GPU, shaped `shape`), their losses and the fooled flags.
    pub(crate) fn finish(self, shape: &[usize]) -> (Tensor, Vec<f32>, Vec<bool>) {
        let what = "PGD best points";
        let loss = expect(what, self.best.loss.to_host());
        let fooled = expect(what, self.best.fooled.to_host())
            .iter()
            .map(|&f| f != 0.0)
            .collect();
        (tensor(self.best.x, shape), loss, fooled)
    }
}
