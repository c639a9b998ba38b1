//! How large one tensor may be: element counts in checked arithmetic, and bytes within the
//! run's memory budget (`--max-memory`, else the machine's memory), so that a huge or
//! overflowing shape is an error at the script's line, never an aborted process or an
//! empty tensor.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// `--max-memory` in bytes; 0 when not given.
static MAX_BYTES: AtomicU64 = AtomicU64::new(0);
/// The GPU's memory in bytes once a GPU is the run's device; 0 otherwise.
static DEVICE_BYTES: AtomicU64 = AtomicU64::new(0);

/// Records the memory of the GPU the run uses: the default budget from then on.
pub fn set_device_bytes(bytes: u64) {
    DEVICE_BYTES.store(bytes, Ordering::Relaxed);
}

/// Sets the budget (`--max-memory`); `None` goes back to the machine's memory.
pub fn set_max_bytes(bytes: Option<u64>) {
    MAX_BYTES.store(bytes.unwrap_or(0), Ordering::Relaxed);
}

/// The largest allocation allowed, in bytes: `--max-memory`, else the GPU's memory when a
/// GPU is the device, else the machine's memory (`MemTotal`; unlimited where unknown).
pub fn max_bytes() -> u64 {
    match (
        MAX_BYTES.load(Ordering::Relaxed),
        DEVICE_BYTES.load(Ordering::Relaxed),
    ) {
        (0, 0) => machine_bytes(),
        (0, device) => device,
        (set, _) => set,
    }
}

fn machine_bytes() -> u64 {
    static TOTAL: OnceLock<u64> = OnceLock::new();
    *TOTAL.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                kib.checked_mul(1024)
            })
            .unwrap_or(u64::MAX)
    })
}

/// The number of elements of `shape`, or an error when it overflows or the tensor (4 bytes
/// an element) would not fit the budget; `what` names the tensor in the message.
pub fn elements(shape: &[usize], what: &str) -> Result<usize> {
    let n = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            Error::Shape(format!(
                "{what}: shape {shape:?} has more elements than can be counted"
            ))
        })?;
    let bytes = (n as u128) * 4;
    let max = max_bytes();
    if bytes > u128::from(max) {
        return Err(Error::Shape(format!(
            "{what}: shape {shape:?} needs {} in f32, more than the {} allowed ({})",
            human(bytes),
            human(u128::from(max)),
            match MAX_BYTES.load(Ordering::Relaxed) {
                0 => "the device's memory; --max-memory sets another budget",
                _ => "--max-memory",
            }
        )));
    }
    Ok(n)
}

/// `--max-memory` values: bytes, or a number with K, M, G or T (powers of 1024; `GB`, `GiB`
/// and lower case read the same).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("expected a size such as 8G or 512M, got `{text}`"))?;
    let scale = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1u64,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("unknown size unit in `{text}` (use K, M, G or T)")),
    };
    let bytes = value * scale as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("`{text}` is not a usable memory size"));
    }
    Ok(bytes as u64)
}

fn human(bytes: u128) -> String {
    let gib = bytes as f64 / f64::from(1u32 << 30);
    if gib >= 1.0 {
        format!("{gib:.1} GiB")
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("1.5gib").unwrap(), 3 << 29);
        assert_eq!(parse_size("256 MB").unwrap(), 256 << 20);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("8Q").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn overflowing_and_huge_shapes_are_errors() {
        let e = elements(&[1 << 40, 1 << 40, 1 << 40], "zeros").unwrap_err();
        assert!(
            e.to_string().contains("more elements than can be counted"),
            "{e}"
        );
        // 400 GB, far beyond any test machine's memory budget default? Use an explicit one.
        set_max_bytes(Some(1 << 30));
        let e = elements(&[100_000, 1_000_000], "zeros")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("372.5 GiB in f32, more than the 1.0 GiB allowed (--max-memory)"),
            "{e}"
        );
        assert_eq!(elements(&[1024, 1024], "zeros").unwrap(), 1 << 20);
        set_max_bytes(None);
    }
}
