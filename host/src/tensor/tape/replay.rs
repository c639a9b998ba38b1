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
//!
//! With a device graph (`use_graphs`, on a device that records them): after [`WARMUP`]
//! launches that run the closures (which size the memory pool the capture must not grow),
//! a launch runs them inside a capture instead, and replays the graph it got. Later launches
//! copy their inputs from outside the step (the batch, the views, labels) into the buffers the
//! capture read, replay the graph, and take the captured calls' outputs, which the replay
//! rewrote, as the step's values. The kernel policy's `capture` is on throughout, so the
//! updates land in the buffers the graph reads. Where the backend refuses, the closures go on
//! standing in, and the report says why.
//!
//! A capture that fails once it has begun loses the state the step was to update: the device
//! marks the buffers its launches would have written (the parameters among them) as failed.
//! So the step boundary before each capture is announced ([`Replay::captures_next`]), for a
//! checkpoint there, and a failed capture (or a failed launch of the graph, which may leave
//! the state half written) is remembered ([`lost_at`]), so that nothing tries to save the
//! lost state over the last checkpoint.
//!
//! Graphs come from the device, or from a stand-in ([`GraphMaker`]) where no device records
//! them: one whose captures fail, and one whose graph re-runs the captured work on the
//! buffers the capture read and wrote (cubecl's CPU runtime writes them in place, as CUDA
//! does), which runs the bookkeeping of a graph's replays where a GPU is not at hand.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};

use burn::backend::{Backend, BackendGraph, Dispatch};
use burn::tensor::Device;

use super::report::{DESCRIBED, Entry, ReplayReport, difference};
use super::{CallPart, DynTensor, EffectPart, Origin, with_tape};
use crate::error::{Error, Result};

/// Launches that run the closures before one is captured.
pub(super) const WARMUP: usize = 2;

thread_local! {
    /// The step whose capture failed on this thread, losing the state it was to update. Kept
    /// apart from the tape, which the end of the run takes down before the state is saved.
    static LOST_AT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The step whose capture failed after it began, or whose graph failed to launch, losing the
/// device state the step was to update (`None` when none did since the tape was installed).
pub fn lost_at() -> Option<u64> {
    LOST_AT.with(Cell::get)
}

/// Forgets a lost capture (a new tape is installed).
pub(super) fn forget_lost() {
    LOST_AT.with(|l| l.set(None));
}

/// Where a replay's graphs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphMaker {
    /// The device's own (CUDA).
    Device,
    /// A stand-in whose graph is the captured work run again: each input from outside the
    /// step is copied into the buffer the capture read and read from there, and each call's
    /// new value is written into the buffer its captured output had, where the step reads it
    /// after the launch, as a graph's replay rewrites it. Inputs a call of the step made
    /// are the new values themselves (the autodiff graph the backward follows is each
    /// step's own, where a device graph's kernels just read buffers). Needs a device that
    /// writes in place (the GPU code path).
    StandIn,
    /// A stand-in whose every capture fails once begun, as a capture the device refuses
    /// midway does: the path that loses a step's state.
    Failing,
}

/// A captured graph.
enum Graph {
    /// The device's.
    Device(BackendGraph<Dispatch>),
    /// [`GraphMaker::StandIn`]'s: each captured entry's index, device part and where each of
    /// its inputs comes from.
    StandIn(Vec<(usize, Part, Vec<Source>)>),
}

/// Where an input of a stand-in graph's entry comes from.
enum Source {
    /// From outside the step: the buffer the capture read.
    Outside(Box<DynTensor>),
    /// The output of the step's entry with this index.
    Made(usize),
}

/// A launch's work recorded as a device graph, and the tensors it reads and writes.
struct Captured {
    graph: Graph,
    /// Inputs from outside the step, as the capture read them: (entry, input, tensor).
    outside: Vec<(usize, usize, DynTensor)>,
    /// The captured calls' outputs, by entry: what a replay rewrites.
    outputs: Vec<(usize, DynTensor)>,
}

/// Where the replay is with device graphs.
#[derive(Default)]
enum Graphs {
    /// Not asked for, or refused (the reason then).
    #[default]
    Off,
    /// Asked for on `device`: launches so far since the recording was made.
    Warming { device: Device, launches: usize },
    /// The recording's work as a graph on `device`.
    Ready { device: Device, captured: Captured },
}

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
    graphs: Graphs,
    /// The calls, by entry and name, that take their number as an input
    /// (`tape::call_number`): a step departed where it changed.
    numbers: HashSet<(usize, &'static str)>,
    /// Where graphs come from, when asked for.
    maker: Option<GraphMaker>,
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
                self.forget_graph();
            }
            State::Launched => self.report.replayed += 1,
            // The next step is recorded afresh. Where this step made the recording's calls but
            // for some numbers, the recordings from the next on take those as inputs.
            State::Departed => {
                if let Some(recording) = self.recording.take() {
                    let was = &recording.entries;
                    let only_numbers = entries.len() >= was.len()
                        && was
                            .iter()
                            .zip(entries)
                            .all(|(was, now)| was == now || was.differs_in_number(now));
                    if only_numbers {
                        for (i, (was, now)) in was.iter().zip(entries).enumerate() {
                            self.take_number_if_changed(i, was, now);
                        }
                    }
                }
                self.forget_graph();
            }
            State::Idle | State::Matching { .. } => {}
        }
    }

    /// Whether the call `name` at entry `at` of a step takes its number as an input.
    pub(super) fn takes_number(&self, at: usize, name: &'static str) -> bool {
        self.numbers.contains(&(at, name))
    }

    /// Where a step made `now` at entry `at` and the recording `was`, which differ only in a
    /// number: the recordings after take that number as an input.
    fn take_number_if_changed(&mut self, at: usize, was: &Entry, now: &Entry) {
        if let Entry::Call { name, .. } = now
            && was.differs_in_number(now)
            && self.numbers.insert((at, name))
        {
            self.report.numbers.push((at, name));
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

    /// Launches go through a graph made by `maker` on `device` once warmed up: prepares the
    /// device (before the launches that warm it up), or says why not.
    pub(super) fn use_graphs(&mut self, device: &Device, maker: GraphMaker) {
        self.maker = Some(maker);
        let inner = device.clone().without_autodiff();
        let prepared = match maker {
            GraphMaker::Device => {
                Dispatch::graph_prepare(inner.as_dispatch()).map_err(|e| e.to_string())
            }
            GraphMaker::StandIn if !crate::device::gpu_path(device) => {
                Err("the stand-in needs a device that writes in place (the GPU code path)".into())
            }
            GraphMaker::StandIn | GraphMaker::Failing => Ok(()),
        };
        self.graphs = match prepared {
            Ok(()) => Graphs::Warming {
                device: device.clone(),
                launches: 0,
            },
            Err(e) => {
                self.report.graph = Some(format!("refused: preparing the capture: {e}"));
                Graphs::Off
            }
        };
    }

    /// Whether the next step's launch, if the step matches the whole recording, records it
    /// as a device graph: asked between steps, where a checkpoint can be written before it.
    pub(super) fn captures_next(&self) -> bool {
        matches!(self.graphs, Graphs::Warming { launches, .. } if launches >= WARMUP)
            && self
                .recording
                .as_ref()
                .is_some_and(|r| read_inside(r).is_none())
    }

    /// A new recording: the graph of the one before no longer applies; the device is
    /// prepared again for the next capture, which warms up afresh.
    fn forget_graph(&mut self) {
        match std::mem::take(&mut self.graphs) {
            Graphs::Off => {}
            Graphs::Warming {
                device,
                launches: 0,
            } => {
                self.graphs = Graphs::Warming {
                    device,
                    launches: 0,
                }
            }
            Graphs::Warming { device, .. } | Graphs::Ready { device, .. } => {
                self.use_graphs(&device, self.maker.unwrap_or(GraphMaker::Device))
            }
        }
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
        let after = after_reads(recording, *next);
        let departure = recording
            .entries
            .get(after)
            .map(|expected| format!("{why} before the recording's entry {after} ({expected})"));
        if departure.is_none() {
            tape.current
                .extend_from_slice(&recording.entries[*next..after]);
        }
        let pending = std::mem::take(pending);
        Some(stop_matching(replay, serial, pending, departure))
    })
    .flatten();
    match work {
        Some(plan) => run(plan),
        None => Ok(()),
    }
}

/// Ends the open step's matching: with the whole recording matched (`departure` none) its
/// work launches; else the step departs, `departure` saying where and why, and the work
/// matched so far runs as it came. The plan for that work.
fn stop_matching(
    replay: &mut Replay,
    serial: u64,
    pending: Vec<(usize, Vec<DynTensor>)>,
    departure: Option<String>,
) -> Plan {
    match departure {
        None => replay.state = State::Launched,
        Some(why) => replay.depart(why),
    }
    launch_plan(replay, serial, pending)
}

/// The recording's first entry from `next` on that is not a read inside a call (a read in an
/// optimiser step). Such reads are the step's too when it matches the call they are in: the
/// caller moves them into the step's tape then, and only then.
fn after_reads(recording: &Recording, mut next: usize) -> usize {
    while let Some(Entry::Read { within: Some(_) }) = recording.entries.get(next) {
        next += 1;
    }
    next
}

/// The call inside which `recording` reads the device, if any (a capture would refuse the read).
fn read_inside(recording: &Recording) -> Option<&'static str> {
    recording.entries.iter().find_map(|e| match e {
        Entry::Read { within: Some(c) } => Some(*c),
        _ => None,
    })
}

/// Pending entries: each one's index, device part and this step's inputs.
type Work = Vec<(usize, Part, Vec<DynTensor>)>;

/// An entry as it ran: its index, its device part, its inputs (resolved), and the entry of the
/// step that made each (none: from outside the step).
struct Ran {
    entry: usize,
    part: Part,
    inputs: Vec<DynTensor>,
    made_by: Vec<Option<usize>>,
}

/// Pending work, ready to run outside the tape's borrow.
struct Plan {
    serial: u64,
    work: Work,
    /// How it runs.
    how: Launch,
}

/// How pending work runs.
enum Launch {
    /// The closures, one after the other (a departing step's, or without a graph).
    Closures,
    /// The closures, then a sync: a warm-up for a capture.
    WarmUp { device: Device },
    /// The closures inside a capture on `device`, then the graph once.
    Capture { device: Device },
    /// The captured graph (taken out of the replay while it runs).
    Replay { device: Device, captured: Captured },
}

fn launch_plan(replay: &mut Replay, serial: u64, pending: Vec<(usize, Vec<DynTensor>)>) -> Plan {
    // A departing step runs its matched work as it came; a launch of the whole recording
    // may go through a graph.
    let whole = matches!(replay.state, State::Launched);
    let how = if !whole {
        Launch::Closures
    } else {
        match std::mem::take(&mut replay.graphs) {
            Graphs::Off => Launch::Closures,
            Graphs::Warming { device, launches } if launches < WARMUP => {
                replay.graphs = Graphs::Warming {
                    device: device.clone(),
                    launches: launches + 1,
                };
                Launch::WarmUp { device }
            }
            Graphs::Warming { device, launches } => {
                match replay.recording.as_ref().and_then(read_inside) {
                    // Not this recording; one made after a departure (a live edit) may be
                    // captured.
                    Some(call) => {
                        replay.report.graph = Some(format!(
                            "not tried: the step reads the device inside `{call}`, which a \
                             capture refuses"
                        ));
                        replay.graphs = Graphs::Warming { device, launches };
                        Launch::Closures
                    }
                    None => Launch::Capture { device },
                }
            }
            Graphs::Ready { device, captured } => Launch::Replay { device, captured },
        }
    };
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
    Plan { serial, work, how }
}

/// Runs pending work, as the plan says; each call's value is kept as the value of its
/// recorded output.
fn run(plan: Plan) -> Result<()> {
    let Plan { serial, work, how } = plan;
    let out = match how {
        Launch::Closures => run_closures(serial, work).map(|_| ()),
        Launch::WarmUp { device } => run_closures(serial, work).and_then(|_| {
            device
                .sync()
                .map_err(|e| Error::Other(format!("replay: warming up a capture: {e:?}")))
        }),
        Launch::Capture { device } => capture(serial, work, &device),
        Launch::Replay { device, captured } => replay_graph(serial, work, device, captured),
    };
    with_tape(|tape| tape.replay.launching = false);
    out
}

/// Runs each entry's device part on its inputs (resolved), in order. Returns, for each entry,
/// the inputs it ran on.
fn run_closures(serial: u64, work: Work) -> Result<Vec<Ran>> {
    let mut ran = Vec::with_capacity(work.len());
    for (i, part, inputs) in work {
        // Which entry of the step made each input (none: it came from outside the step).
        let made_by: Vec<Option<usize>> = inputs
            .iter()
            .map(|x| {
                x.origin
                    .filter(|o| o.step == serial)
                    .map(|o| o.call as usize)
            })
            .collect();
        let inputs: Vec<DynTensor> = inputs.iter().map(resolved).collect();
        match &part {
            Part::Call(f) => {
                let mut value = f(&inputs)?;
                value.origin = None;
                let origin = Origin {
                    step: serial,
                    call: i as u32,
                };
                with_tape(|tape| tape.replay.fresh.insert(origin, value));
            }
            Part::Effect(f) => f(&inputs)?,
        }
        ran.push(Ran {
            entry: i,
            part,
            inputs,
            made_by,
        });
    }
    Ok(ran)
}

/// Runs the work inside a capture on `device`, then replays the graph once (captured work
/// does not run); where the backend refuses to start one, runs the closures. The stand-ins
/// run the work as their capture.
fn capture(serial: u64, work: Work, device: &Device) -> Result<()> {
    let inner = device.clone().without_autodiff();
    let inner = inner.as_dispatch();
    let maker = with_tape(|tape| tape.replay.maker)
        .flatten()
        .unwrap_or(GraphMaker::Device);
    // Launches inside the recording that bind cuDNN's buffers, for the report.
    let mut bound = 0;
    let (ran, graph) = match maker {
        GraphMaker::Failing => {
            // The closures run where the capture would have held them, then the capture
            // fails as a refused one does at its end.
            run_closures(serial, work)?;
            return Err(lose_state(
                "recording",
                "the capture failed at its end (SSLHOST_FAULT=capture)",
            ));
        }
        GraphMaker::StandIn => {
            let ran =
                run_closures(serial, work).map_err(|e| lose_state("recording", &e.to_string()))?;
            // A graph's kernels read the device's values, never a host copy.
            let entries = ran
                .iter()
                .map(|r| {
                    let sources = r
                        .inputs
                        .iter()
                        .zip(&r.made_by)
                        .map(|(x, by)| match by {
                            Some(e) => Source::Made(*e),
                            None => Source::Outside(Box::new(device_only(x))),
                        })
                        .collect();
                    (r.entry, r.part.clone(), sources)
                })
                .collect();
            (ran, Graph::StandIn(entries))
        }
        GraphMaker::Device => {
            let refused = match crate::kernels::gpu_kernels::graph_refusal(device) {
                Some(why) => Err(why),
                None => Dispatch::graph_start_capture(inner).map_err(|e| e.to_string()),
            };
            if let Err(e) = refused {
                // Leaves the prepared state, where there was one.
                let _ = Dispatch::graph_stop_capture(inner);
                with_tape(|tape| {
                    tape.replay.report.graph = Some(format!("refused: starting the capture: {e}"));
                });
                return run_closures(serial, work).map(|_| ());
            }
            let ((ran, graph), held) = crate::kernels::gpu_kernels::recorded(|| {
                let ran = run_closures(serial, work);
                (ran, Dispatch::graph_stop_capture(inner))
            });
            bound = held;
            match (ran, graph) {
                (Ok(ran), Ok(graph)) => (ran, Graph::Device(graph)),
                // The recorded launches never ran, and the buffers they were to write are
                // marked as failed: the step cannot go on.
                (Err(e), _) => return Err(lose_state("recording", &e.to_string())),
                (_, Err(e)) => return Err(lose_state("recording", &e.to_string())),
            }
        }
    };
    let outside = ran
        .iter()
        .flat_map(|r| {
            r.inputs
                .iter()
                .zip(&r.made_by)
                .enumerate()
                .filter(|(_, (_, by))| by.is_none())
                .map(move |(j, (x, _))| (r.entry, j, x.clone()))
        })
        .collect();
    let outputs = with_tape(|tape| {
        ran.iter()
            .filter_map(|r| {
                let origin = Origin {
                    step: serial,
                    call: r.entry as u32,
                };
                // A replay rewrites the values on the device only: a copy the host kept of
                // the captured step's (a small vector's) would be stale.
                tape.replay
                    .fresh
                    .get(&origin)
                    .map(|v| (r.entry, device_only(v)))
            })
            .collect()
    })
    .unwrap_or_default();
    let captured = Captured {
        graph,
        outside,
        outputs,
    };
    // A device's captured work has not run: its graph runs it once.
    if let Graph::Device(graph) = &captured.graph {
        // SAFETY: see `replay_graph`; the buffers the capture read are this step's own.
        unsafe { Dispatch::graph_replay(inner, graph) }
            .map_err(|e| lose_state("replaying", &format!("{e:?}")))?;
    }
    with_tape(|tape| {
        let by = match maker {
            GraphMaker::StandIn => " (the stand-in)",
            _ => "",
        };
        let bound = match bound {
            0 => String::new(),
            n => format!(", with {n} launches binding cuDNN's buffers"),
        };
        tape.replay.report.graph =
            Some(format!("captured at step {}{by}{bound}", tape.replay.step));
        tape.replay.graphs = Graphs::Ready {
            device: device.clone(),
            captured,
        };
    });
    Ok(())
}

/// `t` without the host's copy of its values: what a graph's kernels read.
fn device_only(t: &DynTensor) -> DynTensor {
    let mut t = t.clone();
    t.host = None;
    t
}

/// The stand-in's replay: each captured entry run again, on the buffers the capture read from
/// outside the step (which hold this step's values by now) and the new values of the entries
/// before it, each call's value written into the buffer of its captured output.
fn replay_stand_in(
    entries: &[(usize, Part, Vec<Source>)],
    outputs: &[(usize, DynTensor)],
) -> Result<()> {
    let mut made: HashMap<usize, DynTensor> = HashMap::new();
    for (i, part, sources) in entries {
        let inputs = sources
            .iter()
            .map(|s| match s {
                Source::Outside(x) => Ok((**x).clone()),
                Source::Made(e) => made.get(e).cloned().ok_or_else(|| {
                    Error::Other(format!(
                        "replay: entry {i} reads entry {e}, which has not run"
                    ))
                }),
            })
            .collect::<Result<Vec<_>>>()?;
        match part {
            Part::Call(f) => {
                let value = f(&inputs)?;
                if let Some((_, out)) = outputs.iter().find(|(j, _)| j == i) {
                    out.write_values(&value)?;
                }
                made.insert(*i, value);
            }
            Part::Effect(f) => f(&inputs)?,
        }
    }
    Ok(())
}

/// A capture that failed once begun, or a graph whose launch failed (`doing`: `recording`,
/// `replaying`), either of which may leave the step's state half written or unreadable:
/// remembered as the open step's (see [`lost_at`]) and in the report; the error that ends the
/// run.
fn lose_state(doing: &str, why: &str) -> Error {
    let step = with_tape(|tape| {
        let step = tape.replay.step;
        tape.replay.report.graph = Some(format!("failed at step {step}: {why}"));
        step
    })
    .unwrap_or_default();
    LOST_AT.with(|l| l.set(Some(step)));
    Error::Other(format!(
        "replay: {doing} step {step} as a device graph failed ({why}); the state the step \
         was to update is lost on the device"
    ))
}

/// The step's inputs from outside it copied where the capture read them, then the graph;
/// the captured outputs, which it rewrote, stand for the step's calls.
fn replay_graph(serial: u64, work: Work, device: Device, captured: Captured) -> Result<()> {
    let inputs: HashMap<usize, Vec<DynTensor>> =
        work.into_iter().map(|(i, _, inputs)| (i, inputs)).collect();
    for (i, j, read) in &captured.outside {
        let now = inputs.get(i).and_then(|x| x.get(*j)).map(resolved);
        match now {
            Some(now) => read.write_values(&now)?,
            None => {
                return Err(Error::Other(format!(
                    "replay: entry {i}'s input {j}, which the capture read, is missing"
                )));
            }
        }
    }
    let inner = device.clone().without_autodiff();
    let replayed = match &captured.graph {
        // SAFETY: every buffer the graph reads or writes outlives it: the inputs from outside
        // the step and the captured outputs are held in `captured`; parameters, optimiser
        // state, running statistics, queues and state tensors are written in place under
        // `capture` and held by their owners; the memory pool the capture used is pinned. The
        // copies above and every later read are issued on the same stream.
        Graph::Device(graph) => unsafe { Dispatch::graph_replay(inner.as_dispatch(), graph) }
            .map_err(|e| format!("{e:?}")),
        Graph::StandIn(entries) => {
            replay_stand_in(entries, &captured.outputs).map_err(|e| e.to_string())
        }
    };
    replayed.map_err(|e| lose_state("replaying", &e))?;
    with_tape(|tape| {
        for (i, out) in &captured.outputs {
            let origin = Origin {
                step: serial,
                call: *i as u32,
            };
            tape.replay.fresh.insert(origin, out.clone());
        }
        tape.replay.report.graph_replays += 1;
        tape.replay.graphs = Graphs::Ready { device, captured };
    });
    Ok(())
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
        let i = after_reads(recording, *next);
        let reads = &recording.entries[*next..i];
        if recording.entries.get(i) == Some(entry) {
            tape.current.extend_from_slice(reads);
            pending.push((i, inputs.iter().map(|x| (*x).clone()).collect()));
            *next = i + 1;
            return (Some(i), None);
        }
        // Past the recording's end, its work runs, then this call as it comes; else the step
        // departs here.
        let departure = (i < recording.entries.len()).then(|| {
            let mut seen = tape.current.clone();
            seen.extend_from_slice(reads);
            seen.push(entry.clone());
            let how = difference(&recording.entries, &seen, i, "the recording");
            format!("entry {i}: {how}")
        });
        if departure.is_none() {
            tape.current.extend_from_slice(reads);
        }
        let pending = std::mem::take(pending);
        (
            None,
            Some(stop_matching(replay, serial, pending, departure)),
        )
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
