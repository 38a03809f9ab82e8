//! `cactus verify`: VNN-LIB properties of ONNX networks, one (`--onnx --vnnlib`) or a
//! VNN-COMP benchmark's `instances.csv`, answered sat (with a checked counterexample), unsat
//! or unknown/timeout in VNN-COMP's result format.

use crate::args::{check_exists, parse};
use anyhow::{bail, Context, Result};
use cactus::io::write_atomic;
use cactus::nn::Model;
use cactus::onnx;
use cactus::verify::property::{check_property, Answer, PropertyConfig};
use cactus::verify::Certifier;
use cactus::vnnlib::{exact_decimal, Property};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The network (ONNX, or .onnx.gz).
    #[arg(
        long,
        value_name = "NET.onnx",
        requires = "vnnlib",
        conflicts_with = "instances"
    )]
    onnx: Option<PathBuf>,
    /// The property (VNN-LIB, or .vnnlib.gz).
    #[arg(long, value_name = "PROP.vnnlib", requires = "onnx")]
    vnnlib: Option<PathBuf>,
    /// Time limit in seconds (with --onnx).
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Write the answer in VNN-COMP's result-file format here (with --onnx).
    #[arg(long, value_name = "FILE")]
    result: Option<PathBuf>,
    /// A VNN-COMP benchmark's instances.csv (`onnx,vnnlib,timeout` rows, paths relative to
    /// its folder): every instance is verified with its own time limit.
    #[arg(long, value_name = "CSV", required_unless_present = "onnx")]
    instances: Option<PathBuf>,
    /// With --instances: a folder for results.csv (onnx,vnnlib,result,time_s) and each sat
    /// instance's counterexamples/ROW.txt [default: print only].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// With --instances: multiply every instance's time limit by this.
    #[arg(long, default_value_t = 1.0)]
    timeout_scale: f64,
    /// Certifiers tried in order to prove a property (ibp, crown-ibp, crown, alpha-crown, and
    /// bab with --unsound).
    #[arg(long, value_delimiter = ',', default_value = "ibp,crown,alpha-crown", value_parser = parse::<Certifier>)]
    certifier: Vec<Certifier>,
    /// Bounds as computed in f32, not lowered by their rounding error: needed for bab
    /// (β-CROWN branch and bound), whose bounds do not account for rounding yet; an `unsat`
    /// is then as trustworthy as other verifiers' float bounds, not more.
    #[arg(long)]
    unsound: bool,
    /// Seed of the attack's random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// The VNN-COMP result file: the answer, then for `sat` the assignment of every input and
/// output, `((X_0 v) (X_1 v) ... (Y_0 v) ...)`, values printed exactly.
pub fn result_text(answer: &Answer) -> String {
    let mut text = format!("{}\n", answer.name());
    if let Answer::Sat { x, y } = answer {
        let vars: Vec<String> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("(X_{i} {})", exact_decimal(v)))
            .chain(
                y.iter()
                    .enumerate()
                    .map(|(j, &v)| format!("(Y_{j} {})", exact_decimal(v))),
            )
            .collect();
        text.push_str(&format!("({})\n", vars.join("\n ")));
    }
    text
}

fn config(args: &VerifyArgs, timeout: f64) -> Result<PropertyConfig> {
    if !(timeout.is_finite() && timeout > 0.0) {
        bail!("the time limit must be a positive number of seconds, got {timeout}");
    }
    if !args.unsound {
        cactus::verify::check_sound(&args.certifier)?;
    }
    if args.certifier.is_empty() {
        bail!("--certifier needs at least one certifier");
    }
    let mut cfg = PropertyConfig {
        timeout: Duration::from_secs_f64(timeout),
        certifiers: args.certifier.clone(),
        seed: args.seed,
        ..Default::default()
    };
    cfg.verify.sound = !args.unsound;
    Ok(cfg)
}

/// `path`, or `path.gz` when only that exists (VNN-COMP repositories store their files
/// gzipped under the names instances.csv gives without `.gz`).
fn existing(path: &Path) -> PathBuf {
    let mut gz = path.as_os_str().to_owned();
    gz.push(".gz");
    let gz = PathBuf::from(gz);
    if !path.exists() && gz.exists() {
        gz
    } else {
        path.to_path_buf()
    }
}

fn load_network(path: &Path) -> Result<Model> {
    let path = &existing(path);
    check_exists(path)?;
    let proto = onnx::read_model(path)?;
    let imported = onnx::import_model(&proto).with_context(|| path.display().to_string())?;
    Ok(imported.model)
}

fn load_property(path: &Path) -> Result<Property> {
    let path = &existing(path);
    check_exists(path)?;
    Ok(Property::read(path)?)
}

pub fn run(args: VerifyArgs) -> Result<()> {
    match (&args.onnx, &args.vnnlib, &args.instances) {
        (Some(net), Some(prop), None) => verify_one(&args, net, prop),
        (None, None, Some(csv)) => verify_instances(&args, csv),
        _ => bail!("pass --onnx NET --vnnlib PROP, or --instances CSV"),
    }
}

fn verify_one(args: &VerifyArgs, net: &Path, prop: &Path) -> Result<()> {
    let cfg = config(args, args.timeout)?;
    let model = load_network(net)?;
    let property = load_property(prop)?;
    let start = Instant::now();
    let answer = check_property(&model, &property, &cfg)
        .with_context(|| format!("{} on {}", prop.display(), net.display()))?;
    let text = result_text(&answer);
    if let Some(path) = &args.result {
        write_atomic(path, text.as_bytes())?;
    }
    println!("{}", answer.name());
    eprintln!(
        "{} in {:.2} s ({} on {})",
        answer.name(),
        start.elapsed().as_secs_f64(),
        prop.display(),
        net.display()
    );
    Ok(())
}

/// One row of instances.csv.
struct Instance {
    onnx: String,
    vnnlib: String,
    timeout: f64,
}

fn read_instances(csv: &Path) -> Result<Vec<Instance>> {
    let text = std::fs::read_to_string(csv).with_context(|| csv.display().to_string())?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [onnx, vnnlib, timeout] = fields[..] else {
            bail!(
                "{}: line {}: expected onnx,vnnlib,timeout, got {} fields",
                csv.display(),
                n + 1,
                fields.len()
            );
        };
        let timeout: f64 = match timeout.parse() {
            Ok(t) => t,
            // A header row.
            Err(_) if n == 0 => continue,
            Err(_) => bail!(
                "{}: line {}: the time limit '{timeout}' is not a number",
                csv.display(),
                n + 1
            ),
        };
        rows.push(Instance {
            onnx: onnx.into(),
            vnnlib: vnnlib.into(),
            timeout,
        });
    }
    if rows.is_empty() {
        bail!("{}: no instances", csv.display());
    }
    Ok(rows)
}

fn verify_instances(args: &VerifyArgs, csv: &Path) -> Result<()> {
    check_exists(csv)?;
    if !(args.timeout_scale.is_finite() && args.timeout_scale > 0.0) {
        bail!("--timeout-scale must be positive");
    }
    let rows = read_instances(csv)?;
    let base = csv.parent().unwrap_or(Path::new("."));
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out.join("counterexamples"))
            .with_context(|| out.display().to_string())?;
    }
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(rows.len() as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} instances, {elapsed} {msg}")
                .expect("valid template"),
        )
    };
    let mut networks: HashMap<String, std::result::Result<Model, String>> = HashMap::new();
    let mut results = String::from("onnx,vnnlib,result,time_s\n");
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    let mut errors = 0;
    for (row, inst) in rows.iter().enumerate() {
        let start = Instant::now();
        let network = networks
            .entry(inst.onnx.clone())
            .or_insert_with(|| load_network(&base.join(&inst.onnx)).map_err(|e| format!("{e:#}")));
        let outcome: Result<Answer> = (|| {
            let model = network.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            let cfg = config(args, inst.timeout * args.timeout_scale)?;
            let property = load_property(&base.join(&inst.vnnlib))?;
            Ok(check_property(model, &property, &cfg)?)
        })();
        let seconds = start.elapsed().as_secs_f64();
        let name = match &outcome {
            Ok(answer) => {
                if let (Answer::Sat { .. }, Some(out)) = (answer, &args.out) {
                    let path = out.join("counterexamples").join(format!("{row}.txt"));
                    write_atomic(&path, result_text(answer).as_bytes())?;
                }
                answer.name()
            }
            Err(e) => {
                errors += 1;
                bar.suspend(|| eprintln!("error: {} on {}: {e:#}", inst.vnnlib, inst.onnx));
                "error"
            }
        };
        *counts.entry(name).or_default() += 1;
        results.push_str(&format!(
            "{},{},{name},{seconds:.3}\n",
            inst.onnx, inst.vnnlib
        ));
        bar.set_message(format!("last: {name}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(out) = &args.out {
        write_atomic(&out.join("results.csv"), results.as_bytes())?;
    } else {
        print!("{results}");
    }
    let summary: Vec<String> = ["sat", "unsat", "unknown", "timeout", "error"]
        .iter()
        .map(|k| format!("{k} {}", counts.get(k).copied().unwrap_or(0)))
        .collect();
    println!("{} instances: {}", rows.len(), summary.join(", "));
    if errors > 0 {
        bail!("{errors} instance(s) could not be verified (see the errors above)");
    }
    Ok(())
}
