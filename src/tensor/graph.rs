//! The graph each tensor carries: the [`Node`] an op records on its output (its inputs and a
//! backward closure), and the grad mode that decides whether ops record one. `autodiff` walks
//! these nodes; ops create them through `Tensor::from_op`.

use crate::tensor::Tensor;
use std::cell::Cell;

/// Maps the output's gradient to one optional gradient per input. The flags say which inputs
/// need a gradient, so that work for the others (say, the input of the first conv) is skipped.
pub type BackwardFn = dyn Fn(&Tensor, &[bool]) -> Vec<Option<Tensor>> + Send + Sync;

pub struct Node {
    pub(crate) inputs: Vec<Tensor>,
    pub(crate) backward: Box<BackwardFn>,
    /// The backward closure's type name: which op recorded the node (for profiles).
    pub(crate) name: &'static str,
}

impl Node {
    pub(crate) fn new<F>(inputs: Vec<Tensor>, backward: F) -> Node
    where
        F: Fn(&Tensor, &[bool]) -> Vec<Option<Tensor>> + Send + Sync + 'static,
    {
        Node {
            inputs,
            backward: Box::new(backward),
            name: std::any::type_name::<F>(),
        }
    }
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread record the graph.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// While alive, ops on this thread record no graph (inference, attacks' inner bookkeeping,
/// backward closures). Restores the previous mode when dropped.
pub struct NoGradGuard {
    previous: bool,
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

pub fn no_grad() -> NoGradGuard {
    let previous = GRAD_ENABLED.with(|g| g.replace(false));
    NoGradGuard { previous }
}

/// Run `f` without recording a graph.
pub fn with_no_grad<T>(f: impl FnOnce() -> T) -> T {
    let _guard = no_grad();
    f()
}
