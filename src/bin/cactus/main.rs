//! The `cactus` command line: parses the arguments, runs the subcommand and prints its error.
//! An error exits with 1; clap's own usage errors exit with 2.

mod args;
mod compress;
mod eval;
mod export;
mod init;
mod inspect;
mod merge;
mod output;
mod train;
mod verify;

use anyhow::Result;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cactus",
    version,
    about = "Certified training of networks that stay certified after compression"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Memory limit, such as 4G or 512M: a data set, model or probe whose size, estimated
    /// from the shapes a file or an option gives, exceeds it is refused before it is allocated
    /// [default: 3/4 of the machine's memory].
    #[arg(long, global = true, value_name = "SIZE", value_parser = args::parse_memory)]
    max_memory: Option<u64>,
}

// The descriptions stay together here, as `cactus --help` lists them; each subcommand's options
// live in its module, beside the code that reads them.
#[derive(Subcommand)]
enum Command {
    /// Train a network (standard, IBP, SABR or CACTUS), save it after every epoch, then
    /// evaluate it under compression.
    ///
    /// With no options: CACTUS (pruning) on `small`, the embedded mnist-mini digits, ε = 0.1,
    /// then the evaluation grid.
    Train(train::TrainArgs),
    /// Clean, PGD and certified accuracy of a checkpoint on a test set, for each pruning and
    /// number format asked for and each certifier of --certifier; writes report.json, .csv,
    /// .md and report.svg.
    Eval(eval::EvalArgs),
    /// Combine the reports of `cactus eval --shard K/N` runs (every K once) into one report.
    Merge(merge::MergeArgs),
    /// Write a pruned and/or quantized copy of a checkpoint (int weights with scale and zero
    /// point, fp16 weights as F16) that `cactus eval` loads like any other.
    Compress(compress::CompressArgs),
    /// Build and initialise a model, and write it as a checkpoint PyTorch can load.
    Init(init::InitArgs),
    /// Describe a checkpoint: architecture, layers, parameter counts, metadata.
    Inspect(inspect::InspectArgs),
    /// Write a checkpoint as an ONNX network for other verifiers and runtimes, and optionally
    /// test points' robustness properties as VNN-LIB files with a VNN-COMP instances.csv.
    Export(export::ExportArgs),
    /// Decide VNN-LIB properties of ONNX networks (one, or a VNN-COMP benchmark's
    /// instances.csv): sat with a checked counterexample, unsat, or unknown/timeout.
    Verify(verify::VerifyArgs),
}

fn main() {
    cactus::runtime::cpu::allocator::keep_freed_memory();
    // The matches are kept: `train --resume` asks which options were given on the command line.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(e) = run(cli, &matches) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli, matches: &ArgMatches) -> Result<()> {
    if let Some(bytes) = cli.max_memory {
        cactus::runtime::memory::set_limit(bytes);
    }
    match cli.command {
        Command::Train(args) => {
            let given = matches
                .subcommand_matches("train")
                .expect("train subcommand");
            train::run(args, given)
        }
        Command::Eval(args) => eval::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Compress(args) => compress::run(args),
        Command::Init(args) => init::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Export(args) => export::run(args),
        Command::Verify(args) => verify::run(args),
    }
}
