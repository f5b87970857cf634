//! Linear multistep (Adams) samplers over past derivative or noise estimates: LMS, DEIS, PNDM /
//! PLMS and iPNDM.

mod deis;
mod edm;
mod lms;
mod pndm;

pub use deis::Deis;
pub use edm::{DeisVars, EdmDeis, EdmIpndm, GradientEstimation};
pub use lms::Lms;
pub use pndm::{Ipndm, Pndm};
