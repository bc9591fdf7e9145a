//! icyci follows one branch of a git repository and tests every new tip
//! whose signature verifies. It claims the commit with a lock note in a
//! results repository (so that cooperating instances test each commit once
//! per namespace), runs the test script in a checkout, and publishes the
//! script's output and verdict as git notes in that repository.
//!
//! The cycle is a state machine ([`machine`]) over a handful of concerns:
//! validated configuration ([`cli`], [`config`]), git invocations
//! ([`git`]), signature checks and trust ([`verify`], [`signature`],
//! [`trust`]), the notes store and lock ([`notes`], [`publish`],
//! [`notes_dir`]) and the script runner ([`runner`], with its bounded
//! output [`capture`] and process containment [`contain`]), all inside a
//! [`workspace`] in the job's state directory.

#![warn(missing_docs)]

pub mod capture;
pub mod cli;
pub mod commands;
pub mod config;
pub mod contain;
pub mod demo;
pub mod duration;
pub mod git;
pub mod lease;
pub mod machine;
pub mod notes;
pub mod notes_dir;
pub mod publish;
pub mod reader;
pub mod retest;
pub mod retry;
pub mod runner;
pub mod signature;
pub mod site;
pub mod size;
pub mod spool;
pub mod state;
pub mod trust;
pub mod verify;
pub mod viewer;
pub mod workspace;
pub mod worktree;
