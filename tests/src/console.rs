//! The commands a live world kept running for someone else reads on stdin, one a line:
//! `deploy ID SCHEMA` (a blue/green deployment of ID, serving cart schema SCHEMA), `status`, and
//! `quit`. Shared by `demo --keep` and `browser-world`, which differ only in how they answer.
//!
//! The world stops on `quit`, at the end of input, and on Ctrl-C (SIGINT) or SIGTERM; a signal
//! also cuts short whatever [`Console::unless_stopped`] is running, so a world busy deploying
//! still stops at once and its owner drops it, which kills and reaps every process it started.

use std::future::Future;
use std::io::BufRead;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::invariants::Observation;
use crate::live::LiveWorld;

/// How the commands read, for error messages and help lines.
pub const USAGE: &str = "`deploy ID SCHEMA`, `status` or `quit`";

/// One command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A blue/green deployment of `id`, whose tasks serve cart schema `schema`.
    Deploy { id: String, schema: String },
    /// What the listener and the ledger hold now.
    Status,
}

/// Why a [`Console`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Quit,
    EndOfInput,
    /// SIGINT (Ctrl-C) or SIGTERM.
    Signal,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stop::Quit => "quit",
            Stop::EndOfInput => "end of input",
            Stop::Signal => "interrupted",
        })
    }
}

/// One line of input: a command, nothing (a blank line), the end, or an error message.
pub fn parse(line: &str) -> Result<Option<Line>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => Ok(None),
        ["quit"] => Ok(Some(Line::Quit)),
        ["status"] => Ok(Some(Line::Command(Command::Status))),
        ["deploy", id, schema] => Ok(Some(Line::Command(Command::Deploy {
            id: (*id).to_owned(),
            schema: (*schema).to_owned(),
        }))),
        _ => Err(format!("unknown command {line:?}: expected {USAGE}")),
    }
}

/// A line that is not blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Command(Command),
    Quit,
}

/// Commands from stdin, and the signals that stop the world.
pub struct Console {
    lines: UnboundedReceiver<String>,
    interrupt: Signal,
    terminate: Signal,
    stopped: Option<Stop>,
}

impl Console {
    /// Starts reading stdin (on a thread of its own) and takes over SIGINT and SIGTERM: from now
    /// on they stop the world through [`Console::next`] and [`Console::unless_stopped`] instead of
    /// killing the process. Must be called inside a Tokio runtime.
    pub fn stdin() -> Result<Console, String> {
        let interrupt = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
        let terminate = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Console {
            lines,
            interrupt,
            terminate,
            stopped: None,
        })
    }

    /// The next command, or an error message for a line that is none; `None` once the world is
    /// to stop ([`Console::stopped`] says why), and from then on.
    pub async fn next(&mut self) -> Option<Result<Command, String>> {
        while self.stopped.is_none() {
            let line = tokio::select! {
                biased;
                _ = self.interrupt.recv() => None,
                _ = self.terminate.recv() => None,
                line = self.lines.recv() => Some(line),
            };
            match line {
                None => self.stopped = Some(Stop::Signal),
                Some(None) => self.stopped = Some(Stop::EndOfInput),
                Some(Some(line)) => match parse(&line) {
                    Ok(None) => {}
                    Ok(Some(Line::Quit)) => self.stopped = Some(Stop::Quit),
                    Ok(Some(Line::Command(command))) => return Some(Ok(command)),
                    Err(message) => return Some(Err(message)),
                },
            }
        }
        None
    }

    /// Runs `work` to its end, unless SIGINT or SIGTERM comes first: then `work` is dropped
    /// where it stands and the answer is `None`. Input is not read meanwhile.
    pub async fn unless_stopped<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        if self.stopped == Some(Stop::Signal) {
            return None;
        }
        let done = tokio::select! {
            biased;
            _ = self.interrupt.recv() => None,
            _ = self.terminate.recv() => None,
            done = work => Some(done),
        };
        if done.is_none() {
            self.stopped = Some(Stop::Signal);
        }
        done
    }

    /// Why the world stops, once it does.
    pub fn stopped(&self) -> Option<Stop> {
        self.stopped
    }
}

/// The listener's rules and `service`'s ledger as they are now.
pub async fn observe(live: &LiveWorld, service: &str) -> Result<Observation, String> {
    let clients = &live.world.hook_clients;
    Observation::take(
        &clients.elb,
        &clients.ledger,
        &live.world.alb.listener_arn,
        &[service],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_commands() {
        assert_eq!(parse("  "), Ok(None));
        assert_eq!(parse("quit"), Ok(Some(Line::Quit)));
        assert_eq!(parse(" status "), Ok(Some(Line::Command(Command::Status))));
        assert_eq!(
            parse("deploy d4e5f6a  v4"),
            Ok(Some(Line::Command(Command::Deploy {
                id: "d4e5f6a".to_owned(),
                schema: "v4".to_owned()
            })))
        );
        for wrong in ["deploy d4e5f6a", "stop", "status now"] {
            let message = parse(wrong).unwrap_err();
            assert!(message.contains(USAGE), "{message}");
        }
    }
}
