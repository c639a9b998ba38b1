//! The replay: a step recorded as it runs, and the steps after it answered from the recording.
//!
//! A recording keeps a step's tape up to its first read of device values outside a call (the
//! part a device graph can hold), each entry's device part and each call's output. In a step
//! that replays it, a call that matches the recording's next entry returns the recorded
//! output and leaves its work pending; an effect runs its host part at once (the learning
//! rate written to the device) and leaves its device part pending. The pending work runs at
//! once, in order, when the step has matched the whole recording and then reads a value,
//! makes a call past the recording's end, changes state, or ends (`launch`): on a GPU that is
//! where a captured graph will be launched; here the device parts run, and a recorded output
//! handed to the script stands for the value its call computed now (`resolved`).
//!
//! A step departs from the recording at a call that differs from it, or when it needs a value
//! before it has matched the whole recording (the pending work cannot run in part on a
//! GPU): the pending work runs, and the rest of the step runs as it comes. The next step is
//! recorded afresh.

use std::collections::HashMap;

use super::report::{DESCRIBED, Entry, ReplayReport, difference};
use super::{CallPart, DynTensor, EffectPart, Origin, with_tape};
use crate::error::Result;

/// A recorded entry's device part.
#[derive(Clone)]
enum Part {
    Call(CallPart),
    Effect(EffectPart),
}

/// A step as recorded.
#[derive(Default)]
struct Recording {
    /// Its tape up to its first read outside a call.
    entries: Vec<Entry>,
    /// Each entry's device part (none for a read).
    parts: Vec<Option<Part>>,
    /// Each call's output (none for an effect or a read).
    outputs: Vec<Option<DynTensor>>,
}

/// Where the open step is.
#[derive(Default)]
enum State {
    /// No step open.
    #[default]
    Idle,
    /// The step runs as it comes and is recorded.
    Recording(Recording),
    /// The step matches the recording up to entry `next`; `pending` holds the matched
    /// entries' indices and this step's inputs for them.
    Matching {
        next: usize,
        pending: Vec<(usize, Vec<DynTensor>)>,
    },
    /// The matched work ran at the step's end of the recording; the rest runs as it comes.
    Launched,
    /// The step departed from the recording; it runs as it comes.
    Departed,
}

/// The replay's state.
#[derive(Default)]
pub(super) struct Replay {
    recording: Option<Recording>,
    state: State,
    /// Whether pending work is running (calls inside it are not taped).
    launching: bool,
    /// The values the pending work computed, by the origin of the recorded output that
    /// stands for each (this step's and the step before's).
    fresh: HashMap<Origin, DynTensor>,
    /// The open step's number.
    step: u64,
    report: ReplayReport,
}

impl Replay {
    /// Step `step` begins: it replays the recording if there is one, else it is recorded.
    pub(super) fn begin(&mut self, step: u64, serial: u64) {
        self.step = step;
        // Outputs of the step before stay resolvable (read after the loop, say); older go.
        self.fresh.retain(|o, _| o.step + 1 >= serial);
        self.state = match self.recording {
            Some(_) => State::Matching {
                next: 0,
                pending: Vec::new(),
            },
            None => State::Recording(Recording::default()),
        };
    }

    /// The open step ended with tape `entries` (its pending work has run).
    pub(super) fn end(&mut self, entries: &[Entry]) {
        match std::mem::take(&mut self.state) {
            State::Recording(mut r) => {
                let length = entries
                    .iter()
                    .position(|e| matches!(e, Entry::Read { within: None }))
                    .unwrap_or(entries.len());
                r.entries = entries[..length].to_vec();
                r.parts.resize(length, None);
                r.outputs.resize(length, None);
                self.report.recorded += 1;
                self.recording = (length > 0).then_some(r);
            }
            State::Launched => self.report.replayed += 1,
            // The next step is recorded afresh.
            State::Departed => self.recording = None,
            State::Idle | State::Matching { .. } => {}
        }
    }

    /// Whether pending work is running.
    pub(super) fn launching(&self) -> bool {
        self.launching
    }

    /// What the replay did.
    pub(super) fn report(&self) -> ReplayReport {
        self.report.clone()
    }

    /// Counts a departure of the open step; the recording is forgotten at the step's end.
    fn depart(&mut self, why: String) {
        self.report.departures += 1;
        if self.report.departed.len() < DESCRIBED {
            self.report.departed.push((self.step, why));
        }
        self.state = State::Departed;
    }
}

/// The pending work of the open step, if it must run now: `why` says what needs it. It runs
/// as the step's end of the recording if the step has matched all of it, else the step
/// departs.
pub(super) fn settle(why: &str) -> Result<()> {
    let work = with_tape(|tape| {
        let serial = tape.serial;
        let replay = &mut tape.replay;
        let State::Matching { next, pending } = &mut replay.state else {
            return None;
        };
        let recording = replay.recording.as_ref().expect("matching a recording");
        let next = skip_reads(recording, *next, &mut tape.current);
        let pending = std::mem::take(pending);
        if next == recording.entries.len() {
            replay.state = State::Launched;
        } else {
            let expected = &recording.entries[next];
            replay.depart(format!(
                "{why} before the recording's entry {next} ({expected})"
            ));
        }
        Some(launch_plan(replay, serial, pending))
    })
    .flatten();
    match work {
        Some(plan) => run(plan),
        None => Ok(()),
    }
}

/// Entries the recording made inside a call (reads in an optimiser step) are this step's
/// too when it matches the call: moved into the step's tape. Returns the next entry to match.
fn skip_reads(recording: &Recording, mut next: usize, current: &mut Vec<Entry>) -> usize {
    while let Some(e @ Entry::Read { within: Some(_) }) = recording.entries.get(next) {
        current.push(e.clone());
        next += 1;
    }
    next
}

/// Pending work, ready to run outside the tape's borrow.
struct Plan {
    serial: u64,
    work: Vec<(usize, Part, Vec<DynTensor>)>,
}

fn launch_plan(replay: &mut Replay, serial: u64, pending: Vec<(usize, Vec<DynTensor>)>) -> Plan {
    let recording = replay.recording.as_ref();
    let parts = |i: usize| {
        recording
            .and_then(|r| r.parts[i].clone())
            .expect("a matched entry has a device part")
    };
    let work = pending
        .into_iter()
        .map(|(i, inputs)| (i, parts(i), inputs))
        .collect();
    replay.launching = true;
    Plan { serial, work }
}

/// Runs pending work in order; each call's value is kept as the value of its recorded output.
fn run(plan: Plan) -> Result<()> {
    let mut out = Ok(());
    for (i, part, inputs) in plan.work {
        let inputs: Vec<DynTensor> = inputs.iter().map(resolved).collect();
        let done = match part {
            Part::Call(f) => f(&inputs).map(|mut value| {
                value.origin = None;
                with_tape(|tape| {
                    let origin = Origin {
                        step: plan.serial,
                        call: i as u32,
                    };
                    tape.replay.fresh.insert(origin, value);
                });
            }),
            Part::Effect(f) => f(&inputs),
        };
        if let Err(e) = done {
            out = Err(e);
            break;
        }
    }
    with_tape(|tape| tape.replay.launching = false);
    out
}

/// The tensor standing for `t`: the value computed for it when it is a recorded output whose
/// work has run, else `t`.
pub(super) fn resolved(t: &DynTensor) -> DynTensor {
    t.origin
        .and_then(|o| with_tape(|tape| tape.replay.fresh.get(&o).cloned()).flatten())
        .unwrap_or_else(|| t.clone())
}

/// Answers a call from the recording when the open step replays it and the call matches its
/// next entry: the recorded output, the call's work left pending. `None`: the call runs as it
/// comes (recorded if the step is); a call that departs runs the pending work first.
pub(super) fn answer(entry: &Entry, inputs: &[&DynTensor]) -> Result<Option<DynTensor>> {
    match matched(entry, inputs)? {
        Some(i) => Ok(with_tape(|tape| {
            let r = tape.replay.recording.as_ref().expect("matched a recording");
            r.outputs[i].clone()
        })
        .flatten()),
        None => Ok(None),
    }
}

/// As [`answer`], for an effect: whether its device part was left pending.
pub(super) fn answer_effect(entry: &Entry, inputs: &[&DynTensor]) -> Result<bool> {
    Ok(matched(entry, inputs)?.is_some())
}

/// The recording's index of `entry` when the open step replays and it matches; the step
/// departs (its pending work runs) when it does not.
fn matched(entry: &Entry, inputs: &[&DynTensor]) -> Result<Option<usize>> {
    let work = with_tape(|tape| {
        let serial = tape.serial;
        let replay = &mut tape.replay;
        let State::Matching { next, pending } = &mut replay.state else {
            return (None, None);
        };
        let recording = replay.recording.as_ref().expect("matching a recording");
        *next = skip_reads(recording, *next, &mut tape.current);
        let i = *next;
        if recording.entries.get(i) == Some(entry) {
            pending.push((i, inputs.iter().map(|x| (*x).clone()).collect()));
            *next += 1;
            return (Some(i), None);
        }
        let pending = std::mem::take(pending);
        if i == recording.entries.len() {
            // Past the recording's end: its work runs, then this call as it comes.
            replay.state = State::Launched;
        } else {
            let mut seen = tape.current.clone();
            seen.push(entry.clone());
            let how = difference(&recording.entries, &seen, i, "the recording");
            replay.depart(format!("entry {i}: {how}"));
        }
        (None, Some(launch_plan(replay, serial, pending)))
    });
    match work {
        Some((Some(i), _)) => Ok(Some(i)),
        Some((None, Some(plan))) => run(plan).map(|()| None),
        _ => Ok(None),
    }
}

/// Keeps a call's device part and output in the recording when the open step is recorded.
pub(super) fn record_call(part: &CallPart, output: &DynTensor) {
    record(Part::Call(part.clone()), Some(output.clone()));
}

/// Keeps an effect's device part in the recording when the open step is recorded.
pub(super) fn record_effect(part: &EffectPart) {
    record(Part::Effect(part.clone()), None);
}

fn record(part: Part, output: Option<DynTensor>) {
    with_tape(|tape| {
        let at = tape.current.len();
        if let State::Recording(r) = &mut tape.replay.state {
            r.parts.resize(at, None);
            r.outputs.resize(at, None);
            r.parts.push(Some(part));
            r.outputs.push(output);
        }
    });
}
