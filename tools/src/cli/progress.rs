//! Progress of long commands: a bar per stage on a terminal, plain lines otherwise (`make demo >
//! log` shows where the run is), and Ctrl-C turned into a cancellation the library acts on.
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by Ctrl-C: every progress report then asks the library to stop, which removes its
/// temporary outputs on the way out, so an interrupted command leaves nothing half-written.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Catch Ctrl-C, SIGTERM and SIGHUP alike (what a terminal, `kill`, systemd, containers and CI
/// send): the first one cancels through the progress reports, so the library removes what it
/// was writing on the way out; a second one exits at once.
pub fn catch_interrupt() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: stopping and cleaning up (interrupt again to stop at once)");
    });
}

/// How often a plain progress line is printed (besides the first and last step of a stage).
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Progress of one command, stage by stage.
pub struct Progress {
    stage: String,
    started: Instant,
    view: View,
}

enum View {
    /// On a terminal: one bar per stage (a stage change finishes the previous bar).
    Bars(Option<ProgressBar>),
    /// Otherwise: a line per stage start, then one every few seconds and at the stage's end.
    Lines { last_line: Instant },
}

impl Progress {
    pub fn new() -> Self {
        let view = if std::io::stdout().is_terminal() { View::Bars(None) } else { View::Lines { last_line: Instant::now() } };
        Progress { stage: String::new(), started: Instant::now(), view }
    }

    /// Report step `done` of `total` of `stage` (and the step's loss, if any); false once the
    /// user pressed Ctrl-C, which the library takes as "cancel".
    pub fn update(&mut self, stage: &str, done: usize, total: usize, loss: Option<f64>) -> bool {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return false;
        }
        let new_stage = stage != self.stage;
        if new_stage {
            self.finish();
            self.stage = stage.to_string();
        }
        match &mut self.view {
            View::Bars(bar) => {
                let b = bar.get_or_insert_with(|| {
                    let b = ProgressBar::new(total as u64);
                    b.set_style(
                        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}").unwrap().progress_chars("=> "),
                    );
                    b.set_prefix(stage.to_string());
                    b
                });
                b.set_length(total as u64);
                b.set_position(done as u64);
                if let Some(l) = loss {
                    if done.is_multiple_of(10) || done == total {
                        b.set_message(format!("loss {l:.5}"));
                    }
                }
            }
            View::Lines { last_line } => {
                if new_stage || done == total || last_line.elapsed() >= LINE_EVERY {
                    *last_line = Instant::now();
                    let loss = loss.map(|l| format!(" loss {l:.5}")).unwrap_or_default();
                    println!("[{:>8.1}s] {stage} {done}/{total}{loss}", self.started.elapsed().as_secs_f64());
                }
            }
        }
        !INTERRUPTED.load(Ordering::SeqCst)
    }

    /// End the current stage's bar (plain lines need no ending).
    pub fn finish(&mut self) {
        if let View::Bars(bar) = &mut self.view {
            if let Some(b) = bar.take() {
                b.finish();
            }
        }
    }
}
