//! The tape of a training step's tensor calls: what replaying a recipe's step as a device
//! graph needs to know about the script that runs it.
//!
//! A recorded step can stand in for later ones only if every step makes the same tensor calls
//! (the same operation, on inputs made by the same earlier calls of the step or from outside
//! it, with the same scalars) and reads nothing back from the device before its end. The tape
//! checks that: from a loop's first step on, each call of the Rhai surface that makes a
//! tensor (`call`) or changes state (`effect`) is written down with where its inputs came
//! from, and reads are marked where they happen. [`Report`] names the tape most steps make
//! (the usual one), where it reads, and how the other steps' tapes differ from it (a log
//! step's extra work, a live edit).
//!
//! Values are computed as without the tape: a call's device part runs at once. It is already
//! a closure over the call's inputs, which is what a replay needs (answering a call from the
//! recording, or running the calls of a step again after the first one that differs).
//!
//! The tape lives on the script's thread and is off unless installed (`sslhost run --capture
//! check`).

use std::cell::RefCell;
use std::fmt;

use super::DynTensor;
use crate::error::Result;

/// Which call of which taped step made a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    step: u64,
    call: u32,
}

/// An input of a call, as steps are compared.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// The output of the step's call with this index.
    Call(u32),
    /// A tensor made outside the step's taped calls (a batch, its views, a queue, a
    /// parameter), known by its shape and element type.
    Outside { shape: Vec<usize>, float: bool },
}

/// One entry of a step's tape.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// A call of the Rhai surface: its name, scalar arguments and inputs.
    Call {
        name: &'static str,
        key: Vec<u64>,
        inputs: Vec<Source>,
    },
    /// Values read back from the device (`item`, `to_array`), inside the named call when a
    /// call reads (an optimiser step checking its loss on the CPU).
    Read { within: Option<&'static str> },
}

impl Entry {
    /// Whether both are calls of the same name on the same inputs (their scalars may differ).
    fn same_but_scalars(&self, other: &Entry) -> bool {
        match (self, other) {
            (
                Entry::Call { name, inputs, .. },
                Entry::Call {
                    name: other_name,
                    inputs: other_inputs,
                    ..
                },
            ) => name == other_name && inputs == other_inputs,
            _ => false,
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Read { within: None } => write!(f, "a read of device values"),
            Entry::Read { within: Some(c) } => write!(f, "a read of device values in `{c}`"),
            Entry::Call { name, inputs, .. } => {
                write!(f, "`{name}`(")?;
                for (i, s) in inputs.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    match s {
                        Source::Call(c) => write!(f, "entry {c}")?,
                        Source::Outside { shape, .. } => write!(f, "{shape:?}")?,
                    }
                }
                write!(f, ")")
            }
        }
    }
}

/// Steps whose tape differs from the usual one's, by kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// The first step with this tape.
    pub first_step: u64,
    /// Steps with this tape.
    pub steps: u64,
    /// Its length.
    pub entries: usize,
    /// The first entry where it differs from the usual tape.
    pub at: usize,
    /// How it differs there.
    pub how: String,
    /// Whether it is the usual tape with entries after its end (a log step's reads and
    /// extra work): a replay of the usual tape, then those entries run as they come.
    pub extends: bool,
}

/// How the taped steps compare: the tape most steps make (the usual one), where it reads the
/// device, and the steps that make another.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Steps taped.
    pub steps: u64,
    /// Entries (calls and reads) of the usual tape.
    pub entries: usize,
    /// Steps that make the usual tape.
    pub usual: u64,
    /// Where the usual tape reads device values: the entry, and the call it reads in.
    pub reads: Vec<(usize, Option<&'static str>)>,
    /// The other tapes, first seen first (the first few kinds).
    pub variants: Vec<Variant>,
    /// Steps with a tape of a kind not described (beyond the first few kinds).
    pub undescribed: u64,
}

/// The most kinds of tape a report keeps apart.
const KINDS: usize = 8;

impl Report {
    /// Whether every taped step (two at least) made the same calls.
    pub fn repeats(&self) -> bool {
        self.steps >= 2 && self.usual == self.steps
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps == 0 {
            return write!(f, "no step was taped");
        }
        write!(
            f,
            "{} of {} steps make the same {} tensor calls and reads",
            self.usual, self.steps, self.entries
        )?;
        if self.reads.is_empty() {
            write!(f, " (no reads)")?;
        } else {
            let at: Vec<String> = self
                .reads
                .iter()
                .map(|(at, within)| match within {
                    Some(c) => format!("{at} (in `{c}`)"),
                    None => at.to_string(),
                })
                .collect();
            write!(f, " (reads at {})", at.join(", "))?;
        }
        for v in &self.variants {
            let one = v.steps == 1;
            let (n, s, verb_s) = (
                v.steps,
                if one { "" } else { "s" },
                if one { "s" } else { "" },
            );
            if v.extends {
                write!(
                    f,
                    "; {n} step{s} from step {} add{verb_s} {} after it, starting with {}",
                    v.first_step,
                    v.entries - self.entries,
                    v.how
                )?;
            } else {
                write!(
                    f,
                    "; {n} step{s} from step {} depart{verb_s} from it at {}: {}",
                    v.first_step, v.at, v.how
                )?;
            }
        }
        if self.undescribed > 0 {
            write!(f, "; {} more steps make other tapes", self.undescribed)?;
        }
        Ok(())
    }
}

/// A kind of tape, and the steps that made it.
struct Kind {
    entries: Vec<Entry>,
    first_step: u64,
    steps: u64,
}

/// The tape of the running loop.
#[derive(Default)]
struct Tape {
    /// Serial of the open step (0: none open yet).
    serial: u64,
    /// The open step's number, as the loop counts it.
    step: Option<u64>,
    /// The open step's entries.
    current: Vec<Entry>,
    /// The kinds of tape seen, first seen first.
    kinds: Vec<Kind>,
    /// Steps whose tape was of no kind kept (after [`KINDS`] kinds).
    undescribed: u64,
    /// The taped calls running: the outermost's name first (only it is taped).
    running: Vec<&'static str>,
}

impl Tape {
    fn close_step(&mut self) {
        let Some(step) = self.step.take() else {
            return;
        };
        let entries = std::mem::take(&mut self.current);
        if let Some(kind) = self.kinds.iter_mut().find(|k| k.entries == entries) {
            kind.steps += 1;
        } else if self.kinds.len() < KINDS {
            self.kinds.push(Kind {
                entries,
                first_step: step,
                steps: 1,
            });
        } else {
            self.undescribed += 1;
        }
    }

    fn report(&self) -> Report {
        let steps = self.kinds.iter().map(|k| k.steps).sum::<u64>() + self.undescribed;
        // The usual tape: the most steps' (the first seen among equals).
        let Some(usual) = self
            .kinds
            .iter()
            .enumerate()
            .max_by_key(|(i, k)| (k.steps, std::cmp::Reverse(*i)))
            .map(|(_, k)| k)
        else {
            return Report::default();
        };
        let reads = usual
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Entry::Read { within } => Some((i, *within)),
                Entry::Call { .. } => None,
            })
            .collect();
        let variants = self
            .kinds
            .iter()
            .filter(|k| !std::ptr::eq(*k, usual))
            .map(|k| {
                let (a, b) = (&usual.entries, &k.entries);
                let at = a
                    .iter()
                    .zip(b)
                    .position(|(x, y)| x != y)
                    .unwrap_or(a.len().min(b.len()));
                let how = match (a.get(at), b.get(at)) {
                    (Some(x), Some(y)) if x.same_but_scalars(y) => {
                        format!("{y} with other scalar arguments than the usual tape's")
                    }
                    (Some(x), Some(y)) => format!("{y} where the usual tape has {x}"),
                    (Some(x), None) => format!("it ends where the usual tape has {x}"),
                    (None, Some(y)) => y.to_string(),
                    (None, None) => "nothing".into(),
                };
                Variant {
                    first_step: k.first_step,
                    steps: k.steps,
                    entries: b.len(),
                    at,
                    how,
                    extends: at == a.len() && b.len() > a.len(),
                }
            })
            .collect();
        Report {
            steps,
            entries: usual.entries.len(),
            usual: usual.steps,
            reads,
            variants,
            undescribed: self.undescribed,
        }
    }

    fn source(&self, t: &DynTensor) -> Source {
        match t.origin {
            Some(o) if o.step == self.serial => Source::Call(o.call),
            _ => Source::Outside {
                shape: t.shape(),
                float: !t.is_int(),
            },
        }
    }
}

thread_local! {
    static TAPE: RefCell<Option<Tape>> = const { RefCell::new(None) };
}

/// Starts taping this thread's training loop (replacing a tape already running).
pub fn install() {
    TAPE.with(|t| *t.borrow_mut() = Some(Tape::default()));
}

/// Stops taping and says how the steps compared (`None` when no tape was installed).
pub fn finish() -> Option<Report> {
    TAPE.with(|t| {
        let mut tape = t.borrow_mut().take()?;
        tape.close_step();
        Some(tape.report())
    })
}

/// A new step of the loop begins (the one before ends).
pub fn begin_step(step: u64) {
    TAPE.with(|t| {
        if let Some(tape) = t.borrow_mut().as_mut() {
            tape.close_step();
            tape.serial += 1;
            tape.step = Some(step);
        }
    });
}

/// The loop ended: the open step ends with it.
pub fn end_steps() {
    TAPE.with(|t| {
        if let Some(tape) = t.borrow_mut().as_mut() {
            tape.close_step();
        }
    });
}

/// Notes a read of device values in the open step.
pub(super) fn note_read() {
    TAPE.with(|t| {
        if let Ok(mut tape) = t.try_borrow_mut()
            && let Some(tape) = tape.as_mut()
            && tape.step.is_some()
        {
            let within = tape.running.first().copied();
            tape.current.push(Entry::Read { within });
        }
    });
}

/// What a taped call does before its device part: `None` when nothing is taped (no tape, no
/// open step, or inside another call), else the open step's serial and the inputs' sources.
fn enter(name: &'static str, inputs: &[&DynTensor]) -> Option<(u64, Vec<Source>)> {
    TAPE.with(|t| {
        let mut tape = t.borrow_mut();
        let tape = tape.as_mut()?;
        tape.running.push(name);
        if tape.running.len() > 1 || tape.step.is_none() {
            return None;
        }
        let sources = inputs.iter().map(|x| tape.source(x)).collect();
        Some((tape.serial, sources))
    })
}

/// Ends a call that [`enter`] began; tapes it when `enter` said to (`taped`), and returns
/// what its output is known by.
fn leave(name: &'static str, key: &[u64], taped: Option<(u64, Vec<Source>)>) -> Option<Origin> {
    TAPE.with(|t| {
        let mut tape = t.borrow_mut();
        let tape = tape.as_mut()?;
        tape.running.pop();
        let (serial, inputs) = taped?;
        let call = tape.current.len() as u32;
        tape.current.push(Entry::Call {
            name,
            key: key.to_vec(),
            inputs,
        });
        Some(Origin { step: serial, call })
    })
}

/// Runs a call of the Rhai surface that makes a tensor: `device` computes it from `inputs`
/// (cloned handles, in order). `name` names the operation and `key` holds its scalar
/// arguments (as bits), so that two steps' calls compare equal only when they compute the
/// same thing. Taped when a step is open; the output is then known as this call's.
pub fn call(
    name: &'static str,
    inputs: &[&DynTensor],
    key: &[u64],
    device: impl Fn(&[DynTensor]) -> Result<DynTensor> + 'static,
) -> Result<DynTensor> {
    let taped = enter(name, inputs);
    let values: Vec<DynTensor> = inputs.iter().map(|x| (*x).clone()).collect();
    let out = device(&values);
    let origin = leave(name, key, taped.filter(|_| out.is_ok()));
    out.map(|mut t| {
        t.origin = origin;
        t
    })
}

/// Runs a call of the Rhai surface that changes state rather than making a tensor (an
/// optimiser step, an EMA update, an enqueue): `work` does it; taped like [`call`].
pub fn effect<R>(
    name: &'static str,
    inputs: &[&DynTensor],
    key: &[u64],
    work: impl FnOnce() -> Result<R>,
) -> Result<R> {
    let taped = enter(name, inputs);
    let out = work();
    leave(name, key, taped.filter(|_| out.is_ok()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::BinaryOp;

    fn t(v: f32) -> DynTensor {
        DynTensor::from_vec(vec![v, v], &[2], &crate::device::cpu()).unwrap()
    }

    fn add(a: &DynTensor, b: &DynTensor) -> DynTensor {
        call("add", &[a, b], &[], |x| x[0].binary(&x[1], BinaryOp::Add)).unwrap()
    }

    fn scale(a: &DynTensor, s: f64) -> DynTensor {
        call("mul_f", &[a], &[s.to_bits()], move |x| {
            x[0].binary_scalar(s, BinaryOp::Mul, false)
        })
        .unwrap()
    }

    #[test]
    fn the_usual_tape_is_found_and_the_steps_that_differ_are_named() {
        install();
        for step in 0..7u64 {
            begin_step(step);
            let batch = t(step as f32);
            let h = add(&batch, &batch);
            // Step 5 scales by another factor (a live edit, say).
            let factor = if step == 5 { 0.25 } else { 0.5 };
            let z = scale(&h, factor);
            let loss = add(&z, &h);
            // Steps 0 and 4 log: one read more, at the end.
            if step % 4 == 0 {
                let value = loss.to_f64_vec().unwrap()[0];
                assert_eq!(value, step as f64 * 2.0 * (1.0 + factor));
            }
        }
        end_steps();
        let report = finish().unwrap();
        assert_eq!(report.steps, 7);
        // Steps 1, 2, 3 and 6 make the usual tape: three calls.
        assert_eq!((report.usual, report.entries), (4, 3), "{report}");
        assert!(report.reads.is_empty(), "{report}");
        assert!(!report.repeats());
        let described: Vec<(u64, u64, usize)> = report
            .variants
            .iter()
            .map(|v| (v.first_step, v.steps, v.at))
            .collect();
        // The logging steps read after the third call; step 5 differs at its second.
        assert_eq!(described, vec![(0, 2, 3), (5, 1, 1)], "{report}");
        assert!(report.variants[0].how.contains("read"), "{report}");
        assert!(report.variants[0].extends, "{report}");
        assert!(report.variants[1].how.contains("`mul_f`"), "{report}");
        assert!(
            report.variants[1].how.contains("other scalar arguments"),
            "{report}"
        );
        assert!(!report.variants[1].extends, "{report}");
        let text = report.to_string();
        assert!(
            text.contains("2 steps from step 0 add 1 after it"),
            "{text}"
        );
        assert!(
            text.contains("1 step from step 5 departs from it at 1"),
            "{text}"
        );
    }

    #[test]
    fn inputs_are_compared_by_the_call_that_made_them() {
        install();
        for step in 0..4u64 {
            begin_step(step);
            let a = t(1.0);
            let h1 = add(&a, &a);
            let h2 = add(&h1, &a);
            // Step 2 adds h1 where the others add h2: the same names, other inputs.
            let last = if step == 2 { &h1 } else { &h2 };
            add(last, &h1);
        }
        let report = finish().unwrap();
        assert_eq!((report.usual, report.variants.len()), (3, 1), "{report}");
        assert_eq!(report.variants[0].at, 2, "{report}");
        assert!(
            report.variants[0].how.contains("(entry 0, entry 0)"),
            "{report}"
        );
    }

    #[test]
    fn a_read_inside_a_call_is_named_with_it() {
        install();
        for step in 0..2u64 {
            begin_step(step);
            let a = t(1.0);
            // A value computed on the device (a new tensor has its values on the host too).
            let loss = add(&a, &a);
            effect("opt.step", &[&loss], &[7], || loss.to_f64_vec()).unwrap();
        }
        let report = finish().unwrap();
        assert!(report.repeats(), "{report}");
        assert_eq!(report.reads, vec![(1, Some("opt.step"))], "{report}");
        assert!(report.to_string().contains("1 (in `opt.step`)"), "{report}");
    }

    #[test]
    fn nothing_is_taped_outside_steps_or_inside_a_call_or_without_a_tape() {
        assert!(finish().is_none());
        let a = t(1.0);
        assert_eq!(add(&a, &a).origin, None, "no tape");
        install();
        assert_eq!(add(&a, &a).origin, None, "no step open");
        begin_step(0);
        let nested = call("outer", &[&a], &[], |x| Ok(add(&x[0], &x[0]))).unwrap();
        assert_eq!(nested.origin.map(|o| o.call), Some(0));
        let once = finish().unwrap();
        assert_eq!((once.steps, once.entries), (1, 1), "{once}");
        assert!(!once.repeats(), "one step shows nothing repeats");
    }

    #[test]
    fn a_failed_call_is_not_taped() {
        install();
        begin_step(0);
        let a = t(1.0);
        let wrong = DynTensor::from_vec(vec![1.0; 3], &[3], &crate::device::cpu()).unwrap();
        assert!(
            call("add", &[&a, &wrong], &[], |x| x[0]
                .binary(&x[1], BinaryOp::Add))
            .is_err()
        );
        add(&a, &a);
        let report = finish().unwrap();
        assert_eq!(report.entries, 1, "{report}");
    }
}
