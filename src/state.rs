//! The states of the test cycle, named as in the specification and the logs.

use std::fmt;
use std::time::Duration;

/// One state of a job's cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// First clone of the source into the workspace.
    Clone,
    /// Signature verification of a new tip.
    Verify,
    /// Claiming the commit with a lock note pushed to the results.
    Lock,
    /// Checkout and start of the test script.
    StartCommand,
    /// Waiting for the test script to finish.
    AwaitCommand,
    /// Adding and pushing the result notes.
    Push,
    /// Cleaning the checkout and staging directory.
    Cleanup,
    /// Waiting for the source branch to move.
    Poll,
}

impl State {
    /// Every state, in cycle order.
    pub const ALL: [State; 8] = [
        State::Clone,
        State::Verify,
        State::Lock,
        State::StartCommand,
        State::AwaitCommand,
        State::Push,
        State::Cleanup,
        State::Poll,
    ];

    /// The name used by flags (`-timeout await-command:2h`) and logs.
    pub fn name(self) -> &'static str {
        match self {
            State::Clone => "clone",
            State::Verify => "verify",
            State::Lock => "lock",
            State::StartCommand => "start-command",
            State::AwaitCommand => "await-command",
            State::Push => "push",
            State::Cleanup => "cleanup",
            State::Poll => "poll",
        }
    }

    /// The built-in time limit of the state.
    pub fn default_timeout(self) -> Option<Duration> {
        let minutes = |m: u64| Some(Duration::from_secs(m * 60));
        match self {
            State::Clone => minutes(60),
            State::Verify => minutes(1),
            State::Lock => minutes(10),
            State::StartCommand => minutes(1),
            State::AwaitCommand => minutes(120),
            State::Push => minutes(60),
            State::Cleanup => minutes(10),
            State::Poll => None,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
