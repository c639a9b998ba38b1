//! `sslhost sweep`: a recipe run once per combination of config values (and seed), one after
//! another, each in its own run directory under one sweep folder, with a summary table.
//!
//! Each run is a child `sslhost run` process, so runs share nothing but the disk. The folder
//! holds `<combination>/<recipe>-<time>/` per run, `results.jsonl` (one line per finished
//! run: its values, seed, final kNN top-1, final loss, wall time, run directory) and
//! `summary.md` (the same as a Markdown table, rewritten after each run). A sweep started
//! again skips the combinations `results.jsonl` has, and continues an interrupted run from its
//! last checkpoint.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::files::{Appender, write_atomic};

/// One axis of the grid: a config key and its values, as `--set` takes them.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    /// The key (`tau_base`, `optim.lr`).
    pub key: String,
    /// Its values, in the order given.
    pub values: Vec<String>,
}

/// Parses `key=v1,v2,..`. Commas inside brackets or quotes belong to a value
/// (`widths=[16,32,64,128],[32,64,128,256]` is two values).
pub fn parse_axis(text: &str) -> std::result::Result<Axis, String> {
    let (key, values) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=V1,V2,.., got `{text}`"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("expected KEY=V1,V2,.., got `{text}`"));
    }
    let mut out = Vec::new();
    let (mut depth, mut quote, mut current) = (0i32, None::<char>, String::new());
    for c in values.chars() {
        match c {
            '"' | '\'' if quote == Some(c) => quote = None,
            '"' | '\'' if quote.is_none() => quote = Some(c),
            '[' | '(' | '{' if quote.is_none() => depth += 1,
            ']' | ')' | '}' if quote.is_none() => depth -= 1,
            ',' if quote.is_none() && depth == 0 => {
                out.push(std::mem::take(&mut current).trim().to_string());
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current.trim().to_string());
    if out.iter().any(String::is_empty) {
        return Err(format!("`{text}`: an empty value"));
    }
    Ok(Axis {
        key: key.to_string(),
        values: out,
    })
}

/// One run of the sweep: its grid values and seed.
#[derive(Clone, Debug, PartialEq)]
pub struct Combination {
    /// `(key, value)` per axis, in axis order.
    pub values: Vec<(String, String)>,
    /// The run's `--seed`.
    pub seed: u64,
}

impl Combination {
    /// A folder name that says what the run is: `tau_base=0.9,predictor=false,seed=0`, with
    /// characters a file name should not hold replaced.
    pub fn name(&self) -> String {
        let mut parts: Vec<String> = self
            .values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.push(format!("seed={}", self.seed));
        parts
            .join(",")
            .chars()
            .map(|c| match c {
                '/' | '\\' | ' ' | '"' | '\'' | ':' | '*' | '?' | '<' | '>' | '|' => '_',
                c => c,
            })
            .collect()
    }
}

/// Every combination of the axes' values, for seeds `0..seeds`: the first axis varies
/// slowest, the seed fastest.
pub fn combinations(axes: &[Axis], seeds: u64) -> Vec<Combination> {
    let mut out = vec![Vec::new()];
    for axis in axes {
        out = out
            .into_iter()
            .flat_map(|prefix: Vec<(String, String)>| {
                axis.values.iter().map(move |v| {
                    let mut next = prefix.clone();
                    next.push((axis.key.clone(), v.clone()));
                    next
                })
            })
            .collect();
    }
    out.into_iter()
        .flat_map(|values| {
            (0..seeds.max(1)).map(move |seed| Combination {
                values: values.clone(),
                seed,
            })
        })
        .collect()
}

/// What a sweep runs.
pub struct SweepPlan {
    /// The recipe.
    pub recipe: PathBuf,
    /// The grid.
    pub axes: Vec<Axis>,
    /// Seeds per combination.
    pub seeds: u64,
    /// The sweep folder.
    pub out: PathBuf,
    /// Arguments every `sslhost run` gets besides the recipe, `--runs`, `--seed` and the
    /// grid's `--set`s (the device, fixed overrides).
    pub run_args: Vec<String>,
}

/// What a sweep did.
pub struct SweepReport {
    /// Runs made now.
    pub ran: usize,
    /// Runs skipped because `results.jsonl` had them.
    pub skipped: usize,
    /// The Markdown summary.
    pub summary: PathBuf,
}

/// Runs `plan`: checks every combination's config first (an unknown key or a bad value
/// fails before any run starts), then runs the combinations not yet finished.
pub fn run(plan: &SweepPlan) -> Result<SweepReport> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Other(format!("cannot find the sslhost binary: {e}")))?;
    let combos = combinations(&plan.axes, plan.seeds);
    for combo in &combos {
        let out = command(&exe, plan, combo, &plan.out.join("check"))
            .arg("--print-config")
            .output()
            .map_err(|e| Error::Other(format!("cannot start sslhost: {e}")))?;
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "sweep: {} does not run with {}:\n{}",
                plan.recipe.display(),
                combo.name(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            )));
        }
    }
    let _ = std::fs::remove_dir_all(plan.out.join("check"));

    std::fs::create_dir_all(&plan.out)
        .map_err(|e| Error::file(&plan.out, format!("cannot create: {e}")))?;
    let results_path = plan.out.join("results.jsonl");
    let mut rows = read_rows(&results_path);
    let mut results = Appender::open(&results_path)?;
    let (mut ran, mut skipped) = (0, 0);
    for (i, combo) in combos.iter().enumerate() {
        let name = combo.name();
        if rows.iter().any(|r| r["name"] == json!(name)) {
            skipped += 1;
            continue;
        }
        let runs = plan.out.join(&name);
        let mut cmd = command(&exe, plan, combo, &runs);
        // An interrupted run continues from its checkpoint.
        if let Some(dir) = single_run_dir(&runs)
            && dir.join("checkpoints/last.safetensors").is_file()
        {
            cmd.arg("--resume").arg(&dir);
        }
        let start = Instant::now();
        let status = cmd
            .status()
            .map_err(|e| Error::Other(format!("cannot start sslhost: {e}")))?;
        let wall = start.elapsed().as_secs_f64();
        if !status.success() {
            return Err(Error::Other(format!(
                "sweep: run {name} failed ({status}); start the sweep again to continue it"
            )));
        }
        let dir = single_run_dir(&runs).ok_or_else(|| {
            Error::Other(format!(
                "sweep: run {name} left no run directory in {}",
                runs.display()
            ))
        })?;
        let row = result_row(combo, &dir, wall);
        eprintln!(
            "sweep [{}/{}] {name}: knn_top1 {}, loss {}, {:.1} min",
            i + 1,
            combos.len(),
            shown(&row["knn_top1"]),
            shown(&row["loss"]),
            wall / 60.0
        );
        let mut line = row.to_string();
        line.push('\n');
        results.append(line.into_bytes());
        rows.push(row);
        write_summary(&plan.out.join("summary.md"), &plan.axes, &rows)?;
        ran += 1;
    }
    write_summary(&plan.out.join("summary.md"), &plan.axes, &rows)?;
    Ok(SweepReport {
        ran,
        skipped,
        summary: plan.out.join("summary.md"),
    })
}

fn command(exe: &Path, plan: &SweepPlan, combo: &Combination, runs: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg(&plan.recipe)
        .arg("--runs")
        .arg(runs)
        .arg("--seed")
        .arg(combo.seed.to_string())
        .args(&plan.run_args);
    for (k, v) in &combo.values {
        cmd.arg("--set").arg(format!("{k}={v}"));
    }
    cmd
}

/// The one run directory under `runs`, if there is exactly one.
fn single_run_dir(runs: &Path) -> Option<PathBuf> {
    let dirs: Vec<PathBuf> = std::fs::read_dir(runs)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    match dirs.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// The rows of `results.jsonl` (none when it does not exist; cut lines are skipped).
fn read_rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A finished run's row: its values, seed, the last logged `knn_top1` and `loss`, wall time.
fn result_row(combo: &Combination, dir: &Path, wall: f64) -> Value {
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    let last = |key: &str| {
        metrics
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v.get(key).cloned())
            .rfind(Value::is_number)
            .unwrap_or(Value::Null)
    };
    let values: serde_json::Map<String, Value> = combo
        .values
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "name": combo.name(),
        "values": values,
        "seed": combo.seed,
        "knn_top1": last("knn_top1"),
        "loss": last("loss"),
        "wall_s": (wall * 10.0).round() / 10.0,
        "run": dir.display().to_string(),
    })
}

fn shown(v: &Value) -> String {
    v.as_f64()
        .map(crate::train::curves::number)
        .unwrap_or_else(|| "-".into())
}

/// The rows as a Markdown table: a column per grid key, then seed, kNN, loss, minutes.
fn write_summary(path: &Path, axes: &[Axis], rows: &[Value]) -> Result<()> {
    let mut md = String::from("|");
    for axis in axes {
        md += &format!(" {} |", axis.key);
    }
    md += " seed | kNN top-1 | loss | minutes |\n|";
    md += &"---|".repeat(axes.len() + 4);
    md += "\n";
    for row in rows {
        md += "|";
        for axis in axes {
            let v = row["values"][&axis.key].as_str().unwrap_or("");
            md += &format!(" {} |", v.replace('|', "\\|"));
        }
        md += &format!(
            " {} | {} | {} | {:.1} |\n",
            row["seed"],
            shown(&row["knn_top1"]),
            shown(&row["loss"]),
            row["wall_s"].as_f64().unwrap_or(0.0) / 60.0
        );
    }
    write_atomic(path, md.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_split_at_top_level_commas() {
        let a = parse_axis("tau_base=0, 0.9,0.99,1.0").unwrap();
        assert_eq!(a.key, "tau_base");
        assert_eq!(a.values, ["0", "0.9", "0.99", "1.0"]);
        let w = parse_axis("widths=[16,32],[32,64]").unwrap();
        assert_eq!(w.values, ["[16,32]", "[32,64]"]);
        let q = parse_axis(r#"name="a,b",c"#).unwrap();
        assert_eq!(q.values, [r#""a,b""#, "c"]);
        assert!(parse_axis("novalue").is_err());
        assert!(parse_axis("k=1,,2").is_err());
    }

    #[test]
    fn combinations_vary_the_seed_fastest() {
        let axes = [parse_axis("a=1,2").unwrap(), parse_axis("b=x,y").unwrap()];
        let names: Vec<String> = combinations(&axes, 2)
            .iter()
            .map(Combination::name)
            .collect();
        assert_eq!(names.len(), 8);
        assert_eq!(names[0], "a=1,b=x,seed=0");
        assert_eq!(names[1], "a=1,b=x,seed=1");
        assert_eq!(names[7], "a=2,b=y,seed=1");
        assert_eq!(combinations(&[], 1).len(), 1);
    }
}
