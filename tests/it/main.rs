mod common;
mod harness;
