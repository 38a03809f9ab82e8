//! Bounds on network outputs over input boxes: interval bound propagation (IBP), and the
//! slack that makes any margin bound hold under f32 rounding (`rounding`).

pub mod ibp;
pub mod rounding;

pub use ibp::{
    box_corners, certified, certified_rows, enclosing_box, ibp_loss, input_box,
    margin_lower_bounds, propagate, BnSource,
};
