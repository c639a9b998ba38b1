//! The `sslhost` command line: run | check | export | eval | completions | bench | gpu-selftest.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sslhost::context::RunContext;
use sslhost::device::{self, DeviceChoice, DeviceKind};
use sslhost::engine;
use sslhost::error::{Error, Result};
use sslhost::kernels::{self, KernelPolicy, PrecisionChoice};
use sslhost::session::Session;
use sslhost::tensor::tape;
use sslhost::train::current::RunRecord;

/// The system allocator; while `sslhost bench` measures, freeing tensors at the end of a
/// script block counts as host time rather than as time of the Rhai layer.
#[global_allocator]
static ALLOCATOR: sslhost::profiling::ReleaseTimingAllocator =
    sslhost::profiling::ReleaseTimingAllocator;

/// Self-supervised vision training loops as Rhai scripts.
#[derive(Parser, Debug)]
#[command(name = "sslhost", version = VERSION, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a script (a recipe or a tool) to its end.
    Run {
        /// The script file (with --resume: the run directory's recipe.rhai when left out).
        #[arg(required_unless_present = "resume")]
        script: Option<PathBuf>,
        #[command(flatten)]
        on: DeviceArgs,
        /// Seed of the run's random generator.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Continue the run in this directory from its last checkpoint.
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
        /// Where run directories are created (`<runs>/<recipe>-<time>/`).
        #[arg(long, value_name = "DIR", default_value = "runs")]
        runs: PathBuf,
        /// Directory holding the dataset's files (else $SSLHOST_DATA, then standard places).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Override a key of the script's `config(..)`: `--set batch_size=512` (repeatable).
        #[arg(short = 's', long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
        set: Vec<(String, String)>,
        /// With --resume: continue even though a setting that changes the data order or the
        /// model (data, limit, batch_size, seed, depth, widths, blocks, --seed) differs from
        /// the checkpoint's.
        #[arg(long, requires = "resume")]
        force: bool,
        /// Print the resolved config (the recipe's defaults, the checkpoint's values on
        /// --resume, then --set) as JSON when the script calls config(..), and exit.
        #[arg(long)]
        print_config: bool,
        /// The largest tensor allowed (8G, 512M, ...): a bigger one is an error at the
        /// script's line. Default: the machine's memory.
        #[arg(long, value_name = "SIZE", value_parser = sslhost::budget::parse_size)]
        max_memory: Option<u64>,
        /// `check`: tape the loop's tensor calls and say at the end whether the steps make the
        /// same calls, and where they read the device: what replaying a recorded step as a
        /// device graph needs. `replay`: also answer each step's calls from a recorded step
        /// and run their work together at the step's end (the recorded calls, or with
        /// SSLHOST_CAPTURE_GRAPH=1 a CUDA graph). Both give the results the run gives
        /// without them.
        #[arg(long, value_enum, default_value = "off")]
        capture: Capture,
    },
    /// Compile a script and run it on tiny data: two real steps, no run directory.
    Check {
        /// The script file.
        script: PathBuf,
        #[command(flatten)]
        on: DeviceArgs,
        /// Seed of the run's random generator.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Directory holding the dataset's files (else $SSLHOST_DATA, then standard places).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Override a key of the script's `config(..)` (repeatable).
        #[arg(short = 's', long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
        set: Vec<(String, String)>,
        /// The largest tensor allowed (8G, 512M, ...); default: the machine's memory.
        #[arg(long, value_name = "SIZE", value_parser = sslhost::budget::parse_size)]
        max_memory: Option<u64>,
        /// Check the recipe's presets for this kind of device (`device_kind()` says so), on
        /// the device the check runs on: `--preset cuda` checks the GPU run's network, batch
        /// and image sizes on a machine without a GPU. Default: the device's own.
        #[arg(long, value_enum, value_name = "KIND")]
        preset: Option<PresetKind>,
    },
    /// Write a trained ResNet backbone from a checkpoint with torchvision's names and shapes
    /// (`torchvision.models.resnet18()`, with the same stem, loads it with strict=True
    /// except `fc`), its architecture, the run's config and recipe in the metadata.
    Export {
        /// A run directory (its checkpoints/last.safetensors) or a checkpoint file.
        run: PathBuf,
        /// The network to export: a checkpoint key (`online`, `target`) or a key and a part
        /// (`online.0`). Default: the only ResNet, else `online`'s (`student`'s for DINO).
        #[arg(long, value_name = "NAME")]
        net: Option<String>,
        /// The file to write.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
    },
    /// Evaluate a trained backbone on a labelled dataset: weighted kNN (cosine, T = 0.1) and
    /// the offline linear protocol (frozen backbone, features computed once, a linear
    /// classifier trained on them); writes eval.json beside the checkpoint or file and prints
    /// a table. Without --knn or --linear, both.
    Eval {
        /// A run directory, a checkpoint, an exported backbone, or a torchvision state dict
        /// saved with safetensors.
        run: PathBuf,
        /// Score the kNN classifier.
        #[arg(long)]
        knn: bool,
        /// Train and score the linear classifier.
        #[arg(long)]
        linear: bool,
        /// The network of a checkpoint (`online`, `target`, `online.0`). Default: the only
        /// ResNet, else `online`'s (`student`'s for DINO).
        #[arg(long, value_name = "NAME")]
        net: Option<String>,
        /// The labelled dataset (a name as `dataset(..)` takes, or a folder). Default: the
        /// run's `data`.
        #[arg(long, value_name = "NAME_OR_FOLDER")]
        eval_data: Option<String>,
        /// Directory holding the dataset's files (else $SSLHOST_DATA, then standard places).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// The first N images of each split (0: all). Default: the run's `limit`.
        #[arg(long)]
        limit: Option<usize>,
        /// The side images are resized to. Default: the run's `size`, else the dataset's.
        #[arg(long)]
        size: Option<usize>,
        /// The kNN neighbourhoods.
        #[arg(long, value_delimiter = ',', default_value = "20,200")]
        k: Vec<usize>,
        /// Linear protocol: epochs over the train features.
        #[arg(long, default_value_t = 100)]
        linear_epochs: usize,
        /// Linear protocol: peak learning rate (SGD, momentum 0.9, cosine to 0).
        #[arg(long, default_value_t = 0.1)]
        linear_lr: f64,
        /// Linear protocol: features per step.
        #[arg(long, default_value_t = 256)]
        linear_batch: usize,
        /// Linear protocol: weight decay of the classifier's weight.
        #[arg(long, default_value_t = 0.0)]
        linear_weight_decay: f64,
        /// Seed of the linear classifier's shuffles.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where tensors live: auto (CUDA if present), cuda, cpu, or cubecl-cpu.
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Print a shell's completion script for sslhost: `sslhost completions bash >
    /// ~/.local/share/bash-completion/completions/sslhost` (zsh: into a folder of $fpath as
    /// `_sslhost`; fish: ~/.config/fish/completions/sslhost.fish).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run a recipe once per combination of config values (and seed), one after another,
    /// each in its own run directory under OUT; OUT/summary.md and OUT/results.jsonl hold
    /// the grid values, the final kNN top-1 and loss and the wall time of each. Started
    /// again, it skips finished runs and continues an interrupted one from its checkpoint.
    Sweep {
        /// The recipe.
        script: PathBuf,
        /// A config key and its values: `--grid tau_base=0,0.9,0.99,1.0` (repeatable: every
        /// combination runs). Commas inside brackets belong to a value (`widths=[16,32],[8,16]`).
        #[arg(long, value_name = "KEY=V1,V2,..", value_parser = sslhost::sweep::parse_axis, required = true)]
        grid: Vec<sslhost::sweep::Axis>,
        /// Seeds per combination (0, 1, ..).
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// The sweep folder (default: sweeps/<recipe>).
        #[arg(long, short)]
        out: Option<PathBuf>,
        #[command(flatten)]
        on: DeviceArgs,
        /// Directory holding the dataset's files (passed to every run).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// A setting every run gets (`-s epochs=2`), besides the grid's.
        #[arg(short = 's', long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
        set: Vec<(String, String)>,
    },
    /// Redraw a run's `curves.png` from its `metrics.jsonl` (runs draw it when they end),
    /// with another smoothing or into another file.
    Curves {
        /// The run directory.
        run: PathBuf,
        /// TensorBoard's smoothing weight for noisy metrics, in [0, 1): 0 draws raw values.
        #[arg(long, default_value_t = sslhost::train::curves::DEFAULT_SMOOTHING)]
        smoothing: f64,
        /// The PNG to write (default: RUN/curves.png).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Write the script API reference (Markdown: one page per host module and stdlib file, each
    /// function's signature, doc text and example) and the Rhai language server's definition
    /// files (`OUT/definitions/*.d.rhai`) into a folder.
    Docs {
        /// The folder (created if missing).
        #[arg(long, short, default_value = "api-docs")]
        out: PathBuf,
    },
    /// Time training steps of a method on random images (the recipes' networks, heads, losses,
    /// optimisers and views): median and mean step time, images/s, peak memory and the share
    /// of the Rhai layer. The last line of stdout is the result as JSON.
    Bench {
        #[command(flatten)]
        on: DeviceArgs,
        /// The method whose step is timed.
        #[arg(long, value_enum, default_value = "byol")]
        method: BenchMethod,
        /// ResNet depth (18, 34 or 50).
        #[arg(long, default_value_t = 18)]
        depth: i64,
        /// Images per step (each gives two views).
        #[arg(long, default_value_t = 256)]
        batch: i64,
        /// Side of the (square) images and views.
        #[arg(long, default_value_t = 32)]
        image: i64,
        /// The four stage widths of the ResNet.
        #[arg(long, default_value = "64,128,256,512")]
        widths: String,
        /// Untimed steps first.
        #[arg(long, default_value_t = 3)]
        warmup: i64,
        /// Timed steps.
        #[arg(long, default_value_t = 10)]
        steps: i64,
        /// Seed of the run's random generator.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// GPU variants to time one after another in this process, so that they share its
        /// compiled and autotuned kernels: BATCH_NORM:ACTIVATIONS pairs, batch norm `burn`,
        /// `rows`, `nhwc` or `cudnn` (cuDNN's batch norm and convolutions), activations `f32`
        /// or `half` (`--variants burn:f32,nhwc:half,cudnn:half`).
        /// Each prints its summary and JSON lines. Default: one run, as the environment says.
        #[arg(long, value_delimiter = ',')]
        variants: Vec<sslhost::session::GpuVariant>,
        /// As `run --capture`: `replay` answers each step after the first from a recorded one
        /// (with SSLHOST_CAPTURE_GRAPH=1, through a CUDA graph), and the JSON line says what
        /// the replay did (`capture`, `capture_report`).
        #[arg(long, value_enum, default_value = "off")]
        capture: Capture,
    },
    /// Check the GPU kernels (cuDNN's convolutions and batch norm) against burn's own ops on
    /// every ResNet-18 CIFAR layer shape, the output and every gradient, in bf16 and f32:
    /// one line a layer, then a JSON line; exit code 1 when any is off beyond its tolerance.
    GpuSelftest {
        /// Where to check (on a device without cuDNN the kernels are burn's own, and the
        /// check is of the extension's autodiff wiring only).
        #[arg(long, value_enum, default_value = "cuda")]
        device: DeviceChoice,
        /// Images per layer (the recipes' CUDA batch by default).
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// The activations' types to check in.
        #[arg(long, value_delimiter = ',', default_value = "bf16,f32")]
        dtypes: Vec<SelftestType>,
        /// Then a recipe's training step without the script (a ResNet-18 at batch `--batch`,
        /// 32x32, and its EMA target; LARS; learning and EMA rates that change every step; the
        /// products in the device's default precision) recorded as a device graph and
        /// replayed this many times, each replay's loss compared with running the step, and
        /// both timed (0: no capture check).
        #[arg(long, default_value_t = 8)]
        capture_steps: usize,
        /// Only the capture check, not the layers.
        #[arg(long)]
        capture_only: bool,
    },
}

/// Where a script runs and what it multiplies in (`run`, `check`, `bench`).
#[derive(clap::Args, Debug)]
struct DeviceArgs {
    /// Where tensors live: auto (CUDA if present), cuda, cpu, or cubecl-cpu (the GPU code
    /// path on the CPU, with the cargo feature `cubecl-cpu`).
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// What convolutions and linear layers multiply in: auto (bf16 on CUDA, f32 on the CPU),
    /// f32, bf16, or f16 (no loss scaling). Weights, gradients and optimiser state stay f32.
    #[arg(long, value_enum, default_value = "auto")]
    precision: PrecisionChoice,
}

/// The kinds of device a recipe has presets for (`sslhost check --preset`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PresetKind {
    /// The CPU's (also cubecl-cpu's).
    Cpu,
    /// A CUDA GPU's.
    Cuda,
}

impl From<PresetKind> for DeviceKind {
    fn from(kind: PresetKind) -> Self {
        match kind {
            PresetKind::Cpu => DeviceKind::Cpu,
            PresetKind::Cuda => DeviceKind::Cuda,
        }
    }
}

/// The methods `sslhost bench` knows.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BenchMethod {
    /// BYOL: online + predictor (LARS), EMA target.
    Byol,
    /// MoCo v2: query encoder (SGD), momentum key encoder, a queue of 32768 keys.
    Moco,
    /// SimCLR: one encoder (LARS), NT-Xent.
    Simclr,
}

/// The types `sslhost gpu-selftest` checks in.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SelftestType {
    /// bf16 activations (half activations under `--precision bf16`).
    Bf16,
    /// f32.
    F32,
}

/// `--version`: the version, whether this build can use a GPU, the commit and the features
/// (made by build.rs).
const VERSION: &str = env!("SSLHOST_VERSION_LINE");

/// What `sslhost run --capture` does with the loop's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Capture {
    /// Nothing.
    Off,
    /// Tape the steps' tensor calls and report whether they repeat.
    Check,
    /// Also answer later steps' calls from a recorded step, their work run together.
    Replay,
}

impl Capture {
    fn name(self) -> &'static str {
        match self {
            Capture::Off => "off",
            Capture::Check => "check",
            Capture::Replay => "replay",
        }
    }

    /// Where the replay's graphs come from, when it runs through graphs, with `kernels`: then
    /// every update is written into the buffer it read (`KernelPolicy::with_capture`).
    /// `SSLHOST_CAPTURE_GRAPH=1`: the device's; `stand-in`: a stand-in that re-runs the
    /// captured work on the captured buffers; `SSLHOST_FAULT=capture`: one whose captures fail.
    /// An unknown value is an error.
    fn graphs(self, kernels: &KernelPolicy) -> Result<Option<tape::GraphMaker>> {
        let env = |name: &str| std::env::var(name).unwrap_or_default();
        let maker = match env("SSLHOST_CAPTURE_GRAPH").as_str() {
            "" | "0" => None,
            "1" => Some(tape::GraphMaker::Device),
            "stand-in" => Some(tape::GraphMaker::StandIn),
            other => {
                return Err(Error::Invalid(format!(
                    "SSLHOST_CAPTURE_GRAPH={other}: 1 (the device's graphs), stand-in or 0"
                )));
            }
        };
        let maker = match env("SSLHOST_FAULT").as_str() {
            "" => maker,
            "capture" => maker.map(|_| tape::GraphMaker::Failing),
            other => {
                return Err(Error::Invalid(format!(
                    "SSLHOST_FAULT={other}: the one fault is `capture`"
                )));
            }
        };
        let Some(maker) = maker.filter(|_| self == Capture::Replay) else {
            return Ok(None);
        };
        // Under the other orderings cuDNN runs on a stream of its own, which a capture of
        // cubecl's stream would not record. Under `stream` its calls go on cubecl's, and
        // inside a recording each is followed by a launch bound to its buffers, so that the
        // graph keeps their pages (`gpu_kernels::hold`); a fallback to `signal` is refused
        // when the capture starts.
        if kernels.gpu == kernels::GpuKernelSet::Cudnn
            && kernels.cudnn_order != kernels::CudnnOrder::Stream
        {
            tracing::warn!(
                "SSLHOST_CAPTURE_GRAPH: no device graph with cuDNN's kernels ordered by `{}`: \
                 they run on a stream of their own, which the graph would not record \
                 (SSLHOST_CUDNN_ORDER=stream puts them on cubecl's); the steps replay without one",
                kernels.cudnn_order.name()
            );
            return Ok(None);
        }
        Ok(Some(maker))
    }

    /// Installs the tape on this thread, replaying through graphs on the device and from the
    /// maker given ([`Capture::graphs`]); [`tape::finish`] takes it down and says what it
    /// did.
    fn install(self, graphs: Option<(&burn::tensor::Device, tape::GraphMaker)>) {
        match self {
            Capture::Off => return,
            Capture::Check => tape::install(tape::Mode::Check),
            Capture::Replay => tape::install(tape::Mode::Replay),
        }
        if let Some((device, maker)) = graphs {
            tape::use_graphs(device, maker);
        }
    }
}

/// The end of `--help`: exit codes and the environment.
const AFTER_HELP: &str = "\
Exit codes:
  0    the script ran to its end
  1    an error outside the script (a missing file, a device, a value sslhost refused)
  2    an error in the script (file:line:col, the line and a caret), a malformed command line,
       or bad input to `export` or `eval` (no checkpoint, an unknown net, a damaged file,
       a dataset that does not fit)
  130  stopped by Ctrl-C (after writing a checkpoint at the step boundary)

Environment:
  SSLHOST_DATA               where datasets are looked for first (after --data)
  SSLHOST_SYSTEM_DATA        replaces /usr/share/datasets as the system's dataset folder
  RUST_LOG                   log filter (default: warn,sslhost=info,script=info)
  NO_COLOR                   no colours in logs (they are off anyway when stderr is not a terminal)
  RAYON_NUM_THREADS          CPU threads (default: the cores)
  SSLHOST_CPU_KERNELS        CPU kernels: im2col, no-direct or burn (default: the host's own)
  SSLHOST_GPU_BATCH_NORM     GPU kernels: burn, rows, nhwc or cudnn
  SSLHOST_HALF_ACTIVATIONS   1: a ResNet's activations in the half type on a GPU
  SSLHOST_CUDNN_ORDER        sync (default), signal, flags or stream: how cuDNN's calls are
                             ordered with cubecl's kernels (stream: on cubecl's own stream,
                             found through CUPTI: no host waits; the only ordering a device
                             graph of cuDNN's kernels is taken under)
  SSLHOST_KERNEL_CACHE       0: compiled GPU kernels are not kept on disk for the next run
  SSLHOST_CAPTURE_GRAPH      1: with --capture replay, replay the steps as a device graph
                             where the device records them (CUDA; not yet checked on a GPU).
                             A checkpoint is written before each capture: one that fails
                             loses the state its step was to update, and the run resumes there.
                             stand-in: a graph that re-runs the captured work on the captured
                             buffers, on the GPU code path without a GPU (--device cubecl-cpu)
  SSLHOST_FAULT              capture: with SSLHOST_CAPTURE_GRAPH set, every capture fails once
                             begun, on any device (to check the resume from that checkpoint)";

/// The bench's script: the recipes' step, timed.
const BENCH_SCRIPT: &str = include_str!("../../scripts/bench_step.rhai");

fn main() -> ExitCode {
    sslhost::allocator::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // Our own lines at info, the libraries' at warn: burn's CUDA compiler (pliron)
                // logs every kernel's IR after every pass at info, megabytes a step.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("warn,sslhost=info,script=info")
                }),
        )
        // Through the progress bar, which hides itself while a line is written.
        .with_writer(sslhost::train::progress::StderrWriter)
        // Colours only on a terminal (never in a log file or a pipe), and never with NO_COLOR.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_target(false)
        .init();
    sslhost::guard::install_hook();
    let cli = Cli::parse();
    let takes_input = matches!(cli.command, Command::Export { .. } | Command::Eval { .. });
    // Anything that still panics is reported as an error, never as a panic with a backtrace.
    let run = || sslhost::guard::catch(|| execute(cli));
    // The script runs on a worker of the thread pool the CPU kernels use (RAYON_NUM_THREADS
    // threads, the cores by default), so each parallel op starts on this thread at once and
    // only wakes the others, instead of handing every op to the pool and sleeping until it is
    // done (the gain is in docs/PERFORMANCE.md). A large stack, as the main thread's, for deep
    // scripts.
    let result = match rayon::ThreadPoolBuilder::new().stack_size(64 << 20).build() {
        Ok(pool) => pool.install(run),
        Err(_) => run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", render(&e));
            let code = match e {
                // What export reads is the user's input, as a script is.
                Error::Backend(_) => 1,
                _ if takes_input => 2,
                _ => e.exit_code(),
            };
            ExitCode::from(code as u8)
        }
    }
}

/// Parses `key=value` for `--set`.
fn parse_set(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

fn render(e: &Error) -> String {
    match e {
        Error::Script(s) => s.to_string(),
        other => format!("error: {other}"),
    }
}

fn execute(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            script,
            on,
            seed,
            resume,
            runs,
            data,
            set,
            force,
            print_config,
            max_memory,
            capture,
        } => {
            sslhost::budget::set_max_bytes(max_memory);
            check_data_dir(data.as_deref())?;
            let (device, kernels) = open_device(on.device, on.precision)?;
            let graphs = capture.graphs(&kernels)?;
            let kernels = kernels.with_capture(graphs.is_some());
            let graph_device = graphs.map(|_| device.clone());
            let has_overrides = !set.is_empty();
            let mut session = Session::new(device, seed)
                .with_kernels(kernels)
                .with_overrides(set)
                .with_data_root(data);
            session.print_config = print_config;
            let script = match (script, &resume) {
                (Some(script), _) => script,
                (None, Some(dir)) => dir.join("recipe.rhai"),
                (None, None) => {
                    return Err(Error::Invalid(
                        "run needs a script, or --resume RUN_DIR to run its recipe.rhai".into(),
                    ));
                }
            };
            let text = engine::read_script(&script)?;
            let record = match resume {
                Some(dir) => {
                    let run = sslhost::train::run_dir::RunDir::open(&dir)?;
                    let checkpoint = run.last_checkpoint();
                    if !checkpoint.is_file() {
                        return Err(Error::file(&checkpoint, "no checkpoint to resume from"));
                    }
                    session.resume_step = Some(sslhost::train::checkpoint::next_step(&checkpoint)?);
                    session.resume_from = Some(checkpoint);
                    session.saved_config = Some(run.read_config()?);
                    session.force = force;
                    RunRecord::resuming(run, &script, &text)
                }
                None => RunRecord::new(&script, &text, &runs),
            };
            // The run's context outlives the script: a failure's checkpoint, the curves and
            // the check of --set below read it.
            let _run = RunContext::new(session).with_record(record).enter();
            sslhost::train::current::handle_ctrl_c();
            capture.install(graph_device.as_ref().zip(graphs));
            let mut result = sslhost::guard::catch(|| engine::run_file_here(&script));
            match tape::finish() {
                Some(Ok(report)) => tracing::info!("capture {}: {report}", capture.name()),
                Some(Err(e)) if result.is_ok() => result = Err(e),
                _ => {}
            }
            let interrupted = sslhost::train::current::interrupted();
            let saved = match (&result, tape::lost_at(), interrupted) {
                // The state on the device is unreadable (Ctrl-C's checkpoint too, when the
                // capture failed as the step before it ended): the checkpoint written before
                // the capture is the one to resume from.
                (Err(_), Some(_), _) => sslhost::train::current::checkpoint_kept(
                    "the failed capture left the state unreadable",
                )
                .map(|line| {
                    format!(
                        "{line}\n(without SSLHOST_CAPTURE_GRAPH=1 the steps replay without a \
                         device graph)"
                    )
                }),
                (Err(_), None, false) => sslhost::train::current::checkpoint_after_error(),
                _ => None,
            };
            // Every way the script ended: clear the progress bar, draw the curves.
            sslhost::train::current::finish();
            if interrupted {
                // The message says where the checkpoint went; 130 is the shell's Ctrl-C code.
                if let Err(e) = result {
                    eprintln!("{}", render(&e));
                    if let Some(saved) = saved {
                        eprintln!("{saved}");
                    }
                }
                std::process::exit(130);
            }
            if let (Err(e), Some(saved)) = (&result, saved) {
                eprintln!("{}\n{saved}", render(e));
                std::process::exit(e.exit_code());
            }
            let _ = result?;
            if has_overrides && sslhost::session::resolved_config().is_none() {
                return Err(Error::Other(format!(
                    "--set was given but {} never calls config(..), so it had no effect",
                    script.display()
                )));
            }
            Ok(())
        }
        Command::Check {
            script,
            on,
            seed,
            data,
            set,
            max_memory,
            preset,
        } => {
            sslhost::budget::set_max_bytes(max_memory);
            check_data_dir(data.as_deref())?;
            let (device, kernels) = open_device(on.device, on.precision)?;
            let preset = preset.map(DeviceKind::from);
            if let Some(kind) = preset {
                let here = sslhost::device::kind(&device);
                eprintln!("check: the presets for {}, on {}", kind.name(), here.name());
            }
            let session = Session::new(device, seed)
                .with_kernels(kernels)
                .with_overrides(set)
                .with_data_root(data)
                .with_preset(preset);
            engine::check_file(&script, session)?;
            println!("{}: ok", script.display());
            Ok(())
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "sslhost", &mut std::io::stdout());
            Ok(())
        }
        Command::Sweep {
            script,
            grid,
            seeds,
            out,
            on,
            data,
            set,
        } => {
            use clap::ValueEnum;
            let name = |v: Option<clap::builder::PossibleValue>| {
                v.map(|p| p.get_name().to_string()).unwrap_or_default()
            };
            let mut run_args = vec![
                "--device".to_string(),
                name(on.device.to_possible_value()),
                "--precision".to_string(),
                name(on.precision.to_possible_value()),
            ];
            if let Some(dir) = data {
                run_args.extend(["--data".to_string(), dir.display().to_string()]);
            }
            for (k, v) in set {
                run_args.extend(["--set".to_string(), format!("{k}={v}")]);
            }
            let stem = script
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "sweep".into());
            let plan = sslhost::sweep::SweepPlan {
                recipe: script,
                axes: grid,
                seeds,
                out: out.unwrap_or_else(|| PathBuf::from("sweeps").join(stem)),
                run_args,
            };
            let done = sslhost::sweep::run(&plan)?;
            println!(
                "{} runs made, {} already finished: {}",
                done.ran,
                done.skipped,
                done.summary.display()
            );
            Ok(())
        }
        Command::Curves {
            run,
            smoothing,
            output,
        } => {
            use sslhost::train::curves::{self, CurveOptions};
            if !(0.0..1.0).contains(&smoothing) {
                return Err(Error::Invalid(format!(
                    "--smoothing {smoothing}: a weight in [0, 1) (0.6 is TensorBoard's default)"
                )));
            }
            let out = output.unwrap_or_else(|| run.join("curves.png"));
            match curves::render_run_to(&run, &out, &CurveOptions { smoothing })? {
                Some(path) => println!("{}", path.display()),
                None => {
                    return Err(Error::file(
                        run.join("metrics.jsonl"),
                        "no numeric metric to draw (or no such file)",
                    ));
                }
            }
            Ok(())
        }
        Command::Docs { out } => {
            let done = sslhost::reference::write(&out)?;
            println!(
                "{} functions on {} pages, {} definition files -> {} (start at index.md)",
                done.functions,
                done.pages,
                done.definitions,
                done.out.display()
            );
            Ok(())
        }
        Command::Export { run, net, output } => {
            let done = sslhost::train::export::export(&run, net.as_deref(), &output)?;
            let c = &done.config;
            println!(
                "exported {} ({} steps): ResNet depth {}, {} stem, widths {:?}{}, {} tensors -> {}",
                done.net,
                done.steps,
                c.depth,
                if c.cifar_stem { "CIFAR" } else { "ImageNet" },
                c.widths,
                c.blocks
                    .map(|b| format!(", blocks {b:?}"))
                    .unwrap_or_default(),
                done.tensors,
                output.display()
            );
            match done.torchvision_model {
                Some(m) => println!(
                    "loads into torchvision.models.{m}(){} with strict=True except fc",
                    if c.cifar_stem {
                        format!(
                            " after the CIFAR stem change (conv1 = Conv2d({}, {}, 3, stride={}, \
                             padding=1, bias=False), maxpool = Identity())",
                            c.in_channels, c.widths[0], c.stem_stride
                        )
                    } else {
                        String::new()
                    }
                ),
                None => println!(
                    "custom widths or blocks: build it from torchvision's ResNet and BasicBlock/\
                     Bottleneck classes (scripts/check_export.py shows how)"
                ),
            }
            Ok(())
        }
        Command::Eval {
            run,
            knn,
            linear,
            net,
            eval_data,
            data,
            limit,
            size,
            k,
            linear_epochs,
            linear_lr,
            linear_batch,
            linear_weight_decay,
            seed,
            device,
        } => {
            use sslhost::train::evaluation::{EvalRequest, evaluate};
            check_data_dir(data.as_deref())?;
            use sslhost::train::linear_eval::LinearEvalConfig;
            let both = !knn && !linear;
            let request = EvalRequest {
                source: run,
                net,
                dataset: eval_data,
                data_root: data.or_else(|| std::env::var_os("SSLHOST_DATA").map(PathBuf::from)),
                limit,
                size,
                knn_k: if knn || both { k } else { Vec::new() },
                linear: (linear || both).then_some(LinearEvalConfig {
                    epochs: linear_epochs,
                    lr: linear_lr,
                    batch_size: linear_batch,
                    weight_decay: linear_weight_decay,
                    ..LinearEvalConfig::default()
                }),
                seed,
            };
            let (device, policy) = open_device(device, PrecisionChoice::F32)?;
            kernels::install(policy);
            let (r, path) = evaluate(&request, &device)?;
            println!(
                "{}{}{}: {} ({} train / {} test images at {}x{}), {} features",
                r.weights,
                r.net
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                r.steps.map(|s| format!(", {s} steps")).unwrap_or_default(),
                r.dataset,
                r.train_images,
                r.test_images,
                r.image_size,
                r.image_size,
                r.features
            );
            println!("  {:<62} {:>7}", "protocol", "top-1");
            for s in &r.knn {
                println!(
                    "  {:<62} {:>6.2}%",
                    format!("kNN k={}, weighted, cosine, T={}", s.k, s.temperature),
                    100.0 * s.top1
                );
            }
            if let Some(l) = &r.linear {
                let p = &l.protocol;
                println!(
                    "  {:<62} {:>6.2}%  (train {:.2}%)",
                    format!(
                        "linear, {} epochs, SGD lr {} cosine, batch {}, wd {}",
                        p.epochs, p.lr, p.batch_size, p.weight_decay
                    ),
                    100.0 * l.result.top1,
                    100.0 * l.result.train_top1
                );
            }
            println!("wrote {} ({:.1} s)", path.display(), r.seconds);
            Ok(())
        }
        Command::Bench {
            on,
            method,
            depth,
            batch,
            image,
            widths,
            warmup,
            steps,
            seed,
            variants,
            capture,
        } => {
            if batch < 2 || image < 1 || warmup < 0 || steps < 1 {
                return Err(Error::Invalid(format!(
                    "bench needs --batch >= 2, --image >= 1, --warmup >= 0 and --steps >= 1 \
                     (got {batch}, {image}, {warmup}, {steps})"
                )));
            }
            let (device, kernels) = open_device(on.device, on.precision)?;
            let method = match method {
                BenchMethod::Byol => "byol",
                BenchMethod::Moco => "moco",
                BenchMethod::Simclr => "simclr",
            };
            let overrides: Vec<(String, String)> = [
                ("method", method.to_string()),
                ("depth", depth.to_string()),
                ("widths", widths),
                ("batch", batch.to_string()),
                ("image", image.to_string()),
                ("warmup", warmup.to_string()),
                ("steps", steps.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            sslhost::profiling::set_host_timing(true);
            let variants = if variants.is_empty() {
                vec![None]
            } else {
                variants.into_iter().map(Some).collect()
            };
            for variant in variants {
                sslhost::profiling::restart_device_peak(&device);
                let session = Session::new(device.clone(), seed)
                    .with_kernels(kernels)
                    .with_variant(variant)
                    .with_overrides(overrides.clone());
                let policy = session.kernels;
                let graphs = capture.graphs(&policy)?;
                let session = session.with_kernels(policy.with_capture(graphs.is_some()));
                capture.install(graphs.map(|maker| (&device, maker)));
                let result = engine::run_source(
                    "scripts/bench_step.rhai",
                    BENCH_SCRIPT,
                    std::path::Path::new("."),
                    session,
                );
                let report = tape::finish().transpose();
                let (result, report) = (result?, report?);
                let mut json = serde_json::to_value(&result)
                    .map_err(|e| Error::Other(format!("bench result: {e}")))?;
                if let Some(report) = report {
                    let how = if graphs.is_some() {
                        "graph"
                    } else {
                        capture.name()
                    };
                    json["capture"] = how.into();
                    json["capture_report"] = report.to_string().into();
                }
                println!("{}", bench_summary(&json));
                println!("{json}");
            }
            Ok(())
        }
        Command::GpuSelftest {
            device,
            batch,
            dtypes,
            capture_steps,
            capture_only,
        } => {
            let dtypes = if capture_only { &[][..] } else { &dtypes[..] };
            gpu_selftest(device, batch, dtypes, capture_steps)
        }
    }
}

/// `--data DIR` must name a folder: a typo would otherwise fall back to another copy.
fn check_data_dir(data: Option<&std::path::Path>) -> Result<()> {
    match data {
        Some(dir) if !dir.is_dir() => Err(Error::file(dir, "--data: no such directory")),
        _ => Ok(()),
    }
}

/// `sslhost gpu-selftest`: a line a layer (for each of `dtypes`), then the capture check
/// (with `capture_steps`), a JSON line each, and an error when a check fails.
fn gpu_selftest(
    device: DeviceChoice,
    batch: usize,
    dtypes: &[SelftestType],
    capture_steps: usize,
) -> Result<()> {
    if batch < 2 {
        return Err(Error::Invalid(format!(
            "gpu-selftest needs --batch >= 2 (batch norm's variance), got {batch}"
        )));
    }
    let (device, policy) = open_device(device, PrecisionChoice::F32)?;
    let kernels = sslhost::kernels::gpu_kernels::kernels_name(&device);
    println!("GPU kernels: {kernels}");
    let mut failed = Vec::new();
    if !dtypes.is_empty() {
        sslhost::kernels::install(policy);
        failed.extend(selftest_layers(&device, &kernels, batch, dtypes));
    }
    if capture_steps > 0 {
        let precision = sslhost::kernels::precision(PrecisionChoice::Auto, &device);
        sslhost::kernels::install(policy.with_precision(precision));
        failed.extend(selftest_capture(&device, batch, capture_steps)?);
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Other(format!("gpu-selftest: {}", failed.join("; "))))
    }
}

/// The capture check of `sslhost gpu-selftest`: its line and JSON line, and what failed.
fn selftest_capture(
    device: &burn::tensor::Device,
    batch: usize,
    steps: usize,
) -> Result<Option<String>> {
    use sslhost::train::capture;
    // Losses after a few steps of the same kernels replayed: equal but for the order in which
    // atomics land.
    const TOLERANCE: f32 = 1e-4;
    let config = capture::ProbeConfig {
        checked: steps,
        ..capture::ProbeConfig::resnet18(batch)
    };
    let policy = sslhost::kernels::current();
    let precision = policy.precision.name();
    let variant = format!("{}:{}", policy.gpu.name(), policy.activations_name());
    let report = capture::probe(&config, device)?;
    let difference = report.max_relative_difference();
    let matches = report.matches(TOLERANCE);
    println!(
        "capture: ResNet-18 CIFAR, EMA target, LARS, batch {batch}, products in {precision}, \
         {variant}: {}; eager {:.2} \
         ms a step, {} {:.2} ms; losses and running statistics over {steps} steps {} (largest \
         relative differences {difference:.1e}, {:.1e})",
        match &report.refused {
            None if report.bound > 0 => format!(
                "recorded in {:.1} s, with {} launches binding cuDNN's buffers",
                report.capture_seconds, report.bound
            ),
            None => format!("recorded in {:.1} s", report.capture_seconds),
            Some(why) => format!("not recorded ({why}), eager throughout"),
        },
        report.eager_ms,
        if report.captured {
            "replayed"
        } else {
            "eager again"
        },
        report.replay_ms,
        if matches { "match" } else { "DIFFER" },
        report.statistics_difference,
    );
    println!(
        "{}",
        serde_json::json!({
            "selftest": "capture", "batch": batch, "precision": precision, "variant": variant,
            "captured": report.captured, "refused": report.refused,
            "capture_seconds": report.capture_seconds, "eager_ms": report.eager_ms,
            "replay_ms": report.replay_ms, "bound_launches": report.bound,
            "eager_losses": report.eager,
            "replayed_losses": report.replayed, "offset": report.offset,
            "max_relative_difference": difference,
            "statistics_difference": report.statistics_difference, "passed": matches,
        })
    );
    Ok((!matches).then(|| {
        format!(
            "the replayed losses or running statistics differ from the eager ones by up to \
             {:.1e}",
            difference.max(report.statistics_difference)
        )
    }))
}

/// The layer checks of `sslhost gpu-selftest`: a line a layer and a JSON line; what failed.
fn selftest_layers(
    device: &burn::tensor::Device,
    kernels: &str,
    batch: usize,
    dtypes: &[SelftestType],
) -> Option<String> {
    use burn::tensor::FloatDType;
    use sslhost::kernels::gpu_kernels::selftest;
    let mut checks = Vec::new();
    let mut rows = Vec::new();
    let dtypes = dtypes.iter().map(|t| match t {
        SelftestType::Bf16 => FloatDType::BF16,
        SelftestType::F32 => FloatDType::F32,
    });
    // Each line as soon as its layer is checked, so a time limit keeps what ran.
    for (dtype, layer) in dtypes.flat_map(|d| {
        selftest::resnet18_cifar_layers(batch)
            .into_iter()
            .map(move |l| (d, l))
    }) {
        let distances = selftest::compare(device, dtype, layer);
        checks.push(selftest::Check {
            dtype,
            layer,
            distances,
        });
        let c = checks.last().expect("pushed above");
        let l = c.layer;
        let (what, worst) = c.worst();
        println!(
            "{:>4} {:>3}->{:<3} {:>2}x{:<2} k{} s{} {:<8} worst {:<9} {:.2e} (tolerance {:.0e}) {}",
            format!("{:?}", c.dtype).to_lowercase(),
            l.c_in,
            l.c_out,
            l.side,
            l.side,
            l.kernel,
            l.stride,
            format!("{:?}", l.tail),
            what,
            worst,
            selftest::tolerance(c.dtype),
            if c.passed() { "ok" } else { "FAILED" }
        );
        rows.push(serde_json::json!({
            "dtype": format!("{:?}", c.dtype).to_lowercase(),
            "c_in": l.c_in, "c_out": l.c_out, "side": l.side, "kernel": l.kernel,
            "stride": l.stride, "tail": format!("{:?}", l.tail),
            "distances": c.distances.iter().map(|(n, d)| (n.to_string(), serde_json::json!(*d)))
                .collect::<serde_json::Map<String, serde_json::Value>>(),
            "passed": c.passed(),
        }));
    }
    let ordering = sslhost::kernels::gpu_kernels::ordering_timed_out();
    let passed = checks.iter().all(selftest::Check::passed) && ordering != Some(true);
    println!(
        "{}",
        serde_json::json!({
            "selftest": "gpu_kernels", "kernels": kernels, "batch": batch,
            "cudnn_order": sslhost::kernels::gpu_kernels::cudnn_ordering(),
            "ordering_timed_out": ordering, "passed": passed, "checks": rows,
        })
    );
    (!passed).then(|| {
        format!(
            "{} of {} layer checks failed{}",
            checks.iter().filter(|c| !c.passed()).count(),
            checks.len(),
            if ordering == Some(true) {
                "; a wait for cuDNN's stream timed out"
            } else {
                ""
            }
        )
    })
}

/// The device for `--device`, and the kernel policy: the precision `--precision` means
/// there, with the environment's kernel choices (an unknown value is an error); a log line
/// says which they are and why.
fn open_device(
    choice: DeviceChoice,
    precision: PrecisionChoice,
) -> Result<(burn::tensor::Device, KernelPolicy)> {
    let (device, why) = device::select(choice)?;
    let kernels = KernelPolicy::from_env()?.with_precision(kernels::precision(precision, &device));
    tracing::info!(
        "device: {why}; products in {}{}",
        kernels.precision.name(),
        match kernels.activation_dtype() {
            Some(_) => ", activations too",
            None => "",
        }
    );
    if device::kind(&device) == device::DeviceKind::Cuda {
        tracing::info!(
            "the first step compiles and autotunes the GPU kernels (about 160 s for ResNet-18 on \
             an H200; its autotune results and compiled kernels are cached on disk for later \
             runs)"
        );
    }
    Ok((device, kernels))
}

/// The bench's one-line summary: `byol resnet18 cpu f32 batch 64 32x32: median .. ms, ..`.
fn bench_summary(r: &serde_json::Value) -> String {
    let num = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let text = |k: &str| r[k].as_str().unwrap_or("?").to_string();
    let memory = match r["peak_mem_mb"].as_f64() {
        Some(mb) => format!("{mb:.0} MiB"),
        None => "n/a".into(),
    };
    let capture = match r["capture_report"].as_str() {
        Some(report) => format!("; capture {}: {report}", text("capture")),
        None => String::new(),
    };
    format!(
        "{} {} {} {} (activations {}, batch norm {}) batch {} {}x{}: median {:.1} ms, mean {:.1} ms, {:.1} img/s, first step \
         {:.1} ms, peak memory {}, Rhai {:.3}% ({:.3} ms/step), waiting for the device {:.0}%{}",
        text("method"),
        text("model"),
        text("device"),
        text("precision"),
        text("activations"),
        text("batch_norm"),
        r["batch"],
        r["image"],
        r["image"],
        num("median_ms"),
        num("mean_ms"),
        num("img_per_s"),
        num("first_step_ms"),
        memory,
        100.0 * num("rhai_share"),
        num("rhai_ms_per_step"),
        100.0 * num("device_wait_share"),
        capture,
    )
}
