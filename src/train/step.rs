//! One optimisation step of standard training: forward (batch norm in train mode), mean
//! cross-entropy, backward, Adam.

use crate::nn::Model;
use crate::ops::cross_entropy;
use crate::tensor::Tensor;
use crate::train::Adam;
use crate::{Error, Result};

/// Take one step on the batch (`x` [N, C, H, W] in [0, 1], labels `y`); returns the loss.
/// A non-finite loss is an error and leaves the model unchanged.
pub fn standard_step(model: &mut Model, opt: &mut Adam, x: &Tensor, y: &[usize]) -> Result<f32> {
    model.check_input(x.shape())?;
    let loss = cross_entropy(&model.forward_train(x), y);
    let value = loss.item();
    if !value.is_finite() {
        return Err(Error::Invalid(format!(
            "training loss is {value}: stopping before the update"
        )));
    }
    let grads = loss.backward();
    drop(loss); // free the graph before the update, so parameters are updated in place
    opt.step(&mut model.net.parameters_mut(), &grads)?;
    Ok(value)
}
