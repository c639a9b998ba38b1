//! The training loop's spine in scripts: `for b in steps(loader, epochs) { .. }`.
//!
//! `steps` streams batches across epochs starting at the run's first step (0, or the step a
//! resumed run continues from) and marks each step boundary for live functions.

use std::sync::{Arc, Mutex};

use rhai::plugin::*;

use crate::api::args::{RhaiResult, to_rhai};
use crate::data::{Batch, Steps};
use crate::error::Error;
use crate::session;

/// The batches of a whole run as a script value: `for b in steps(loader, epochs)`.
#[derive(Clone)]
pub struct StepStream {
    inner: Arc<Mutex<Steps>>,
}

impl Iterator for StepStream {
    type Item = RhaiResult<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(_) => return Some(Err(to_rhai(Error::Other("steps: poisoned".into())))),
        };
        let next = crate::guard::catch(|| guard.next().transpose());
        let item = next.transpose()?;
        if let Ok(b) = &item {
            // A new step begins: live functions may swap before their first call in it.
            session::with(|s| s.step = Some(b.step));
        }
        Some(item.map_err(to_rhai))
    }
}

/// Registers the iterator of `StepStream`, which an export module cannot declare.
pub fn register_iterators(engine: &mut Engine) {
    engine.register_iterator_result::<StepStream, Batch>();
}

/// The training loop.
#[export_module]
pub mod run_api {
    use crate::api::args::{RhaiResult, count, run};
    use crate::data::Loader;
    use crate::session;

    use super::StepStream;

    /// The stream of a run's steps.
    pub type Steps = StepStream;

    /// Batches for `epochs` epochs, from the run's first step on (a resumed run continues
    /// where its checkpoint stopped). `b.step` counts batches from the start of the run.
    ///
    /// ```rhai
    /// for b in steps(loader, cfg.epochs) {
    ///     let loss = objective(b.images);
    ///     opt.step(loss, live("lr", b.step, total));
    /// }
    /// ```
    #[rhai_fn(return_raw)]
    pub fn steps(loader: &mut Loader, epochs: i64) -> RhaiResult<Steps> {
        run(|| {
            let epochs = count(epochs, "epochs")? as u64;
            let (start, device) = session::with(|s| (s.start_step, s.device.clone()));
            let inner = loader.steps_on(epochs, start, &device)?;
            Ok(StepStream {
                inner: std::sync::Arc::new(std::sync::Mutex::new(inner)),
            })
        })
    }
}
