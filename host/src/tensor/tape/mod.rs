//! The tape of a training step's tensor calls: what replaying a recipe's step as a device
//! graph needs to know about the script that runs it, and the replay itself.
//!
//! A recorded step can stand in for later ones only if every step makes the same tensor calls
//! (the same operation, on inputs made by the same earlier calls of the step or from outside
//! it, with the same scalars) and reads nothing back from the device before its end. The
//! tape checks that: from a loop's first step on, each call of the Rhai surface that makes a
//! tensor ([`call`]) or changes state ([`effect`]) is written down with where its inputs came
//! from, and reads are marked where they happen. [`Report`] names the tape most steps make
//! (the usual one), where it reads, and how the other steps' tapes differ from it (a log
//! step's extra work, a live edit).
//!
//! [`Mode::Replay`] also replays (`replay.rs`): a step is recorded as it runs, and the steps
//! after it are answered from the recording, call by call, until one departs from it. Each
//! call's device part is a closure over its inputs, so the answered calls can run later,
//! together, in their order: on a GPU that is where a captured graph is launched; here the
//! closures run (which computes what running the step as it came computes, to the bit).
//!
//! The tape lives on the script's thread and is off unless installed (`sslhost run --capture
//! check|replay`).

mod replay;
mod report;

pub use replay::{GraphMaker, lost_at};
pub use report::{ReplayReport, Report, Variant};

use std::cell::RefCell;
use std::rc::Rc;

use super::DynTensor;
use crate::error::Result;
use replay::Replay;
use report::{Entry, Kinds, Source};

/// Which call of which taped step made a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    step: u64,
    call: u32,
}

/// What the tape does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Writes the steps' calls down and compares them; every call runs as it comes.
    Check,
    /// Also answers the steps after a recorded one from the recording (see the module notes).
    Replay,
}

/// The device part of a call that makes a tensor.
pub type CallPart = Rc<dyn Fn(&[DynTensor]) -> Result<DynTensor>>;

/// The device part of a call that changes state.
pub type EffectPart = Rc<dyn Fn(&[DynTensor]) -> Result<()>>;

/// The tape of the running loop.
struct Tape {
    mode: Mode,
    /// Serial of the open step (0: none open yet).
    serial: u64,
    /// The open step's number, as the loop counts it.
    step: Option<u64>,
    /// The open step's entries.
    current: Vec<Entry>,
    /// The kinds of tape the steps made.
    kinds: Kinds,
    /// The taped calls running: the outermost's name first (only it is taped).
    running: Vec<&'static str>,
    /// The replay's state (`Mode::Replay`).
    replay: Replay,
}

impl Tape {
    fn new(mode: Mode) -> Self {
        Tape {
            mode,
            serial: 0,
            step: None,
            current: Vec::new(),
            kinds: Kinds::default(),
            running: Vec::new(),
            replay: Replay::default(),
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

    /// Whether a call is taped when `running` holds `outer` calls at its start (1 once the
    /// call is pushed, 0 before): a step is open, the call is not inside another or inside
    /// replayed work.
    fn taping(&self, outer: usize) -> bool {
        self.running.len() == outer && self.step.is_some() && !self.replay.launching()
    }

    /// Whether the call `name`, about to begin, takes its number as an input (see
    /// [`call_number`]).
    fn takes_number(&self, name: &'static str) -> bool {
        self.mode == Mode::Replay
            && self.taping(0)
            && self.replay.takes_number(self.current.len(), name)
    }

    /// The origin the open step's next entry gives its output.
    fn next_origin(&self) -> Origin {
        Origin {
            step: self.serial,
            call: self.current.len() as u32,
        }
    }
}

thread_local! {
    static TAPE: RefCell<Option<Tape>> = const { RefCell::new(None) };
}

/// Runs `f` on the installed tape, if any, with no borrow held by the caller.
fn with_tape<R>(f: impl FnOnce(&mut Tape) -> R) -> Option<R> {
    TAPE.with(|t| t.borrow_mut().as_mut().map(f))
}

/// Starts taping this thread's training loop (replacing a tape already running).
pub fn install(mode: Mode) {
    replay::forget_lost();
    TAPE.with(|t| *t.borrow_mut() = Some(Tape::new(mode)));
}

/// Whether the step about to begin would be recorded as a device graph when it matches the
/// recording (asked between steps): a failure of that capture loses the state the step was
/// to update, so a checkpoint written now is what a run resumes from then ([`lost_at`]).
pub fn captures_next() -> bool {
    with_tape(|tape| tape.step.is_none() && tape.replay.captures_next()).unwrap_or(false)
}

/// Under [`Mode::Replay`], launches a step's work as a graph made by `maker` on `device` once
/// warmed up, where the backend records graphs (the kernel policy's `capture` must be on:
/// updates in place). Must come before the loop's first step.
pub fn use_graphs(device: &burn::tensor::Device, maker: GraphMaker) {
    with_tape(|tape| {
        if tape.mode == Mode::Replay {
            tape.replay.use_graphs(device, maker);
        }
    });
}

/// Ends the open step, then stops taping and says how the steps compared (`None` when no tape
/// was installed). An error of the open step's replayed work is returned instead.
pub fn finish() -> Option<Result<Report>> {
    let ended = end_steps();
    let tape = TAPE.with(|t| t.borrow_mut().take())?;
    let mut report = tape.kinds.report();
    if tape.mode == Mode::Replay {
        report.replay = Some(tape.replay.report());
    }
    Some(ended.map(|()| report))
}

/// A new step of the loop begins (the one before ends: its replayed work runs now).
pub fn begin_step(step: u64) -> Result<()> {
    end_steps()?;
    with_tape(|tape| {
        tape.serial += 1;
        tape.step = Some(step);
        if tape.mode == Mode::Replay {
            tape.replay.begin(step, tape.serial);
        }
    });
    Ok(())
}

/// The loop ended, or a step: the open step's replayed work runs, and its tape is counted.
pub fn end_steps() -> Result<()> {
    let done = replay::settle("the step ended");
    with_tape(|tape| {
        if let Some(step) = tape.step.take() {
            let entries = std::mem::take(&mut tape.current);
            if tape.mode == Mode::Replay {
                tape.replay.end(&entries);
            }
            tape.kinds.add(step, entries);
        }
    });
    done
}

/// Notes a read of device values in the open step: replayed work runs first, since the read
/// may need it.
pub(super) fn note_read() {
    // A read inside the replayed work itself (the CPU's check of a loss) is that work's own.
    let taped = with_tape(|tape| tape.step.is_some() && !tape.replay.launching()).unwrap_or(false);
    if !taped {
        return;
    }
    // A failure here shows again where the read's value is used (`resolve`).
    let _ = replay::settle("a read of device values");
    with_tape(|tape| {
        let within = tape.running.first().copied();
        tape.current.push(Entry::Read { within });
    });
}

/// The tensor to use for `t`: the value its call computed when that call was answered from a
/// recording and its work has since run (here), else `t` itself. Any function of the Rhai
/// surface that reads a tensor's values, or passes it to something not taped, takes it
/// through here; replayed work runs first if it has not.
pub fn resolve(t: &DynTensor) -> Result<DynTensor> {
    let pending = with_tape(|tape| t.origin.is_some_and(|o| o.step == tape.serial));
    if pending == Some(true) {
        replay::settle("a value the step computed was needed")?;
    }
    Ok(replay::resolved(t))
}

/// Replayed work runs before what comes next changes the state it reads (a network's mode,
/// a state tensor).
pub fn barrier() -> Result<()> {
    replay::settle("the step changed state outside its tensor calls")
}

/// Runs a call of the Rhai surface that makes a tensor: `device` computes it from `inputs`
/// (cloned handles, in order). `name` names the operation and `key` holds its scalar
/// arguments (as bits), so that two steps' calls compare equal only when they compute the
/// same thing. Taped when a step is open; the output is then known as this call's. While a
/// recording is replayed, a call that matches it returns the recorded output and leaves its
/// work for later.
pub fn call(
    name: &'static str,
    inputs: &[&DynTensor],
    key: &[u64],
    device: impl Fn(&[DynTensor]) -> Result<DynTensor> + 'static,
) -> Result<DynTensor> {
    call_entry(name, inputs, key, false, device)
}

/// A [`call`] with a number among its arguments (`x * s`), which a replay can take as an
/// input: `device` computes the call from its inputs and the number, `as_input` from its
/// inputs followed by the number as a one-element tensor, to the same values.
///
/// A number that changes from step to step (a schedule's) makes each step depart from a
/// recording that keeps it among the call's scalars. So where a step departs from a recording
/// only in such a number, the recordings after it take that call's number as an input from
/// outside the step, uploaded each step, which a recorded graph then reads.
pub fn call_number(
    name: &'static str,
    inputs: &[&DynTensor],
    key: &[u64],
    number: f64,
    device: impl Fn(&[DynTensor], f64) -> Result<DynTensor> + 'static,
    as_input: impl Fn(&[DynTensor]) -> Result<DynTensor> + 'static,
) -> Result<DynTensor> {
    if with_tape(|tape| tape.takes_number(name)).unwrap_or(false) {
        let on = inputs
            .first()
            .map(|x| x.device())
            .ok_or_else(|| crate::error::Error::Other(format!("`{name}` has no tensor input")))?;
        let value = DynTensor::from_vec(vec![number as f32], &[1], &on)?;
        let mut all = inputs.to_vec();
        all.push(&value);
        return call_entry(name, &all, key, false, as_input);
    }
    let mut key = key.to_vec();
    key.push(number.to_bits());
    call_entry(name, inputs, &key, true, move |x| device(x, number))
}

/// [`call`], its entry marked, where `number`, as ending in a number a replay can take as an
/// input.
fn call_entry(
    name: &'static str,
    inputs: &[&DynTensor],
    key: &[u64],
    number: bool,
    device: impl Fn(&[DynTensor]) -> Result<DynTensor> + 'static,
) -> Result<DynTensor> {
    let entry = enter(name, inputs, key, number);
    let out = match &entry {
        None => device(&resolve_all(inputs)),
        Some(entry) => replay::answer(entry, inputs).and_then(|answered| match answered {
            Some(recorded) => Ok(recorded),
            None => {
                let part: CallPart = Rc::new(device);
                let out = part(&resolve_all(inputs))?;
                replay::record_call(&part, &out);
                Ok(out)
            }
        }),
    };
    // The output is known by this call's place, or by none: never by an input's it cloned.
    let origin = leave(entry.filter(|_| out.is_ok()));
    out.map(|t| with_origin(t, origin))
}

/// Runs a call of the Rhai surface that changes state rather than making a tensor (an
/// optimiser step, an EMA update, an enqueue), taped like [`call`]. `eager` does it from the
/// inputs; under a replay, `staged` does its host part (writing the step's learning rate to
/// the device, say) and returns its device part, which runs with the step's other work.
pub fn effect(
    name: &'static str,
    inputs: &[&DynTensor],
    key: &[u64],
    eager: impl FnOnce(&[DynTensor]) -> Result<()>,
    staged: impl FnOnce() -> Result<EffectPart>,
) -> Result<()> {
    let replaying = with_tape(|t| t.mode == Mode::Replay).unwrap_or(false);
    let entry = enter(name, inputs, key, false);
    let out = match &entry {
        Some(entry) if replaying => staged().and_then(|part| {
            if replay::answer_effect(entry, inputs)? {
                return Ok(());
            }
            part(&resolve_all(inputs))?;
            replay::record_effect(&part);
            Ok(())
        }),
        _ => eager(&resolve_all(inputs)),
    };
    leave(entry.filter(|_| out.is_ok()));
    out
}

/// An [`effect`] that applies `apply` to the shared `target` (a queue, a state tensor) with
/// the call's one tensor input: at once, or under a replay with the step's device work.
pub fn effect_on<T: 'static>(
    name: &'static str,
    input: &DynTensor,
    target: &Rc<RefCell<T>>,
    apply: fn(&mut T, &DynTensor) -> Result<()>,
) -> Result<()> {
    let id = Rc::as_ptr(target) as *const () as u64;
    let later = target.clone();
    effect(
        name,
        &[input],
        &[id],
        |x| apply(&mut target.borrow_mut(), &x[0]),
        move || {
            Ok(Rc::new(move |x: &[DynTensor]| {
                apply(&mut later.borrow_mut(), &x[0])
            }))
        },
    )
}

fn with_origin(mut t: DynTensor, origin: Option<Origin>) -> DynTensor {
    t.origin = origin;
    t
}

fn resolve_all(inputs: &[&DynTensor]) -> Vec<DynTensor> {
    inputs.iter().map(|x| replay::resolved(x)).collect()
}

/// Begins a call: `None` when it is not taped (no tape, no open step, inside another call or
/// inside replayed work), else its entry.
fn enter(name: &'static str, inputs: &[&DynTensor], key: &[u64], number: bool) -> Option<Entry> {
    with_tape(|tape| {
        tape.running.push(name);
        if !tape.taping(1) {
            return None;
        }
        Some(Entry::Call {
            name,
            key: key.to_vec(),
            inputs: inputs.iter().map(|x| tape.source(x)).collect(),
            number,
        })
    })
    .flatten()
}

/// Ends a call that [`enter`] began, taping `entry` if given; the origin its output takes.
fn leave(entry: Option<Entry>) -> Option<Origin> {
    with_tape(|tape| {
        tape.running.pop();
        let entry = entry?;
        let origin = tape.next_origin();
        tape.current.push(entry);
        Some(origin)
    })
    .flatten()
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
        install(Mode::Check);
        for step in 0..7u64 {
            begin_step(step).unwrap();
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
        end_steps().unwrap();
        let report = finish().unwrap().unwrap();
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
        install(Mode::Check);
        for step in 0..4u64 {
            begin_step(step).unwrap();
            let a = t(1.0);
            let h1 = add(&a, &a);
            let h2 = add(&h1, &a);
            // Step 2 adds h1 where the others add h2: the same names, other inputs.
            let last = if step == 2 { &h1 } else { &h2 };
            add(last, &h1);
        }
        let report = finish().unwrap().unwrap();
        assert_eq!((report.usual, report.variants.len()), (3, 1), "{report}");
        assert_eq!(report.variants[0].at, 2, "{report}");
        assert!(
            report.variants[0].how.contains("(entry 0, entry 0)"),
            "{report}"
        );
    }

    #[test]
    fn a_read_inside_a_call_is_named_with_it() {
        install(Mode::Check);
        for step in 0..2u64 {
            begin_step(step).unwrap();
            let a = t(1.0);
            // A value computed on the device (a new tensor has its values on the host too).
            let loss = add(&a, &a);
            let read = |x: &[DynTensor]| x[0].to_f64_vec().map(|_| ());
            effect("opt.step", &[&loss], &[7], read, || Ok(Rc::new(read))).unwrap();
        }
        let report = finish().unwrap().unwrap();
        assert!(report.repeats(), "{report}");
        assert_eq!(report.reads, vec![(1, Some("opt.step"))], "{report}");
        assert!(report.to_string().contains("1 (in `opt.step`)"), "{report}");
    }

    #[test]
    fn nothing_is_taped_outside_steps_or_inside_a_call_or_without_a_tape() {
        assert!(finish().is_none());
        let a = t(1.0);
        assert_eq!(add(&a, &a).origin, None, "no tape");
        install(Mode::Check);
        assert_eq!(add(&a, &a).origin, None, "no step open");
        begin_step(0).unwrap();
        let nested = call("outer", &[&a], &[], |x| Ok(add(&x[0], &x[0]))).unwrap();
        assert_eq!(nested.origin.map(|o| o.call), Some(0));
        let once = finish().unwrap().unwrap();
        assert_eq!((once.steps, once.entries), (1, 1), "{once}");
        assert!(!once.repeats(), "one step shows nothing repeats");
    }

    #[test]
    fn a_failed_call_is_not_taped() {
        install(Mode::Check);
        begin_step(0).unwrap();
        let a = t(1.0);
        let wrong = DynTensor::from_vec(vec![1.0; 3], &[3], &crate::device::cpu()).unwrap();
        assert!(
            call("add", &[&a, &wrong], &[], |x| x[0]
                .binary(&x[1], BinaryOp::Add))
            .is_err()
        );
        add(&a, &a);
        let report = finish().unwrap().unwrap();
        assert_eq!(report.entries, 1, "{report}");
    }

    /// A step of a tiny loop: `state = 0.5 * state + batch` (the state read and set as a
    /// recipe's state tensor is), then `loss = w * state`, read at the end; `w` changes at
    /// step `edit`. Returns the loss.
    fn tiny_step(step: u64, state: &Rc<std::cell::RefCell<DynTensor>>, edit: u64) -> f64 {
        tiny_step_or_error(step, state, edit).unwrap()
    }

    /// [`tiny_step`], with the error of its replayed work (run at its read).
    fn tiny_step_or_error(
        step: u64,
        state: &Rc<std::cell::RefCell<DynTensor>>,
        edit: u64,
    ) -> Result<f64> {
        let batch = t(step as f32 + 1.0);
        let read = state.clone();
        let old = call("state.value", &[], &[1], move |_| Ok(read.borrow().clone())).unwrap();
        let new = add(&scale(&old, 0.5), &batch);
        let (now, later) = (state.clone(), state.clone());
        effect(
            "state.set",
            &[&new],
            &[1],
            move |x| {
                *now.borrow_mut() = x[0].clone();
                Ok(())
            },
            move || {
                let later = later.clone();
                Ok(Rc::new(move |x: &[DynTensor]| {
                    *later.borrow_mut() = x[0].clone();
                    Ok(())
                }))
            },
        )
        .unwrap();
        let loss = scale(&new, if step >= edit { 2.0 } else { 1.0 });
        Ok(resolve(&loss)?.to_f64_vec()?[0])
    }

    /// Runs `step` for steps `0..steps` under a replay whose captures fail (the stand-in),
    /// asking between steps whether the next is captured: the steps announced so, and the
    /// first step that failed with its error.
    fn announced_until_failure(
        steps: u64,
        mut step: impl FnMut(u64) -> Result<()>,
    ) -> (Vec<u64>, Option<(u64, String)>) {
        install(Mode::Replay);
        use_graphs(&crate::device::cpu(), GraphMaker::Failing);
        let mut announced = Vec::new();
        for n in 0..steps {
            end_steps().unwrap();
            if captures_next() {
                announced.push(n);
            }
            begin_step(n).unwrap();
            if let Err(e) = step(n) {
                return (announced, Some((n, e.to_string())));
            }
        }
        (announced, None)
    }

    #[test]
    fn a_recording_that_reads_inside_a_call_is_not_captured_and_the_next_one_may_be() {
        let (announced, failed) = announced_until_failure(12, |step| {
            let a = t(1.0);
            let loss = add(&a, &a);
            // Up to step 5 the update reads the loss inside its call (the CPU's check), then
            // no more (an edit): step 6 departs, 7 is recorded, 8 and 9 warm up, 10 captures.
            let reads = step < 6;
            let update = move |x: &[DynTensor]| match reads {
                true => x[0].to_f64_vec().map(|_| ()),
                false => Ok(()),
            };
            let key = [reads as u64];
            effect("opt.step", &[&loss], &key, update, move || {
                Ok(Rc::new(update))
            })?;
            // The loss is logged at the step's end: the launch.
            resolve(&loss)?.to_f64_vec().map(|_| ())
        });
        assert_eq!(announced, [10]);
        assert_eq!(failed.map(|(step, _)| step), Some(10));
        let replay = finish().unwrap().unwrap().replay.unwrap();
        assert_eq!(replay.departures, 1, "{replay:?}");
    }

    #[test]
    fn the_boundary_before_each_capture_is_announced_and_a_failed_capture_remembered() {
        let state = Rc::new(std::cell::RefCell::new(t(0.0)));
        // The scale changes at step 2: it departs, step 3 is recorded afresh, 4 and 5 warm the
        // capture up, and step 6's launch (at its read) captures.
        let (announced, failed) =
            announced_until_failure(10, |step| tiny_step_or_error(step, &state, 2).map(|_| ()));
        assert_eq!(announced, [6]);
        let (step, why) = failed.expect("the capture failed");
        assert_eq!(step, 6);
        assert!(
            why.contains("recording step 6 as a device graph failed"),
            "{why}"
        );
        assert_eq!(lost_at(), Some(6));
        let replay = finish().unwrap().unwrap().replay.unwrap();
        assert_eq!(replay.departures, 1, "{replay:?}");
        assert!(
            replay
                .graph
                .as_deref()
                .unwrap()
                .starts_with("failed at step 6"),
            "{replay:?}"
        );
        // A new tape forgets it.
        install(Mode::Replay);
        assert_eq!(lost_at(), None);
        finish();
    }

    #[test]
    fn a_replay_computes_what_running_each_step_computes_and_departs_at_an_edit() {
        let run = |mode: Option<Mode>| {
            if let Some(m) = mode {
                install(m);
            }
            let state = Rc::new(std::cell::RefCell::new(t(0.0)));
            let losses: Vec<f64> = (0..6u64)
                .map(|step| {
                    begin_step(step).unwrap();
                    tiny_step(step, &state, 4)
                })
                .collect();
            (losses, finish().map(|r| r.unwrap()))
        };
        let (eager, none) = run(None);
        assert!(none.is_none());
        let (replayed, report) = run(Some(Mode::Replay));
        assert_eq!(replayed, eager);
        let replay = report.unwrap().replay.unwrap();
        // Step 0 recorded, 1-3 replayed, 4 departs at the edited scale, 5 is recorded again.
        assert_eq!(
            (replay.recorded, replay.replayed, replay.departures),
            (2, 3, 1),
            "{replay:?}"
        );
        assert_eq!(replay.departed[0].0, 4, "{replay:?}");
        assert!(replay.departed[0].1.contains("`mul_f`"), "{replay:?}");
    }

    fn scale_by_number(a: &DynTensor, s: f64) -> DynTensor {
        call_number(
            "mul_f",
            &[a],
            &[],
            s,
            |x, s| x[0].binary_scalar(s, BinaryOp::Mul, false),
            |x| x[0].binary_number(&x[1], BinaryOp::Mul, false),
        )
        .unwrap()
    }

    #[test]
    fn a_number_as_an_input_computes_what_the_number_computes_gradients_too() {
        let device = crate::device::cpu();
        let values = vec![0.3f32, -1.7, 2.9, 0.11, -0.45, 7.0];
        for s in [0.1, -3.7, 1.0 / 3.0] {
            let number = DynTensor::from_vec(vec![s as f32], &[1], &device).unwrap();
            for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
                for first in [false, true] {
                    // y = x op s, then loss = sum(y * y): its gradient passes through op's.
                    let run = |as_input: bool| {
                        let x = DynTensor::from_vec(values.clone(), &[2, 3], &device)
                            .unwrap()
                            .require_grad()
                            .unwrap();
                        let y = match as_input {
                            true => x.binary_number(&number, op, first),
                            false => x.binary_scalar(s, op, first),
                        }
                        .unwrap();
                        let loss = y.binary(&y, BinaryOp::Mul).unwrap().sum().unwrap();
                        let grads = loss.float4("loss").unwrap().backward();
                        let g = x.float4("x").unwrap().grad(&grads).unwrap();
                        let g = g.into_data().try_to_vec::<f32>().unwrap();
                        (y.to_f64_vec().unwrap(), g)
                    };
                    assert_eq!(run(true), run(false), "{s} {op:?} first: {first}");
                }
            }
        }
    }

    #[test]
    fn a_number_that_changes_every_step_is_taken_as_an_input_after_one_departure() {
        let run = |mode: Option<Mode>| {
            if let Some(m) = mode {
                install(m);
            }
            let losses: Vec<f64> = (0..8u64)
                .map(|step| {
                    begin_step(step).unwrap();
                    let h = add(&t(step as f32 + 1.0), &t(0.5));
                    // A schedule's number, and a constant one.
                    let z = scale_by_number(&h, 1.0 / (step as f64 + 3.0));
                    let loss = scale_by_number(&z, 0.25);
                    resolve(&loss).unwrap().to_f64_vec().unwrap()[0]
                })
                .collect();
            (losses, finish().map(|r| r.unwrap()))
        };
        let (eager, _) = run(None);
        let (replayed, report) = run(Some(Mode::Replay));
        assert_eq!(replayed, eager, "the same values to the bit");
        let report = report.unwrap();
        let replay = report.replay.clone().unwrap();
        // Step 0 recorded; step 1 departs at the scheduled number; step 2 is recorded with
        // that number as an input, and steps 3-7 replay it.
        assert_eq!(
            (replay.recorded, replay.replayed, replay.departures),
            (2, 5, 1),
            "{report}"
        );
        assert_eq!(replay.numbers, vec![(1, "mul_f")], "{report}");
        assert!(
            report
                .to_string()
                .contains("numbers taken as inputs, as they changed: `mul_f` at 1"),
            "{report}"
        );
    }

    #[test]
    fn a_step_that_departs_in_its_calls_gives_no_number_to_take_as_an_input() {
        install(Mode::Replay);
        for step in 0..4u64 {
            begin_step(step).unwrap();
            let batch = t(step as f32);
            let a = add(&batch, &batch);
            // Step 1 makes another call second; its third call then differs from the
            // recording's third only in its number, by coincidence.
            let (x, last) = match step {
                1 => (add(&a, &batch), 5.0),
                _ => (scale_by_number(&a, 2.0), 3.0),
            };
            resolve(&scale_by_number(&x, last)).unwrap();
        }
        let report = finish().unwrap().unwrap();
        let replay = report.replay.clone().unwrap();
        assert_eq!(
            (replay.recorded, replay.replayed, replay.departures),
            (2, 1, 1),
            "{report}"
        );
        assert!(replay.numbers.is_empty(), "{report}");
    }

    #[test]
    fn a_replayed_call_returns_the_recorded_output_until_its_work_runs() {
        install(Mode::Replay);
        let outputs: Vec<(DynTensor, DynTensor)> = (0..2u64)
            .map(|step| {
                begin_step(step).unwrap();
                let h = add(&t(step as f32), &t(1.0));
                (h.clone(), resolve(&h).unwrap())
            })
            .collect();
        end_steps().unwrap();
        // Step 1's call was answered with step 0's output; resolving it ran the work.
        assert_eq!(outputs[1].0.to_f64_vec().unwrap(), vec![1.0, 1.0]);
        assert_eq!(outputs[1].1.to_f64_vec().unwrap(), vec![2.0, 2.0]);
        assert_eq!(outputs[0].1.to_f64_vec().unwrap(), vec![1.0, 1.0]);
        let replay = finish().unwrap().unwrap().replay.unwrap();
        assert_eq!((replay.recorded, replay.replayed), (1, 1), "{replay:?}");
    }

    #[test]
    fn an_effect_under_a_replay_runs_its_host_part_at_once_and_its_device_part_later() {
        install(Mode::Replay);
        let log = Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
        for step in 0..3u64 {
            begin_step(step).unwrap();
            let loss = add(&t(1.0), &t(step as f32));
            let (host, device) = (log.clone(), log.clone());
            effect(
                "opt.step",
                &[&loss],
                &[3],
                |_| unreachable!("a replay stages the step"),
                move || {
                    host.borrow_mut().push(format!("stage {step}"));
                    let device = device.clone();
                    Ok(Rc::new(move |x: &[DynTensor]| {
                        let v = x[0].to_f64_vec()?[0];
                        device.borrow_mut().push(format!("update {v}"));
                        Ok(())
                    }))
                },
            )
            .unwrap();
            log.borrow_mut().push(format!("end of step {step}'s calls"));
        }
        end_steps().unwrap();
        // Step 0 is recorded (it runs as it comes); steps 1 and 2 stage at the call and run
        // the recorded update at the step's end, on the step's own loss.
        assert_eq!(
            *log.borrow(),
            vec![
                "stage 0",
                "update 1",
                "end of step 0's calls",
                "stage 1",
                "end of step 1's calls",
                "update 2",
                "stage 2",
                "end of step 2's calls",
                "update 3",
            ]
        );
        finish();
    }
}
