//! The shared rigs of the test binaries, one module tree that each area binary
//! (`tests/<area>.rs`) declares as `mod support;`. Each binary uses only part of it.

#![allow(dead_code, unused_imports)]

pub mod agent;
pub mod capture;
pub mod e2e;
pub mod gateway;
pub mod l7;
pub mod ocsf;
pub mod proxy;
