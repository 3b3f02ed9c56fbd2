//! The one integration-test target: library tests on small networks and
//! images made here, and the real binary end to end.

mod accuracy;
mod cli;
mod common;
mod cv;
mod data;
mod explain;
mod faces;
mod model;
mod reliability;
mod threshold;
mod train;
