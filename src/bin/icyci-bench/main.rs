//! Benchmarks that print figures (never timed tests: this machine is shared
//! and noisy, so read medians and ratios).
//!
//! - `icyci-bench viewer` times the read side (`icyci results`, `icyci site`)
//!   against a large and a small results repository; see [`viewer`].
//! - `icyci-bench cycle` runs the daemon against repositories and a signing
//!   key of its own, beside the same work done with plain git commands, and
//!   prints the figures of issue 5 with their targets; see [`cycle`].

mod common;
mod cycle;
mod viewer;

use std::process::ExitCode;

const USAGE: &str = "usage: icyci-bench viewer [--commits N] [--runs R] [--quick]
       icyci-bench cycle [--cycles N] [--idle-seconds S] [--only PART[,PART...]] [--quick] [--keep]
                   (PART: floor, latency, count, idle, contention, scale, rss)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("viewer") => viewer::viewer(&args[1..]),
        Some("cycle") => cycle::cycle(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("icyci-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
