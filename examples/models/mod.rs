//! The reference models of the examples, shared with the tests (`tests/gradients.rs`,
//! `tests/end_to_end.rs` include this module by path): a tiny neural-network toolkit with
//! hand-written backward passes, the toy 2-D MLP and its data, and PNG figures.

pub mod data2d;
pub mod mlp;
pub mod nn;
pub mod plot;
pub mod shapes;
pub mod unet;
