//! What the tape writes down of a step (its entries), and the report of how the steps'
//! tapes compare.

use std::fmt;

/// The most departing steps a replay report describes.
pub(super) const DESCRIBED: usize = 5;

/// An input of a call, as steps are compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// The output of the step's call with this index.
    Call(u32),
    /// A tensor made outside the step's taped calls (a batch, its views, a queue, a
    /// parameter), known by its shape and element type.
    Outside { shape: Vec<usize>, float: bool },
}

/// One entry of a step's tape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    /// A call of the Rhai surface: its name, scalar arguments and inputs, and whether the
    /// last scalar is a number a replay can take as an input instead (`tape::call_number`).
    Call {
        name: &'static str,
        key: Vec<u64>,
        inputs: Vec<Source>,
        number: bool,
    },
    /// Values read back from the device (`item`, `to_array`), inside the named call when a
    /// call reads (an optimiser step checking its loss on the CPU).
    Read { within: Option<&'static str> },
}

impl Entry {
    /// Whether `self` is the call `other` but for its number (`other` ending in one): a
    /// replay can take that number as an input.
    pub(super) fn differs_in_number(&self, other: &Entry) -> bool {
        match (self, other) {
            (
                Entry::Call { key, .. },
                Entry::Call {
                    key: other_key,
                    number: true,
                    ..
                },
            ) => {
                self != other
                    && self.same_but_scalars(other)
                    && key.split_last().map(|(_, k)| k) == other_key.split_last().map(|(_, k)| k)
            }
            _ => false,
        }
    }

    /// Whether both are the same call but for a number: one that differs, or one taken as an
    /// input by one of them and not the other.
    pub(super) fn same_but_number(&self, other: &Entry) -> bool {
        self.differs_in_number(other)
            || other.differs_in_number(self)
            || self.number_moved(other)
            || other.number_moved(self)
    }

    /// Whether `other` is the call `self` with its number taken as an input (the last, one
    /// element) rather than kept among its scalars.
    pub(super) fn number_moved(&self, other: &Entry) -> bool {
        match (self, other) {
            (
                Entry::Call {
                    name,
                    key,
                    inputs,
                    number: true,
                },
                Entry::Call {
                    name: other_name,
                    key: other_key,
                    inputs: other_inputs,
                    number: false,
                },
            ) => {
                name == other_name
                    && key.split_last().map(|(_, k)| k) == Some(other_key.as_slice())
                    && other_inputs.split_last().is_some_and(|(last, rest)| {
                        rest == inputs.as_slice()
                            && *last
                                == Source::Outside {
                                    shape: vec![1],
                                    float: true,
                                }
                    })
            }
            _ => false,
        }
    }

    /// Whether both are calls of the same name on the same inputs (their scalars may differ).
    pub(super) fn same_but_scalars(&self, other: &Entry) -> bool {
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
    /// The usual tape's calls whose number differs from step to step (the steps that make
    /// the usual tape but for such numbers count as making it): each one's entry and name.
    pub numbers: Vec<(usize, &'static str)>,
    /// The other tapes, first seen first (the first few kinds).
    pub variants: Vec<Variant>,
    /// Steps with a tape of a kind not described (beyond the first few kinds).
    pub undescribed: u64,
    /// What the replay did, when the tape replayed steps (`Mode::Replay`).
    pub replay: Option<ReplayReport>,
}

/// How many steps were recorded, replayed, or run as they came, and why the first few of the
/// last were.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayReport {
    /// Steps recorded (run as they came, their calls kept for the steps after).
    pub recorded: u64,
    /// Steps answered from a recording.
    pub replayed: u64,
    /// Steps that departed from the recording and ran as they came from there on: the step
    /// and why (the first few).
    pub departed: Vec<(u64, String)>,
    /// All the steps that departed.
    pub departures: u64,
    /// The calls whose number the recordings take as an input, since a step departed where
    /// it changed: each one's entry and name.
    pub numbers: Vec<(usize, &'static str)>,
    /// What became of the device graph, when one was asked for.
    pub graph: Option<String>,
    /// Launches that replayed the graph.
    pub graph_replays: u64,
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
        if !self.numbers.is_empty() {
            write!(
                f,
                ", but for numbers that differ between steps (a replay takes them as \
                 inputs): {}",
                named_calls(&self.numbers)
            )?;
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
        if let Some(r) = &self.replay {
            let steps = |n: u64| format!("{n} step{}", if n == 1 { "" } else { "s" });
            write!(
                f,
                ". Replay: {} recorded, {} replayed, {} departed",
                steps(r.recorded),
                steps(r.replayed),
                steps(r.departures)
            )?;
            for (step, why) in &r.departed {
                write!(f, "; step {step}: {why}")?;
            }
            if !r.numbers.is_empty() {
                write!(
                    f,
                    "; numbers taken as inputs, as they changed: {}",
                    named_calls(&r.numbers)
                )?;
            }
            if let Some(graph) = &r.graph {
                write!(f, ". Graph: {graph}; replayed {} times", r.graph_replays)?;
            }
        }
        Ok(())
    }
}

/// `` `name` at entry, .. `` for calls known by their entry and name.
fn named_calls(calls: &[(usize, &'static str)]) -> String {
    let named: Vec<String> = calls
        .iter()
        .map(|(at, name)| format!("`{name}` at {at}"))
        .collect();
    named.join(", ")
}

/// A kind of tape, and the steps that made it.
struct Kind {
    entries: Vec<Entry>,
    first_step: u64,
    steps: u64,
    /// The entries where steps of this kind made the call with another number.
    numbers: Vec<usize>,
}

/// The kinds of tape the steps made, first seen first.
#[derive(Default)]
pub(super) struct Kinds {
    kinds: Vec<Kind>,
    /// Steps whose tape was of no kind kept (after [`KINDS`] kinds).
    undescribed: u64,
}

impl Kinds {
    /// Counts step `step`'s tape.
    pub(super) fn add(&mut self, step: u64, entries: Vec<Entry>) {
        let same_but_numbers = |k: &&mut Kind| {
            k.entries.len() == entries.len()
                && k.entries
                    .iter()
                    .zip(&entries)
                    .all(|(a, b)| a == b || a.same_but_number(b))
        };
        if let Some(kind) = self.kinds.iter_mut().find(|k| k.entries == entries) {
            kind.steps += 1;
        } else if let Some(kind) = self.kinds.iter_mut().find(same_but_numbers) {
            // A schedule's number: the same kind of step.
            kind.steps += 1;
            for (i, (a, b)) in kind.entries.iter().zip(&entries).enumerate() {
                if a != b && !kind.numbers.contains(&i) {
                    kind.numbers.push(i);
                }
            }
        } else if self.kinds.len() < KINDS {
            self.kinds.push(Kind {
                entries,
                first_step: step,
                steps: 1,
                numbers: Vec::new(),
            });
        } else {
            self.undescribed += 1;
        }
    }

    /// How the steps' tapes compare.
    pub(super) fn report(&self) -> Report {
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
                let at = first_difference(a, b);
                Variant {
                    first_step: k.first_step,
                    steps: k.steps,
                    entries: b.len(),
                    at,
                    how: difference(a, b, at, "the usual tape"),
                    extends: at == a.len() && b.len() > a.len(),
                }
            })
            .collect();
        let mut numbers: Vec<(usize, &'static str)> = usual
            .numbers
            .iter()
            .filter_map(|&i| match &usual.entries[i] {
                Entry::Call { name, .. } => Some((i, *name)),
                Entry::Read { .. } => None,
            })
            .collect();
        numbers.sort();
        Report {
            steps,
            entries: usual.entries.len(),
            usual: usual.steps,
            reads,
            numbers,
            variants,
            undescribed: self.undescribed,
            replay: None,
        }
    }
}

/// The first entry where `b` differs from `a` other than in a number (the shorter's length
/// when one is the other's beginning).
fn first_difference(a: &[Entry], b: &[Entry]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y && !x.same_but_number(y))
        .unwrap_or(a.len().min(b.len()))
}

/// How `b` differs from `a` (called `what`) at entry `at`.
pub(super) fn difference(a: &[Entry], b: &[Entry], at: usize, what: &str) -> String {
    match (a.get(at), b.get(at)) {
        (Some(x), Some(y)) if x.number_moved(y) || y.number_moved(x) => {
            format!("{y} where {what} has {x}, the same call with its number as an input or not")
        }
        (Some(x), Some(y)) if x.differs_in_number(y) => {
            format!("{y} with another number than {what}'s (a replay takes it as an input)")
        }
        (Some(x), Some(y)) if x.same_but_scalars(y) => {
            format!("{y} with other scalar arguments than {what}'s")
        }
        (Some(x), Some(y)) => format!("{y} where {what} has {x}"),
        (Some(x), None) => format!("it ends where {what} has {x}"),
        (None, Some(y)) => y.to_string(),
        (None, None) => "nothing".into(),
    }
}
