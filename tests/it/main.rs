//! One integration-test binary: every module drives the built `icyci`
//! binary against real repositories, keys and servers.

mod common;

mod cli;
mod contain;
mod cycle;
mod faults;
mod frugal;
mod harness;
mod instances;
mod leases;
mod notes_dir;
mod remote;
mod selftest;
mod signers;
mod site;
mod spool;
mod verify;
mod viewer;
mod workspace;
