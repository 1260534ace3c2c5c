//! Example 07: a sweep through `Vm::dispatch`, with results files coming back.
//!
//! Twelve jobs evaluate an amplifier for twelve load resistances. Each job runs in its own
//! task folder, which holds a copy of the netlist (`*.cir`, mirrored from the current
//! folder); it writes `result.txt` there, and that file comes back to
//! `results/<job>/result.txt` on this machine, whether or not the hosts share a file
//! system. A collector prints each result as it arrives, in job order, with a progress
//! count, and the best load at the end.
//!
//! Run with `cargo run --example 07-dispatch` from a folder inside mirrored storage that
//! holds a `*.cir` file (`cargo xtask demo` makes one); `results/` is made there.

use std::ops::ControlFlow;

use parvm::vm::{Job, JobOutcome, Runtime, TaskContext, Tasks};

/// One evaluation: the amplifier's gain with load resistance `load` (ohm).
///
/// A stand-in for a simulator run: it reads the netlist mirrored into its folder, computes
/// a gain, and writes a result file next to it, as a simulator would write its output.
fn evaluate(ctx: &TaskContext, load: f64) -> Result<f64, String> {
    let dir = ctx.dir().ok_or("the task has no folder")?;
    let netlist = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "cir"))
        .ok_or_else(|| format!("no netlist was mirrored into {}", dir.display()))?;
    let text = std::fs::read_to_string(&netlist)
        .map_err(|e| format!("cannot read {}: {e}", netlist.display()))?;
    // A gm of 2 mS into the load in parallel with a 1 kOhm output resistance.
    let output = 1.0 / (1.0 / load + 1.0 / 1_000.0);
    let gain = 2e-3 * output;
    let report = format!(
        "netlist {} ({} lines)\nload {load} ohm\ngain {gain:.4}\n",
        netlist.file_name().unwrap_or_default().to_string_lossy(),
        text.lines().count()
    );
    std::fs::write(dir.join("result.txt"), report)
        .map_err(|e| format!("cannot write the result file in {}: {e}", dir.display()))?;
    Ok(gain)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = Runtime::start(Tasks::new().register("evaluate", evaluate))?;
    let vm = match runtime.vm().mirror("*.cir", ".").build() {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!(
                "cannot mirror the netlist: {e}\n(run this example from a folder inside PARALLEL_MIRRORED_STORAGE that holds a *.cir file)"
            );
            std::process::exit(2);
        }
    };
    let loads: Vec<f64> = (1..=12).map(|i| 250.0 * f64::from(i)).collect();
    let total = loads.len();
    println!(
        "Dispatching {total} evaluations over {} slots; result files come back to results/.",
        vm.slots()
    );

    // Jobs are made as they are needed: a generator of a million would cost no more memory.
    let jobs = loads
        .iter()
        .map(|load| Job::task("evaluate", load).returning("result.txt"));
    let mut best: Option<(f64, f64)> = None;
    let mut done = 0;
    vm.dispatch(jobs)
        .results("results")
        .retries(1)
        .for_each(|result| {
            done += 1;
            let load = loads[result.index];
            match &result.outcome {
                JobOutcome::Value(value) => match value.decode::<f64>() {
                    Ok(gain) => {
                        // Bytes copied into the job's folder: a worker's first job copies
                        // the netlist; the next ones get the folder of the job before,
                        // renewed (what it changed copied again, what it wrote removed).
                        println!(
                            "[{done:2}/{total}] load {load:6.0} ohm: gain {gain:.3} (on {}, {} B copied in, results/{}/result.txt)",
                            result
                                .host
                                .as_ref()
                                .map_or_else(|| "?".to_owned(), ToString::to_string),
                            result.mirrored,
                            result.index
                        );
                        if best.is_none_or(|(_, g)| gain > g) {
                            best = Some((load, gain));
                        }
                    }
                    Err(e) => println!("[{done:2}/{total}] load {load:6.0} ohm: bad value: {e}"),
                },
                other => println!("[{done:2}/{total}] load {load:6.0} ohm: {other}"),
            }
            ControlFlow::Continue(())
        })?;
    if let Some((load, gain)) = best {
        println!("Best: load {load:.0} ohm, gain {gain:.3}.");
    }
    let first = std::fs::read_to_string("results/0/result.txt")?;
    println!("results/0/result.txt:\n{first}");
    drop(vm);
    runtime.finalize()?;
    Ok(())
}
