//! Reverse-mode automatic differentiation.
//!
//! Every op that has an input needing a gradient records a [`Node`] on its output: the inputs and
//! a backward closure that maps the output's gradient to the inputs' gradients. The recorded
//! graph is the tape: [`backward`] orders it (reverse topological order from the loss) and walks
//! it once. The graph lives in the tensors themselves, so it is freed as soon as the values that
//! hold it are dropped, and there is no global tape to clear between steps.

pub use crate::tensor::graph::{
    is_grad_enabled, no_grad, with_no_grad, BackwardFn, NoGradGuard, Node,
};
use crate::tensor::{Tensor, TensorId};
use std::collections::{HashMap, HashSet};

/// Gradients of a scalar with respect to the leaves that require them.
#[derive(Default)]
pub struct Gradients {
    grads: HashMap<TensorId, Tensor>,
}

impl Gradients {
    /// The gradient of the loss with respect to `leaf`, or None if the loss does not depend on it.
    pub fn get(&self, leaf: &Tensor) -> Option<&Tensor> {
        self.grads.get(&leaf.id())
    }

    pub fn remove(&mut self, leaf: &Tensor) -> Option<Tensor> {
        self.grads.remove(&leaf.id())
    }

    pub fn len(&self) -> usize {
        self.grads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// The sum of two sets of gradients (of two losses over the same leaves): what the
    /// gradient of the losses' sum would be, up to rounding.
    pub fn merge(mut self, other: Gradients) -> Gradients {
        let _guard = no_grad();
        for (id, g) in other.grads {
            accumulate(&mut self.grads, id, g);
        }
        self
    }
}

/// The nodes reachable from `root`, inputs before the values computed from them.
fn topological_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Iterative post-order DFS: (tensor, children already pushed?).
    let mut stack = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        let node = t.node().map(|n| n.inputs.clone());
        stack.push((t, true));
        for input in node.into_iter().flatten() {
            if input.tracks_grad() && !seen.contains(&input.id()) {
                stack.push((input, false));
            }
        }
    }
    order
}

fn accumulate(grads: &mut HashMap<TensorId, Tensor>, id: TensorId, g: Tensor) {
    match grads.remove(&id) {
        None => {
            grads.insert(id, g);
        }
        Some(prev) => {
            grads.insert(id, prev.accumulate(&g));
        }
    }
}

/// Gradients of the scalar `loss` with respect to every leaf it depends on that requires one.
pub fn backward(loss: &Tensor) -> Gradients {
    assert_eq!(
        loss.numel(),
        1,
        "backward() needs a scalar loss, got shape {:?}",
        loss.shape()
    );
    let _guard = no_grad();
    let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
    if !loss.tracks_grad() {
        return Gradients { grads };
    }
    // The seed lives where the loss does: a host seed would be copied to the GPU by the first
    // backward node, and that copy waits for the stream.
    let seed = Tensor::full_on(loss.shape(), 1.0, loss.device())
        .unwrap_or_else(|e| panic!("backward: the gradient seed on {}: {e}", loss.device()));
    grads.insert(loss.id(), seed);
    for t in topological_order(loss).iter().rev() {
        let Some(node) = t.node() else { continue };
        // An intermediate's gradient is complete once every consumer ran: use it and free it.
        let Some(g) = grads.remove(&t.id()) else {
            continue;
        };
        let needs: Vec<bool> = node.inputs.iter().map(Tensor::tracks_grad).collect();
        let _timed = crate::runtime::cuda::profile::enabled().then(|| {
            let name = crate::runtime::cuda::profile::short_name(node.name);
            crate::runtime::cuda::profile::scope(&format!("backward {name}"))
        });
        let input_grads = (node.backward)(&g, &needs);
        debug_assert_eq!(input_grads.len(), node.inputs.len());
        for ((input, gi), need) in node.inputs.iter().zip(input_grads).zip(needs) {
            if let (Some(gi), true) = (gi, need) {
                assert_eq!(
                    gi.shape(),
                    input.shape(),
                    "backward produced a gradient of the wrong shape"
                );
                accumulate(&mut grads, input.id(), gi);
            }
        }
    }
    Gradients { grads }
}

impl Tensor {
    /// Gradients of this scalar with respect to the leaves it depends on.
    pub fn backward(&self) -> Gradients {
        backward(self)
    }
}
