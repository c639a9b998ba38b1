//! Checkpoints: every tracked network and optimiser, the step to continue from and the random
//! generator's position, in one tensor file written atomically.
//!
//! Names: `<key>/<param>` for networks; `<key>/<net>.<param>/first|second|steps` and
//! `<key>/steps` for optimisers; `<key>/keys` for queues. Tensors are stored at their own
//! rank (`[C]` for a batch norm's scale), each with a checksum (`tensor_file`).
//!
//! Metadata (all strings): `format` (`sslhost-checkpoint-2`), `format_version`,
//! `sslhost_version`, `next_step`, `rng`, `seed`, `config` (the resolved config as JSON) and
//! `networks` (each saved network's architecture, JSON by key). Version 1 files (every
//! tensor padded to rank 4, no checksums, no architectures) still load.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;

use burn::tensor::{Device, Tensor, TensorData};

use super::tensor_file::{self, NamedTensor, Values};
use crate::error::{Error, Result};
use crate::models::{Architecture, Queue, SharedNet};
use crate::optim::{Optimizer, ParamState};
use crate::tensor::{DynTensor, RngState, StateTensor};

/// The format tag written into every checkpoint.
pub const FORMAT: &str = "sslhost-checkpoint-2";

/// The tag of version 1 files, which still load.
const FORMAT_V1: &str = "sslhost-checkpoint-1";

/// Where a checkpoint continues, and what made it: its metadata besides the tensors.
#[derive(Clone, Debug)]
pub struct Position {
    /// The first step the resumed run executes.
    pub next_step: u64,
    /// The random generator's position at that step.
    pub rng: RngState,
    /// The run's seed (`--seed`), which data orders derive from.
    pub seed: u64,
    /// The run's resolved config, when the recipe has one.
    pub config: Option<serde_json::Value>,
}

/// What a checkpoint can hold: a network, an optimiser's state, a queue. Each writes its
/// tensors under its key and reads them back; a new kind of run state implements this.
pub trait Checkpointed {
    /// The tensors to save, named `<key>/..`.
    fn tensors(&self, key: &str) -> Result<Vec<NamedTensor>>;
    /// Takes its state back from `loaded`'s tensors under `key`.
    fn restore(&self, key: &str, loaded: &Loaded, device: &Device) -> Result<()>;
    /// The name (under `key`) of a value that is NaN or infinite, if any: such state is not
    /// worth a checkpoint after a failure. Reads the device.
    fn non_finite(&self, _key: &str) -> Option<String> {
        None
    }
    /// What it is, when it is a network (saved so the file can be used without the recipe).
    fn architecture(&self) -> Option<Architecture> {
        None
    }
}

/// One tracked thing of a checkpoint (shared with the script that holds it).
pub type Item = Rc<dyn Checkpointed>;

impl Checkpointed for SharedNet {
    fn tensors(&self, key: &str) -> Result<Vec<NamedTensor>> {
        self.parameters()
            .into_iter()
            .map(|(name, t)| float(format!("{key}/{name}"), &t.promoted4(), t.shape()))
            .collect()
    }

    fn architecture(&self) -> Option<Architecture> {
        Some(SharedNet::architecture(self))
    }

    fn restore(&self, key: &str, loaded: &Loaded, device: &Device) -> Result<()> {
        let mut values = HashMap::new();
        for (name, t) in self.parameters() {
            let stored = loaded.tensor4(&format!("{key}/{name}"), device)?;
            values.insert(name, DynTensor::from_float4(stored, t.rank()));
        }
        self.load(&values)
    }

    fn non_finite(&self, key: &str) -> Option<String> {
        self.parameters()
            .into_iter()
            .find(|(_, t)| !t.all_finite().unwrap_or(false))
            .map(|(name, _)| format!("`{key}/{name}`"))
    }
}

impl Checkpointed for RefCell<Queue> {
    fn tensors(&self, key: &str) -> Result<Vec<NamedTensor>> {
        let keys = self.borrow().keys().clone();
        let [n, d] = keys.dims();
        Ok(vec![float(
            format!("{key}/keys"),
            &keys.reshape([1, 1, n, d]),
            vec![n, d],
        )?])
    }

    fn restore(&self, key: &str, loaded: &Loaded, device: &Device) -> Result<()> {
        let keys = loaded.tensor4(&format!("{key}/keys"), device)?;
        let [_, _, n, d] = keys.dims();
        self.borrow_mut().set(keys.reshape([n, d]))
    }
}

impl Checkpointed for RefCell<StateTensor> {
    fn tensors(&self, key: &str) -> Result<Vec<NamedTensor>> {
        let state = self.borrow();
        let value = state.value();
        Ok(vec![float(
            format!("{key}/value"),
            &value.promoted4(),
            state.shape(),
        )?])
    }

    fn restore(&self, key: &str, loaded: &Loaded, device: &Device) -> Result<()> {
        let name = format!("{key}/value");
        let want = self.borrow().shape();
        if let Some(stored) = loaded.tensor(&name)
            && stored.shape != want
        {
            return Err(Error::Shape(format!(
                "{}: state tensor `{key}` is {:?} in the checkpoint but {want:?} in the recipe",
                loaded.path(),
                stored.shape
            )));
        }
        let value = loaded.tensor4(&name, device)?;
        self.borrow_mut()
            .set(&DynTensor::from_float4(value, want.len()))
    }

    fn non_finite(&self, key: &str) -> Option<String> {
        let finite = self.borrow().value().all_finite().unwrap_or(false);
        (!finite).then(|| format!("`{key}`"))
    }
}

impl Checkpointed for RefCell<Optimizer> {
    fn tensors(&self, key: &str) -> Result<Vec<NamedTensor>> {
        // A skipped update (a non-finite loss on a GPU) is reported before its state is
        // saved; the state itself is consistent either way.
        self.borrow_mut().check_skips()?;
        let opt = self.borrow();
        let (state, steps) = opt.state();
        let mut tensors = vec![int(format!("{key}/steps"), steps)];
        // In name order, so a checkpoint's tensors come out in the same order.
        let mut state: Vec<_> = state.into_iter().collect();
        state.sort_by(|a, b| a.0.cmp(&b.0));
        for (param, st) in &state {
            let base = format!("{key}/{param}");
            tensors.push(int(format!("{base}/steps"), st.steps));
            if let Some(t) = &st.first {
                tensors.push(float(format!("{base}/first"), t, st.shape.clone())?);
            }
            if let Some(t) = &st.second {
                tensors.push(float(format!("{base}/second"), t, st.shape.clone())?);
            }
        }
        Ok(tensors)
    }

    fn restore(&self, key: &str, loaded: &Loaded, device: &Device) -> Result<()> {
        let prefix = format!("{key}/");
        let mut state: HashMap<String, ParamState> = HashMap::new();
        for name in loaded.tensors.keys() {
            let Some(param) = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix("/steps"))
            else {
                continue;
            };
            let base = format!("{prefix}{param}");
            let optional = |part: &str| {
                let name = format!("{base}/{part}");
                loaded
                    .tensors
                    .contains_key(&name)
                    .then(|| loaded.tensor4(&name, device))
                    .transpose()
            };
            // The parameter's shape as stored (its own in version 2, padded in version 1).
            let shape = ["first", "second"]
                .iter()
                .find_map(|part| loaded.tensors.get(&format!("{base}/{part}")))
                .map(|t| t.shape.clone())
                .unwrap_or_default();
            let st = ParamState {
                first: optional("first")?,
                second: optional("second")?,
                steps: loaded.count(name)?,
                shape,
            };
            state.insert(param.to_string(), st);
        }
        let steps = loaded.count(&format!("{key}/steps"))?;
        self.borrow_mut().set_state(state, steps);
        Ok(())
    }
}

/// What a checkpoint file holds besides the tracked items' tensors.
pub struct Loaded {
    /// The first step the resumed run executes.
    pub next_step: u64,
    /// The random generator's position at that step.
    pub rng: RngState,
    /// The run's seed (`--seed`), which data orders derive from; older files lack it.
    pub seed: Option<u64>,
    /// The resolved config of the run that wrote it (version 2).
    pub config: Option<serde_json::Value>,
    /// The architecture of each saved network, by key (version 2).
    pub networks: BTreeMap<String, Architecture>,
    /// The format version: 1 or 2.
    pub version: u32,
    tensors: HashMap<String, NamedTensor>,
    path: String,
}

/// `t` (held padded to rank 4) stored with its own `shape`.
fn float(name: String, t: &Tensor<4>, shape: Vec<usize>) -> Result<NamedTensor> {
    let values = crate::tensor::float_values(t.clone())?;
    Ok(NamedTensor {
        name,
        shape,
        values: Values::F32(values),
    })
}

fn int(name: String, v: u64) -> NamedTensor {
    NamedTensor {
        name,
        shape: vec![1],
        values: Values::I64(vec![v as i64]),
    }
}

/// Writes a checkpoint of `items` to `path` (atomically).
pub fn save(path: &Path, at: &Position, items: &[(String, Item)]) -> Result<()> {
    let mut tensors = Vec::new();
    let mut networks = serde_json::Map::new();
    for (key, item) in items {
        tensors.extend(item.tensors(key)?);
        if let Some(a) = item.architecture() {
            networks.insert(key.clone(), serde_json::to_value(a).expect("plain data"));
        }
    }
    let mut metadata = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("format_version".to_string(), "2".to_string()),
        ("sslhost_version".to_string(), VERSION.to_string()),
        ("next_step".to_string(), at.next_step.to_string()),
        ("rng".to_string(), at.rng.encode()),
        ("seed".to_string(), at.seed.to_string()),
        (
            "networks".to_string(),
            serde_json::Value::Object(networks).to_string(),
        ),
    ]);
    if let Some(config) = &at.config {
        metadata.insert("config".into(), config.to_string());
    }
    tensor_file::write(path, &tensors, &metadata)
}

/// The version of sslhost that writes checkpoints and exports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The step a checkpoint continues from, reading only its header.
pub fn next_step(path: &Path) -> Result<u64> {
    tensor_file::read_metadata(path)?
        .get("next_step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::file(path, "not an sslhost checkpoint: no next_step"))
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<Loaded> {
    let (tensors, meta) = tensor_file::read(path)?;
    let bad = |what: &str| Error::file(path, format!("not an sslhost checkpoint: {what}"));
    let version = match meta.get("format").map(String::as_str) {
        Some(FORMAT) => 2,
        Some(FORMAT_V1) => 1,
        Some(other) => {
            return Err(bad(&format!(
                "format `{other}` (this sslhost reads {FORMAT_V1} and {FORMAT}; a newer \
                 sslhost wrote it?)"
            )));
        }
        None => return Err(bad("no format tag")),
    };
    let config = match meta.get("config") {
        Some(text) => Some(serde_json::from_str(text).map_err(|e| bad(&format!("config: {e}")))?),
        None => None,
    };
    let networks = match meta.get("networks") {
        Some(text) => serde_json::from_str(text).map_err(|e| bad(&format!("networks: {e}")))?,
        None => BTreeMap::new(),
    };
    let next_step = meta
        .get("next_step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no next_step"))?;
    let rng = meta
        .get("rng")
        .and_then(|s| RngState::decode(s))
        .ok_or_else(|| bad("no random generator state"))?;
    Ok(Loaded {
        next_step,
        rng,
        seed: meta.get("seed").and_then(|s| s.parse().ok()),
        config,
        networks,
        version,
        tensors: tensors.into_iter().map(|t| (t.name.clone(), t)).collect(),
        path: path.display().to_string(),
    })
}

impl Loaded {
    /// The stored tensor `name`, if the file has it.
    pub fn tensor(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.get(name)
    }

    /// The names of the stored tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The file it was read from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Tensor `name` padded to rank 4 (as the host holds tensors), from its stored rank
    /// (version 2) or the padded one (version 1).
    fn tensor4(&self, name: &str, device: &Device) -> Result<Tensor<4>> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::file(&self.path, format!("the checkpoint has no `{name}`")))?;
        match &t.values {
            Values::F32(v) if (1..=4).contains(&t.shape.len()) => Ok(Tensor::from_data(
                TensorData::new(v.clone(), crate::tensor::padded(&t.shape)),
                device,
            )),
            _ => Err(Error::file(
                &self.path,
                format!(
                    "`{name}` is not a stored float tensor of rank 1 to 4 (shape {:?})",
                    t.shape
                ),
            )),
        }
    }

    fn count(&self, name: &str) -> Result<u64> {
        match self.tensors.get(name).map(|t| &t.values) {
            Some(Values::I64(v)) if v.len() == 1 => Ok(v[0] as u64),
            _ => Err(Error::file(
                &self.path,
                format!("the checkpoint has no count `{name}`"),
            )),
        }
    }

    /// Loads every item from the checkpoint; an item the checkpoint lacks is an error.
    pub fn restore(&self, items: &[(String, Item)], device: &Device) -> Result<()> {
        for (key, item) in items {
            item.restore(key, self, device)?;
        }
        Ok(())
    }
}
