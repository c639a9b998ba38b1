//! The run context: everything one run of a script shares on the script's thread — the
//! session (device, kernel policy, generator, config, current step), the run's record (its
//! directory and the state a checkpoint tracks), the live functions and the progress shown —
//! in one value, entered and left with one guard.
//!
//! `main` builds a context for a run and enters it around the script; `engine::run_source`
//! and `engine::run_file` enter a fresh one for the script they run. Leaving restores what
//! was current before (with its kernel policy), so nothing of one run leaks into the next.
//! Code outside any entered context (tests, tools) gets a default one: the CPU, seed 0.
//!
//! Each part has its own cell, so code using one part may call code using another.

use std::cell::RefCell;
use std::rc::Rc;

use crate::kernels::KernelPolicy;
use crate::live::LiveFunctions;
use crate::session::Session;
use crate::train::current::RunRecord;
use crate::train::progress::Status;

/// The state of one run of a script.
pub struct RunContext {
    session: RefCell<Session>,
    record: RefCell<Option<RunRecord>>,
    live: RefCell<Option<LiveFunctions>>,
    progress: RefCell<Status>,
}

impl RunContext {
    /// A context for a run in `session`, without a run record or live functions yet.
    pub fn new(session: Session) -> Self {
        RunContext {
            session: RefCell::new(session),
            record: RefCell::new(None),
            live: RefCell::new(None),
            progress: RefCell::new(Status::default()),
        }
    }

    /// The same context keeping the run's record (its directory, once made).
    pub fn with_record(self, record: RunRecord) -> Self {
        *self.record.borrow_mut() = Some(record);
        self
    }

    /// Makes this the current context of the thread until the guard is dropped.
    pub fn enter(self) -> Entered {
        let policy = self.session.borrow().kernels;
        let previous = CONTEXT.with(|c| c.borrow_mut().replace(Rc::new(self)));
        let previous_policy = crate::kernels::installed();
        crate::kernels::install(policy);
        Entered {
            previous,
            previous_policy,
        }
    }
}

thread_local! {
    static CONTEXT: RefCell<Option<Rc<RunContext>>> = const { RefCell::new(None) };
}

/// While alive, its context is the thread's current one; dropping it restores the one before.
#[must_use = "the context is left when this guard is dropped"]
pub struct Entered {
    previous: Option<Rc<RunContext>>,
    previous_policy: Option<KernelPolicy>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CONTEXT.with(|c| *c.borrow_mut() = previous);
        crate::kernels::restore(self.previous_policy);
    }
}

/// Runs `f` on the current context (a default one is made if none was entered).
fn with<T>(f: impl FnOnce(&RunContext) -> T) -> T {
    let context = CONTEXT.with(|c| {
        c.borrow_mut()
            .get_or_insert_with(|| Rc::new(RunContext::new(Session::new(crate::device::cpu(), 0))))
            .clone()
    });
    f(&context)
}

/// Runs `f` on the current session.
pub fn session<T>(f: impl FnOnce(&RefCell<Session>) -> T) -> T {
    with(|c| f(&c.session))
}

/// Runs `f` on the current run record (`None` outside `sslhost run`).
pub fn record<T>(f: impl FnOnce(&RefCell<Option<RunRecord>>) -> T) -> T {
    with(|c| f(&c.record))
}

/// Runs `f` on the current live functions (`None` before a script is compiled).
pub fn live<T>(f: impl FnOnce(&RefCell<Option<LiveFunctions>>) -> T) -> T {
    with(|c| f(&c.live))
}

/// Runs `f` on the current progress facts.
pub fn progress<T>(f: impl FnOnce(&RefCell<Status>) -> T) -> T {
    with(|c| f(&c.progress))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaving_a_context_restores_the_one_before_with_its_kernel_policy() {
        let outer = crate::session::with(|s| s.seed);
        let policy_before = crate::kernels::current();
        {
            let mut session = Session::new(crate::device::cpu(), 42);
            session.kernels.half_activations = !policy_before.half_activations;
            let _entered = RunContext::new(session).enter();
            assert_eq!(crate::session::with(|s| s.seed), 42);
            assert_eq!(
                crate::kernels::current().half_activations,
                !policy_before.half_activations
            );
            crate::train::progress::note_loss(1.5);
        }
        assert_eq!(crate::session::with(|s| s.seed), outer);
        assert_eq!(crate::kernels::current(), policy_before);
        assert_eq!(crate::train::progress::status().loss, None);
    }
}
