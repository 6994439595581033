//! The exit codes `cairnctl` ends with; scripts and CI gates rely on them.

/// How a `cairnctl` run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything worked (and for `diff`: no drift).
    Success,
    /// An error, or invalid input (lint found errors).
    Failure,
    /// `diff` found drift between the source and the backend.
    Drift,
    /// The command line or configuration was unusable; nothing was done.
    Usage,
}

impl Outcome {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Failure => 1,
            Outcome::Drift => 2,
            Outcome::Usage => 64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        assert_eq!(Outcome::Success.code(), 0);
        assert_eq!(Outcome::Failure.code(), 1);
        assert_eq!(Outcome::Drift.code(), 2);
        assert_eq!(Outcome::Usage.code(), 64);
    }
}
