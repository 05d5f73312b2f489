//! Progress for long CLI operations: an indicatif bar or spinner on a terminal, plain
//! timestamped lines otherwise (CI logs, pipes), so the same code serves both.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    label: String,
    bar: Option<ProgressBar>,
    started: Instant,
    len: u64,
    pos: u64,
    /// Plain mode prints a position line at most every tenth of the way.
    last_decile: u64,
}

impl Progress {
    fn new(label: &str, len: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match len {
                Some(n) => {
                    let b = ProgressBar::new(n);
                    if let Ok(style) = ProgressStyle::with_template(
                        "{spinner} {prefix} [{bar:30}] {pos}/{len} {wide_msg} ({elapsed})",
                    ) {
                        b.set_style(style.progress_chars("=> "));
                    }
                    b
                }
                None => {
                    let b = ProgressBar::new_spinner();
                    if let Ok(style) =
                        ProgressStyle::with_template("{spinner} {prefix} {wide_msg} ({elapsed})")
                    {
                        b.set_style(style);
                    }
                    b
                }
            };
            b_prefix(&bar, label);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let p = Self {
            label: label.to_string(),
            bar,
            started: Instant::now(),
            len: len.unwrap_or(0),
            pos: 0,
            last_decile: 0,
        };
        if p.bar.is_none() {
            p.line(&match len {
                Some(n) => format!("started ({n} steps)"),
                None => "started".into(),
            });
        }
        p
    }

    /// A spinner for work of unknown length; [`Progress::set_length`] turns it into a bar.
    pub fn spinner(label: &str) -> Self {
        Self::new(label, None)
    }

    fn line(&self, msg: &str) {
        eprintln!(
            "[{} {:6.1}s] {msg}",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// What is being done now.
    pub fn message(&mut self, msg: &str) {
        match &self.bar {
            Some(b) => b.set_message(msg.to_string()),
            None => self.line(msg),
        }
    }

    /// Changes the number of steps (when it becomes known late).
    pub fn set_length(&mut self, len: u64) {
        self.len = len;
        if let Some(b) = &self.bar {
            b.set_length(len);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} {prefix} [{bar:30}] {pos}/{len} {wide_msg} ({elapsed})",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
        }
    }

    pub fn set_position(&mut self, pos: u64) {
        self.pos = pos;
        match &self.bar {
            Some(b) => b.set_position(pos),
            None if self.len > 0 => {
                let decile = pos.saturating_mul(10) / self.len;
                if decile > self.last_decile {
                    self.last_decile = decile;
                    self.line(&format!("{pos}/{}", self.len));
                }
            }
            None => {}
        }
    }

    /// Ends with a final message (kept on screen on a terminal).
    pub fn finish(self, msg: &str) {
        match &self.bar {
            Some(b) => b.finish_with_message(msg.to_string()),
            None => self.line(msg),
        }
    }

    /// Ends with a failure message.
    pub fn abandon(self, msg: &str) {
        match &self.bar {
            Some(b) => b.abandon_with_message(msg.to_string()),
            None => self.line(msg),
        }
    }
}

fn b_prefix(bar: &ProgressBar, label: &str) {
    bar.set_prefix(label.to_string());
}
