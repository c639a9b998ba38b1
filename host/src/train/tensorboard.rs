//! TensorBoard event files: the scalars of `log(step, #{..})`, readable by `tensorboard
//! --logdir runs/`.
//!
//! An event file is a sequence of TFRecords, each holding one serialised `tensorflow.Event`
//! protocol buffer. Both formats are small enough to write by hand:
//!
//! - a record is `length: u64 LE`, `masked_crc32c(length bytes): u32 LE`, the payload, and
//!   `masked_crc32c(payload): u32 LE`, where a CRC is masked as
//!   `((crc >> 15) | (crc << 17)) + 0xa282ead8`;
//! - the first event carries `wall_time` (field 1, double) and `file_version` (field 3,
//!   `"brain.Event:2"`); every later one `wall_time`, `step` (field 2, int64) and a `summary`
//!   (field 5) of repeated `value`s (field 1), each a `tag` (field 1, string) and a
//!   `simple_value` (field 2, float).
//!
//! A text summary (TensorBoard's Text tab) is a `value` with a `tensor` (field 8: `dtype` 1 =
//! `DT_STRING` (7), `tensor_shape` 2 with one `dim` of size 1, `string_val` 8) and `metadata`
//! (field 9) naming the plugin `"text"` (`plugin_data` 1, `plugin_name` 1), as PyTorch's
//! `add_text` writes it; the text is Markdown.
//!
//! TensorBoard reads every `*tfevents*` file of a directory, so a resumed run starts a new
//! file next to the old one.

use std::path::Path;

use crate::error::{Error, Result};
use crate::files::Appender;

/// The version string of the first event of every file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// An open event file, flushed after every event; a failing disk holds events back rather
/// than failing the run (see [`Appender`]).
pub struct EventWriter {
    file: Appender,
}

impl EventWriter {
    /// Creates `events.out.tfevents.<unix secs>.<hostname>` in `dir` (with a numeric suffix
    /// if a file of that name exists) and writes its version event.
    pub fn create(dir: &Path, wall_time: f64) -> Result<Self> {
        let base = format!(
            "events.out.tfevents.{}.{}",
            wall_time.max(0.0) as u64,
            hostname()
        );
        let mut path = dir.join(&base);
        let mut n = 1;
        let file = loop {
            match Appender::create_new(&path) {
                Ok(f) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => {
                    n += 1;
                    path = dir.join(format!("{base}.{n}"));
                }
                Err(e) => return Err(Error::file(&path, format!("cannot create: {e}"))),
            }
        };
        let mut writer = EventWriter { file };
        writer.write_event(&version_event(wall_time));
        Ok(writer)
    }

    /// Marks a restart at `step` (a `SessionLog` of status START): TensorBoard then drops the
    /// events of earlier files at `step` and after, which a resumed run writes again.
    pub fn restart_at(&mut self, step: u64, wall_time: f64) {
        self.write_event(&restart_event(step, wall_time));
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Appends one event with the scalar summaries `(tag, value)` at `step`. Nothing is
    /// written for an empty list.
    pub fn add_scalars(&mut self, step: u64, wall_time: f64, scalars: &[(&str, f32)]) {
        if !scalars.is_empty() {
            self.write_event(&scalar_event(step, wall_time, scalars));
        }
    }

    /// Appends a Markdown text summary under `tag` at `step` (TensorBoard's Text tab).
    pub fn add_text(&mut self, step: u64, wall_time: f64, tag: &str, markdown: &str) {
        self.write_event(&text_event(step, wall_time, tag, markdown));
    }

    fn write_event(&mut self, event: &[u8]) {
        self.file.append(record(event));
    }
}

/// The scalars of one `log` call: its numeric values (numbers; bools, strings and nulls are
/// not scalars) as `f32`, in the map's order.
pub fn scalars(values: &serde_json::Map<String, serde_json::Value>) -> Vec<(&str, f32)> {
    values
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_f64()? as f32)))
        .collect()
}

/// The host's name as it may appear in a file name (`localhost` if unknown).
fn hostname() -> String {
    let raw = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// `payload` framed as a TFRecord.
pub fn record(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
    out
}

/// CRC32C of `bytes`, masked as TFRecord does (a CRC of data holding CRCs is then no
/// weaker than one of plain data).
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    // (crc >> 15) | (crc << 17)
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// A restart marker: `wall_time`, `step` and `session_log` (field 6) with `status` (field 1)
/// START (1).
fn restart_event(step: u64, wall_time: f64) -> Vec<u8> {
    let mut event = Vec::new();
    put_double(&mut event, 1, wall_time);
    put_key(&mut event, 2, WIRE_VARINT);
    put_varint(&mut event, step);
    let mut session_log = Vec::new();
    put_key(&mut session_log, 1, WIRE_VARINT);
    put_varint(&mut session_log, SESSION_LOG_START);
    put_bytes(&mut event, 6, &session_log);
    event
}

/// The first event of a file: `wall_time` and `file_version`.
fn version_event(wall_time: f64) -> Vec<u8> {
    let mut event = Vec::new();
    put_double(&mut event, 1, wall_time);
    put_bytes(&mut event, 3, FILE_VERSION.as_bytes());
    event
}

/// An event with a summary of scalar values.
fn scalar_event(step: u64, wall_time: f64, scalars: &[(&str, f32)]) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, value) in scalars {
        let mut v = Vec::new();
        put_bytes(&mut v, 1, tag.as_bytes());
        put_key(&mut v, 2, WIRE_FIXED32);
        v.extend_from_slice(&value.to_le_bytes());
        put_bytes(&mut summary, 1, &v);
    }
    summary_event(step, wall_time, &summary)
}

/// An event with one text value: a string tensor of shape [1] for the text plugin.
fn text_event(step: u64, wall_time: f64, tag: &str, text: &str) -> Vec<u8> {
    let mut dim = Vec::new();
    put_key(&mut dim, 1, WIRE_VARINT);
    put_varint(&mut dim, 1);
    let mut shape = Vec::new();
    put_bytes(&mut shape, 2, &dim);
    let mut tensor = Vec::new();
    put_key(&mut tensor, 1, WIRE_VARINT);
    put_varint(&mut tensor, DT_STRING);
    put_bytes(&mut tensor, 2, &shape);
    put_bytes(&mut tensor, 8, text.as_bytes());
    let mut plugin = Vec::new();
    put_bytes(&mut plugin, 1, b"text");
    let mut metadata = Vec::new();
    put_bytes(&mut metadata, 1, &plugin);
    let mut v = Vec::new();
    put_bytes(&mut v, 1, tag.as_bytes());
    put_bytes(&mut v, 8, &tensor);
    put_bytes(&mut v, 9, &metadata);
    let mut summary = Vec::new();
    put_bytes(&mut summary, 1, &v);
    summary_event(step, wall_time, &summary)
}

/// An event at `step` holding `summary` (its encoded values).
fn summary_event(step: u64, wall_time: f64, summary: &[u8]) -> Vec<u8> {
    let mut event = Vec::new();
    put_double(&mut event, 1, wall_time);
    put_key(&mut event, 2, WIRE_VARINT);
    put_varint(&mut event, step);
    put_bytes(&mut event, 5, summary);
    event
}

/// `tensorflow.DataType.DT_STRING`.
const DT_STRING: u64 = 7;

/// `SessionLog.SessionStatus.START`.
const SESSION_LOG_START: u64 = 1;

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u64, wire: u64) {
    put_varint(out, (field << 3) | wire);
}

fn put_double(out: &mut Vec<u8>, field: u64, v: f64) {
    put_key(out, field, WIRE_FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the test reader finds in one event.
    #[derive(Debug, Default, PartialEq)]
    struct Event {
        wall_time: f64,
        step: u64,
        file_version: Option<String>,
        values: Vec<(String, f32)>,
        /// The status of a `session_log`, if the event has one.
        session_status: Option<u64>,
        /// Text values: (tag, plugin name, dtype, shape dims, text).
        texts: Vec<(String, String, u64, Vec<u64>, String)>,
    }

    /// Splits a file into TFRecord payloads, checking both CRCs of every record.
    fn records(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (len_bytes, rest) = bytes.split_at(8);
            let len_crc = u32::from_le_bytes(rest[..4].try_into().unwrap());
            assert_eq!(len_crc, masked_crc(len_bytes), "length CRC");
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let payload = &rest[4..4 + len];
            let crc = u32::from_le_bytes(rest[4 + len..8 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc(payload), "payload CRC");
            out.push(payload.to_vec());
            bytes = &rest[8 + len..];
        }
        out
    }

    fn varint(bytes: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = bytes[0];
            *bytes = &bytes[1..];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
        }
        v
    }

    /// The fields of a message: (field number, wire type, raw value bytes or varint).
    fn fields(mut bytes: &[u8]) -> Vec<(u64, Vec<u8>, u64)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let key = varint(&mut bytes);
            let (field, wire) = (key >> 3, key & 7);
            match wire {
                WIRE_VARINT => out.push((field, Vec::new(), varint(&mut bytes))),
                WIRE_FIXED64 | WIRE_FIXED32 => {
                    let n = if wire == WIRE_FIXED64 { 8 } else { 4 };
                    out.push((field, bytes[..n].to_vec(), 0));
                    bytes = &bytes[n..];
                }
                WIRE_LEN => {
                    let n = varint(&mut bytes) as usize;
                    out.push((field, bytes[..n].to_vec(), 0));
                    bytes = &bytes[n..];
                }
                other => panic!("unexpected wire type {other}"),
            }
        }
        out
    }

    fn decode(payload: &[u8]) -> Event {
        let mut event = Event::default();
        for (field, raw, int) in fields(payload) {
            match field {
                1 => event.wall_time = f64::from_le_bytes(raw.try_into().unwrap()),
                2 => event.step = int,
                3 => event.file_version = Some(String::from_utf8(raw).unwrap()),
                5 => {
                    for (f, value, _) in fields(&raw) {
                        assert_eq!(f, 1, "summary.value");
                        let mut tag = String::new();
                        let mut simple = None;
                        let (mut plugin, mut dtype, mut dims, mut text) =
                            (String::new(), 0, Vec::new(), None);
                        for (f, raw, _) in fields(&value) {
                            match f {
                                1 => tag = String::from_utf8(raw).unwrap(),
                                2 => simple = Some(f32::from_le_bytes(raw.try_into().unwrap())),
                                8 => {
                                    for (f, raw, int) in fields(&raw) {
                                        match f {
                                            1 => dtype = int,
                                            2 => {
                                                for (_, dim, _) in fields(&raw) {
                                                    dims.push(fields(&dim)[0].2);
                                                }
                                            }
                                            8 => text = Some(String::from_utf8(raw).unwrap()),
                                            other => panic!("unexpected tensor field {other}"),
                                        }
                                    }
                                }
                                9 => {
                                    let data = fields(&raw).remove(0).1;
                                    plugin = String::from_utf8(fields(&data).remove(0).1).unwrap();
                                }
                                other => panic!("unexpected value field {other}"),
                            }
                        }
                        match (simple, text) {
                            (Some(v), None) => event.values.push((tag, v)),
                            (None, Some(t)) => event.texts.push((tag, plugin, dtype, dims, t)),
                            other => panic!("a value with {other:?}"),
                        }
                    }
                }
                6 => {
                    let status = fields(&raw).into_iter().find(|f| f.0 == 1).map(|f| f.2);
                    event.session_status = Some(status.unwrap_or(0));
                }
                other => panic!("unexpected event field {other}"),
            }
        }
        event
    }

    #[test]
    fn a_restart_is_marked_by_a_session_start_at_its_step() {
        let dir = std::env::temp_dir().join(format!("sslhost-restart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = EventWriter::create(&dir, 1_700_000_000.0).unwrap();
        w.restart_at(120, 1_700_000_001.0);
        w.add_scalars(120, 1_700_000_002.0, &[("loss", 1.0)]);
        let events: Vec<Event> = records(&std::fs::read(w.path()).unwrap())
            .iter()
            .map(|p| decode(p))
            .collect();
        assert_eq!(events.len(), 3);
        assert_eq!(events[1].step, 120);
        assert_eq!(events[1].session_status, Some(SESSION_LOG_START));
        assert!(events[1].values.is_empty());
        assert_eq!(events[2].session_status, None);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn scalars_are_written_as_checksummed_events_and_read_back() {
        let dir = std::env::temp_dir().join(format!("sslhost-tfevents-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = EventWriter::create(&dir, 1_700_000_000.25).unwrap();
        w.add_scalars(0, 1_700_000_001.0, &[("loss", 2.5), ("lr", 0.1)]);
        w.add_scalars(300, 1_700_000_002.0, &[("loss", -1.25e-3)]);
        w.add_scalars(301, 1_700_000_003.0, &[]);
        let name = w.path().file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name.starts_with("events.out.tfevents.1700000000."),
            "{name}"
        );

        // A second writer in the same second gets a file of its own.
        let second = EventWriter::create(&dir, 1_700_000_000.5).unwrap();
        assert_ne!(second.path(), w.path());

        let events: Vec<Event> = records(&std::fs::read(w.path()).unwrap())
            .iter()
            .map(|p| decode(p))
            .collect();
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
        assert_eq!(events[0].wall_time, 1_700_000_000.25);
        assert_eq!(events[1].step, 0);
        assert_eq!(events[1].wall_time, 1_700_000_001.0);
        assert_eq!(
            events[1].values,
            vec![("loss".to_string(), 2.5), ("lr".to_string(), 0.1)]
        );
        assert_eq!(events[2].step, 300);
        assert_eq!(events[2].values, vec![("loss".to_string(), -1.25e-3)]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn text_is_a_string_tensor_for_the_text_plugin() {
        let dir = std::env::temp_dir().join(format!("sslhost-tftext-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = EventWriter::create(&dir, 1_700_000_000.0).unwrap();
        w.add_text(
            7,
            1_700_000_001.0,
            "config",
            "| key | value |\n|---|---|\n| lr | 0.1 |",
        );
        let events: Vec<Event> = records(&std::fs::read(w.path()).unwrap())
            .iter()
            .map(|p| decode(p))
            .collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].step, 7);
        assert_eq!(
            events[1].texts,
            vec![(
                "config".to_string(),
                "text".to_string(),
                DT_STRING,
                vec![1],
                "| key | value |\n|---|---|\n| lr | 0.1 |".to_string()
            )]
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn only_numbers_are_scalars() {
        let values =
            serde_json::json!({ "loss": 0.5, "n": 3, "ok": true, "name": "x", "nan": null });
        let got = scalars(values.as_object().unwrap());
        let mut got: Vec<_> = got.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, vec![("loss".into(), 0.5), ("n".into(), 3.0)]);
    }

    #[test]
    fn masked_crc_matches_tensorflow() {
        // CRC32C("123456789") = 0xE3069283 (the standard check value); masked by hand:
        // ((0xE3069283 >> 15) | (0xE3069283 << 17)) + 0xa282ead8 (mod 2^32).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xC78A_B0E5);
    }
}
