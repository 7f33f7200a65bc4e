//! The moto harness, shared with the other crates that test on moto: see
//! `aws::testing` (the crate's `testing` feature).

#![allow(unused_imports)]

pub use aws::testing::*;
