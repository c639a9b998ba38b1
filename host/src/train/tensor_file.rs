//! Named tensors in a safetensors file (the `safetensors` crate's layout, which PyTorch's
//! `safetensors.torch.load_file` reads), written atomically: the whole file is serialised in
//! memory, then written to a temporary file in the same folder and renamed over the target.
//!
//! Every file written here carries a CRC-32 of each tensor's bytes in its metadata
//! (`checksums`, a JSON object of name to 8 hex digits); reading checks them, so a flipped
//! bit is an error naming the file and the tensor rather than a silently different network.
//! Files without checksums (version 1 checkpoints, files from elsewhere) are read unchecked.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors, View};

use crate::error::{Error, Result};

/// The metadata key of the per-tensor checksums.
const CHECKSUMS: &str = "checksums";

/// The values of one stored tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// 32-bit floats (`F32`).
    F32(Vec<f32>),
    /// 64-bit integers (`I64`).
    I64(Vec<i64>),
}

/// One named tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// Its name, e.g. `online/0.conv1.weight`.
    pub name: String,
    /// Its shape (`[]` for a scalar, as PyTorch's `num_batches_tracked`).
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub values: Values,
}

impl NamedTensor {
    /// A script tensor's values, named (reads the device).
    pub fn of(name: &str, t: &crate::tensor::DynTensor) -> Result<Self> {
        let values = if t.is_int() {
            Values::I64(crate::tensor::int_values(t.int4("save_tensors")?)?)
        } else {
            Values::F32(crate::tensor::float_values(t.promoted4())?)
        };
        Ok(NamedTensor {
            name: name.to_string(),
            shape: t.shape(),
            values,
        })
    }

    fn len(&self) -> usize {
        match &self.values {
            Values::F32(v) => v.len(),
            Values::I64(v) => v.len(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match &self.values {
            Values::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// A tensor ready for the `safetensors` writer: its bytes, made once.
struct Encoded<'a> {
    tensor: &'a NamedTensor,
    bytes: Vec<u8>,
}

impl View for &Encoded<'_> {
    fn dtype(&self) -> Dtype {
        match self.tensor.values {
            Values::F32(_) => Dtype::F32,
            Values::I64(_) => Dtype::I64,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.tensor.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes `tensors` and `metadata` (plus the tensors' checksums) to `path` atomically.
pub fn write(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut encoded = Vec::with_capacity(tensors.len());
    let mut checksums = serde_json::Map::new();
    for t in tensors {
        if t.shape.iter().product::<usize>() != t.len() {
            return Err(Error::Shape(format!(
                "{}: {} values for shape {:?}",
                t.name,
                t.len(),
                t.shape
            )));
        }
        let bytes = t.bytes();
        checksums.insert(t.name.clone(), checksum(&bytes).into());
        encoded.push(Encoded { tensor: t, bytes });
    }
    let mut info: HashMap<String, String> = metadata.clone().into_iter().collect();
    info.insert(
        CHECKSUMS.into(),
        serde_json::Value::Object(checksums).to_string(),
    );
    let bytes = safetensors::serialize(
        encoded.iter().map(|e| (e.tensor.name.as_str(), e)),
        Some(info),
    )
    .map_err(|e| Error::file(path, format!("cannot encode the tensors: {e}")))?;
    crate::files::write_atomic(path, &bytes)
}

/// The format tag of the tensors a script saves (`save_tensors`).
pub const SCRIPT_FORMAT: &str = "sslhost-tensors-1";

/// Whether the file at `path` is one sslhost wrote (a checkpoint, an export, a script's
/// tensors), which a script may replace.
pub fn is_ours(path: &Path) -> bool {
    read_metadata(path).is_ok_and(|m| m.get("format").is_some_and(|f| f.starts_with("sslhost")))
}

/// A CRC-32 of `bytes` as 8 hex digits.
fn checksum(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

/// The metadata of a safetensors file, reading only its header (a checkpoint's step before
/// its tensors are needed).
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    use std::io::Read;
    let bad = |what: String| Error::file(path, format!("not a tensor file: {what}"));
    let mut file = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
    let n = u64::from_le_bytes(len);
    let file_len = file.metadata().map_err(|e| Error::file(path, e))?.len();
    if n > file_len.saturating_sub(8) {
        return Err(bad("header runs past the end".into()));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|e| bad(e.to_string()))?;
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(rename = "__metadata__", default)]
        metadata: BTreeMap<String, String>,
    }
    let header: Header =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    Ok(header.metadata)
}

/// Reads a safetensors file of F32 and I64 tensors (sslhost's own, or one from elsewhere),
/// checking the tensors against their checksums when the file has them. Tensors come back in
/// name order.
pub fn read(path: &Path) -> Result<(Vec<NamedTensor>, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let bad = |what: String| Error::file(path, format!("not a valid tensor file: {what}"));
    let file = SafeTensors::deserialize(&bytes).map_err(|e| {
        bad(match e {
            safetensors::SafeTensorError::MetadataIncompleteBuffer
            | safetensors::SafeTensorError::InvalidHeaderLength => {
                format!("{e} (truncated?)")
            }
            e => e.to_string(),
        })
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let checksums: Option<HashMap<String, String>> = match metadata.get(CHECKSUMS) {
        Some(text) => {
            Some(serde_json::from_str(text).map_err(|e| bad(format!("its checksums: {e}")))?)
        }
        None => None,
    };
    let mut tensors = Vec::new();
    for (name, view) in file.iter() {
        let raw = view.data();
        if let Some(sums) = &checksums {
            match sums.get(name) {
                Some(sum) if *sum == checksum(raw) => {}
                Some(_) => {
                    return Err(Error::file(
                        path,
                        format!(
                            "tensor `{name}` fails its checksum: the file was damaged after \
                             it was written (restore it, or resume from another checkpoint)"
                        ),
                    ));
                }
                None => return Err(bad(format!("tensor `{name}` has no checksum"))),
            }
        }
        let values = match view.dtype() {
            Dtype::F32 => Values::F32(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            ),
            Dtype::I64 => Values::I64(
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            ),
            other => {
                return Err(bad(format!(
                    "tensor `{name}` is {other:?}; sslhost reads F32 and I64 tensors"
                )));
            }
        };
        tensors.push(NamedTensor {
            name: name.to_string(),
            shape: view.shape().to_vec(),
            values,
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<NamedTensor> {
        vec![
            NamedTensor {
                name: "a.num_batches_tracked".into(),
                shape: vec![],
                values: Values::I64(vec![42]),
            },
            NamedTensor {
                name: "w".into(),
                shape: vec![2, 2],
                values: Values::F32(vec![1.0, -2.5, 3.0, 0.0]),
            },
        ]
    }

    #[test]
    fn round_trip_truncation_and_a_flipped_bit() {
        let dir = std::env::temp_dir().join(format!("sslhost-tf-{}", std::process::id()));
        let path = dir.join("a.safetensors");
        let tensors = sample();
        let meta = BTreeMap::from([("format".to_string(), "sslhost".to_string())]);
        write(&path, &tensors, &meta).unwrap();
        let (back, meta_back) = read(&path).unwrap();
        assert_eq!(back, tensors);
        assert_eq!(meta_back["format"], "sslhost");
        assert!(meta_back.contains_key(CHECKSUMS));
        assert_eq!(read_metadata(&path).unwrap(), meta_back);
        let bytes = std::fs::read(&path).unwrap();

        // One flipped bit in the last tensor's data: an error naming the file and the tensor.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 0x10;
        std::fs::write(&path, &flipped).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("a.safetensors") && err.contains("`w` fails its checksum"),
            "{err}"
        );

        // A truncated file is an error naming the file, not a panic.
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("a.safetensors") && err.contains("truncated"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn files_without_checksums_are_read() {
        // As PyTorch's safetensors writes them: no metadata at all.
        let t = &sample()[1];
        let e = Encoded {
            tensor: t,
            bytes: t.bytes(),
        };
        let bytes = safetensors::serialize([("w", &e)], None).unwrap();
        let dir = std::env::temp_dir().join(format!("sslhost-tf-plain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plain.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let (back, meta) = read(&path).unwrap();
        assert_eq!(back, vec![t.clone()]);
        assert!(meta.is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }
}
