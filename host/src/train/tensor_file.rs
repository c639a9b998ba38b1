//! Named tensors in the safetensors layout (PyTorch users can open our checkpoints), written
//! atomically: a temporary file in the same folder, flushed, then renamed over the target.
//!
//! Layout: an 8-byte little-endian header length, a JSON header mapping each name to
//! `{dtype, shape, data_offsets}` (plus `__metadata__`, string to string), then the data.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::error::{Error, Result};

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
    /// Its name, e.g. `online.0.conv1.weight`.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub values: Values,
}

impl NamedTensor {
    fn len(&self) -> usize {
        match &self.values {
            Values::F32(v) => v.len(),
            Values::I64(v) => v.len(),
        }
    }
}

/// Writes `tensors` and `metadata` to `path` atomically.
pub fn write(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!(metadata));
    let mut offset = 0usize;
    let mut data = Vec::new();
    for t in tensors {
        if t.shape.iter().product::<usize>() != t.len() {
            return Err(Error::Shape(format!(
                "{}: {} values for shape {:?}",
                t.name,
                t.len(),
                t.shape
            )));
        }
        let (dtype, bytes): (&str, Vec<u8>) = match &t.values {
            Values::F32(v) => ("F32", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Values::I64(v) => ("I64", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        let end = offset + bytes.len();
        header.insert(
            t.name.clone(),
            json!({ "dtype": dtype, "shape": t.shape, "data_offsets": [offset, end] }),
        );
        data.extend(bytes);
        offset = end;
    }
    let mut head = serde_json::to_vec(&Value::Object(header)).expect("json of plain values");
    // Pad the header with spaces so the data starts 8-byte aligned, as safetensors does.
    while !(8 + head.len()).is_multiple_of(8) {
        head.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + head.len() + data.len());
    bytes.extend((head.len() as u64).to_le_bytes());
    bytes.extend(head);
    bytes.extend(data);
    crate::files::write_atomic(path, &bytes)
}

/// The metadata of a file written by [`write()`], reading only its header.
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
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    Ok(match header.get("__metadata__") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect(),
        _ => BTreeMap::new(),
    })
}

/// Reads a file written by [`write()`] (or any safetensors file of F32/I64 tensors).
pub fn read(path: &Path) -> Result<(Vec<NamedTensor>, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let bad = |what: &str| Error::file(path, format!("not a valid tensor file: {what}"));
    if bytes.len() < 8 {
        return Err(bad("shorter than its 8-byte header length"));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let data_start = 8usize
        .checked_add(n)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad("header runs past the end"))?;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..data_start]).map_err(|e| bad(&format!("header: {e}")))?;
    let data = &bytes[data_start..];
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::new();
    for (name, entry) in header {
        if name == "__metadata__" {
            if let Value::Object(m) = entry {
                for (k, v) in m {
                    metadata.insert(k, v.as_str().unwrap_or_default().to_string());
                }
            }
            continue;
        }
        let dtype = entry["dtype"]
            .as_str()
            .ok_or_else(|| bad(&format!("{name}: no dtype")))?;
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .ok_or_else(|| bad(&format!("{name}: no shape")))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad(&format!("{name}: bad shape")))?;
        let offsets = entry["data_offsets"]
            .as_array()
            .ok_or_else(|| bad(&format!("{name}: no offsets")))?;
        let (b, e) = match offsets.as_slice() {
            [b, e] => (
                b.as_u64().unwrap_or(u64::MAX) as usize,
                e.as_u64().unwrap_or(0) as usize,
            ),
            _ => return Err(bad(&format!("{name}: bad offsets"))),
        };
        if b > e || e > data.len() {
            return Err(bad(&format!(
                "{name}: data {b}..{e} outside the file (truncated?)"
            )));
        }
        let raw = &data[b..e];
        let count: usize = shape.iter().product();
        let values = match dtype {
            "F32" if raw.len() == count * 4 => Values::F32(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                    .collect(),
            ),
            "I64" if raw.len() == count * 8 => Values::I64(
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                    .collect(),
            ),
            other => {
                return Err(bad(&format!(
                    "{name}: dtype {other} with {} bytes for shape {shape:?}",
                    raw.len()
                )));
            }
        };
        tensors.push(NamedTensor {
            name,
            shape,
            values,
        });
    }
    Ok((tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let dir = std::env::temp_dir().join(format!("sslhost-tf-{}", std::process::id()));
        let path = dir.join("a.safetensors");
        let tensors = vec![
            NamedTensor {
                name: "w".into(),
                shape: vec![2, 2],
                values: Values::F32(vec![1.0, -2.5, 3.0, 0.0]),
            },
            NamedTensor {
                name: "step".into(),
                shape: vec![1],
                values: Values::I64(vec![42]),
            },
        ];
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "sslhost".to_string());
        write(&path, &tensors, &meta).unwrap();
        let (mut back, meta_back) = read(&path).unwrap();
        back.sort_by(|a, b| b.name.cmp(&a.name));
        assert_eq!(back, tensors);
        assert_eq!(meta_back, meta);
        // A truncated file is an error naming the file, not a panic.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("a.safetensors") && err.contains("truncated"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
