//! Softmax cross-entropy, log-softmax and the attack losses on the GPU (`loss.cu`).

use crate::ops::gpu::{buf, copy, expect, resident, tensor};
use crate::ops::loss::launch::DeviceLabels;
use crate::runtime::cuda::profile;
use crate::tensor::Tensor;

/// Mean cross-entropy of logits [n, classes] against `labels` (checked by the caller).
pub(crate) fn cross_entropy(logits: &Tensor, labels: &[usize]) -> Tensor {
    let _p = profile::scope("cross_entropy");
    let (n, classes) = (logits.dim(0), logits.dim(1));
    let ls = resident(logits);
    let device_labels = expect("cross_entropy", DeviceLabels::cached(labels, classes));
    let forward = expect(
        "cross_entropy",
        crate::ops::loss::launch::softmax_cross_entropy(buf(&ls), n, classes, &device_labels),
    );
    let loss = copy(&forward.loss);
    Tensor::from_device_op(loss, &[], &[logits], move |g, _| {
        let gs = resident(g);
        let d = crate::ops::loss::launch::softmax_cross_entropy_backward(
            buf(&ls),
            &forward,
            &device_labels,
            buf(&gs),
            n,
            classes,
        );
        vec![Some(tensor(
            expect("cross_entropy backward", d),
            ls.shape(),
        ))]
    })
}

/// Each sample's cross-entropy [n] (attack objectives), on the device.
pub(crate) fn per_sample_cross_entropy(logits: &Tensor, labels: &[usize]) -> Tensor {
    let _p = profile::scope("per_sample_cross_entropy");
    let (n, classes) = (logits.dim(0), logits.dim(1));
    let ls = resident(logits);
    let device_labels = expect("cross_entropy", DeviceLabels::cached(labels, classes));
    let (loss, lse) = expect(
        "cross_entropy",
        crate::ops::loss::launch::softmax_cross_entropy_rows(buf(&ls), n, classes, &device_labels),
    );
    Tensor::from_device_op(loss, &[n], &[logits], move |g, _| {
        let gs = resident(g);
        let d = crate::ops::loss::launch::softmax_cross_entropy_rows_backward(
            buf(&ls),
            &lse,
            &device_labels,
            buf(&gs),
            n,
            classes,
        );
        vec![Some(tensor(
            expect("cross_entropy backward", d),
            ls.shape(),
        ))]
    })
}

/// Each sample's margin max_{j≠y} z_j − z_y [n] (the evaluation attack's objective), on the
/// device.
pub(crate) fn margin_loss(logits: &Tensor, labels: &[usize]) -> Tensor {
    let _p = profile::scope("margin_loss");
    let (n, classes) = (logits.dim(0), logits.dim(1));
    let ls = resident(logits);
    let device_labels = expect("margin loss", DeviceLabels::cached(labels, classes));
    let loss = expect(
        "margin loss",
        crate::ops::loss::launch::margin_rows(buf(&ls), n, classes, &device_labels),
    );
    Tensor::from_device_op(loss, &[n], &[logits], move |g, _| {
        let gs = resident(g);
        let d = crate::ops::loss::launch::margin_rows_backward(
            buf(&ls),
            &device_labels,
            buf(&gs),
            n,
            classes,
        );
        vec![Some(tensor(expect("margin loss backward", d), ls.shape()))]
    })
}

/// log-softmax over the classes of each row of [n, classes], on the device; the backward uses
/// the saved output.
pub(crate) fn log_softmax(x: &Tensor) -> Tensor {
    let _p = profile::scope("log_softmax");
    let (n, classes) = (x.dim(0), x.dim(1));
    let y = expect(
        "log_softmax",
        crate::ops::loss::launch::log_softmax(buf(&resident(x)), n, classes),
    );
    let saved = copy(&y);
    let shape = x.shape().to_vec();
    Tensor::from_device_op(y, x.shape(), &[x], move |g, _| {
        let gs = resident(g);
        let d = crate::ops::loss::launch::log_softmax_backward(buf(&gs), &saved, n, classes);
        vec![Some(tensor(expect("log_softmax backward", d), &shape))]
    })
}
