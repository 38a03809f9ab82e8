//! Bounds on network outputs over input boxes: interval bound propagation (IBP).

pub mod ibp;

pub use ibp::{
    box_corners, certified, certified_rows, enclosing_box, ibp_loss, input_box,
    margin_lower_bounds, propagate, BnSource,
};
